"""The driver of the pixel-removal evaluation: :func:`evaluate` runs the protocol of
:mod:`refbbp.evaluate` (SPEC section 5) on a set of images.

Steps: score the images (:mod:`.scoring`) for their classes ``k``; compute every
method's saliency maps (:mod:`.methods`, :mod:`.registry`), a group of images at a
time; pair each image with its noise source (:func:`~.removal.derangement`); run the
four removal scans of every image and method (:data:`~.results.SCANS`) through
:func:`~.removal.first_flips`; collect the metrics in an :class:`~.results.Evaluation`.
"""

from __future__ import annotations

import numpy as np

from .._progress import progress as _progress_bar
from .._checks import check_count, check_labels, check_real
from .methods import DEFAULT_METHODS, saliency_maps
from .registry import resolve
from .removal import derangement, first_flips, removal_order
from .results import SCANS, Evaluation
from .scoring import OnnxScorer, scorer_for

__all__ = ["evaluate", "finish_evaluation", "group_maps", "random_draws",
           "removal_metrics"]

# the scans of SCANS, in its order: name, whether the noise source's map orders the
# removal, direction
_SCAN_SPECS = (("minus", False, "-"), ("plus", False, "+"),
               ("minus_xi", True, "-"), ("plus_xi", True, "+"))
# what first_flips reports per scan, and its dtype
_FIELDS = (("e", np.float64), ("removed", np.int64), ("flipped", bool), ("scored", np.int64))


def evaluate(model, x, methods=DEFAULT_METHODS, *, labels=None, net=None, scorer=None,
             baseline=0.0, seed=0, chunk=32, group=32, max_batch=4096, keep_maps=False,
             progress=None):
    """Evaluate saliency methods by pixel removal on a set of images (SPEC section 5).

    Parameters
    ----------
    model : str, path, onnx.ModelProto or Network
        The model. A path or ModelProto is loaded with :func:`refbbp.load` (unless
        ``net`` is given) and scored by onnxruntime (:class:`OnnxScorer`); a Network is
        scored by its own float64 forward pass unless ``scorer`` is given.
    x : array_like, shape (n, *input_shape)
        The images, n >= 2.
    methods : sequence of str or callable
        See :func:`saliency_maps` (default :data:`DEFAULT_METHODS`).
    labels : array_like of int, shape (n,), optional
        True labels, only reported: class indices in ``[0, n_outputs)`` (checked by
        :func:`refbbp._checks.check_labels`, which names the first bad one).
    net : Network, optional
        The loaded model, if already at hand.
    scorer : callable, optional
        ``scorer(batch) -> logits`` used instead of onnxruntime.
    baseline : float or ndarray
        Value of removed pixels (default 0).
    seed : int
        Seed of the derangement (noise maps) and of the ``"random"`` method.
    chunk : int
        Prefixes scored per removal order and round; results do not depend on it.
    group : int
        Images whose removal scans run together (bounds memory; shows progress).
    max_batch : int
        Largest batch of perturbed images built and scored at once.
    keep_maps : bool
        Keep the saliency maps in the result.
    progress : bool, optional
        Show progress bars (default: on a terminal).

    Returns
    -------
    Evaluation
    """
    chunk, group = check_count(chunk, "chunk"), check_count(group, "group")
    max_batch = check_count(max_batch, "max_batch")
    baseline = check_real(baseline, "baseline")
    net, score, model_name = scorer_for(model, net, scorer, max_batch)
    xb, batched = net.as_batch(x)
    if not batched:
        raise ValueError(f"evaluate needs a batch of images (n, {net.input_shape}), got one "
                         f"input of shape {np.shape(x)}")
    x = xb.reshape((-1,) + tuple(net.input_shape))
    n = len(x)
    perm = derangement(n, seed)
    if labels is not None:
        labels = check_labels(labels, n, net.n_outputs)
    methods = list(methods)
    if not methods:
        raise ValueError("no methods to evaluate")
    names = [name for name, _, _ in resolve(methods)]
    predicted = np.argmax(score(x), axis=1)

    maps = group_maps(net, x, methods, predicted, group, np.random.default_rng(seed),
                      progress)
    perm_maps = {m: v[perm] for m, v in maps.items()}
    metrics = {m: {f"{w}_{s}": np.zeros(n, dt) for s in SCANS for w, dt in _FIELDS}
               for m in names}
    groups = range(0, n, group)
    for a in _progress_bar(groups, total=len(groups), desc="pixel removal",
                           enabled=progress):
        b = min(a + group, n)
        part = removal_metrics(score, x[a:b], predicted[a:b], names,
                               {m: v[a:b] for m, v in maps.items()},
                               {m: v[a:b] for m, v in perm_maps.items()},
                               baseline=baseline, chunk=chunk, max_batch=max_batch)
        for m in names:
            for k, v in part[m].items():
                metrics[m][k][a:b] = v
    return finish_evaluation(names, metrics, predicted, labels, perm, model_name=model_name,
                             baseline=baseline, seed=seed, chunk=chunk,
                             custom_scorer=not isinstance(score, OnnxScorer),
                             maps=maps if keep_maps else None)


def group_maps(net, x, methods, predicted, group, rng, progress=None):
    """Saliency maps of every method for images ``x``, ``group`` images at a time.

    The ``"random"`` maps are drawn from the one generator ``rng`` group after group, so
    they do not depend on ``group``; a caller that starts at image ``a`` of a larger set
    advances ``rng`` by what the images before it drew (:func:`random_draws`).

    Returns
    -------
    dict of str to ndarray, shape (n, *map)
    """
    names = [name for name, _, _ in resolve(methods)]
    groups = range(0, len(x), group)
    maps = {m: [] for m in names}
    for a in _progress_bar(groups, total=len(groups), desc="saliency maps",
                           enabled=progress):
        part = saliency_maps(net, x[a:a + group], methods, predicted[a:a + group],
                             batch_size=group, rng=rng)
        for m in names:
            maps[m].append(part[m])
    return {m: np.concatenate(v) for m, v in maps.items()}


def random_draws(net, methods):
    """Values :func:`group_maps` draws from its generator per image: one per map pixel
    for each ``"random"`` method. With groups starting at multiples of ``group``, the
    generator of a part starting at image ``a`` is ``default_rng(seed)`` advanced by
    ``a * random_draws(...)`` (``bit_generator.advance``)."""
    from ..explain.saliency import map_shape

    names = [name for name, _, _ in resolve(methods)]
    return names.count("random") * int(np.prod(map_shape(net.input_shape)))


def removal_metrics(score, x, predicted, names, maps, partner_maps, *, baseline=0.0,
                    chunk=32, max_batch=4096):
    """The four removal scans (:data:`~.results.SCANS`) of images ``x`` for every method.

    Parameters
    ----------
    score : callable
    x : ndarray, shape (n, *input_shape)
    predicted : ndarray of int, shape (n,)
    names : list of str
    maps, partner_maps : dict of str to ndarray, shape (n, *map)
        Each image's own maps and its noise source's (the ``_xi`` scans).

    Returns
    -------
    dict of str to dict of str to ndarray, shape (n,)
        ``metrics[method]["e_minus"]``, ... (``e``, ``removed``, ``flipped``, ``scored``
        of every scan).
    """
    n = len(x)
    orders, scan_image, keys = [], [], []
    for m in names:
        for i in range(n):
            for s, noise, direction in _SCAN_SPECS:
                orders.append(removal_order((partner_maps if noise else maps)[m][i],
                                            direction))
                scan_image.append(i)
                keys.append((m, s, i))
    metrics = {m: {f"{w}_{s}": np.zeros(n, dt) for s in SCANS for w, dt in _FIELDS}
               for m in names}
    if not keys:
        return metrics
    res = first_flips(score, x, predicted, np.stack(orders), np.asarray(scan_image),
                      baseline=baseline, chunk=chunk, max_batch=max_batch)
    for j, (m, s, i) in enumerate(keys):
        for w, _ in _FIELDS:
            metrics[m][f"{w}_{s}"][i] = res[w][j]
    return metrics


def finish_evaluation(names, metrics, predicted, labels, perm, *, model_name, baseline, seed,
                      chunk, custom_scorer, maps=None):
    """The :class:`~.results.Evaluation` of the scans' ``metrics`` (adds the derived
    ``e_delta``, ``de_*`` metrics and the configuration)."""
    for d in metrics.values():
        d["e_delta"] = d["e_minus"] - d["e_plus"]
        d["e_delta_xi"] = d["e_minus_xi"] - d["e_plus_xi"]
        for k in ("minus", "plus", "delta"):
            d[f"de_{k}"] = d[f"e_{k}"] - d[f"e_{k}_xi"]
    config = {"model": model_name, "n_images": len(predicted),
              "baseline": _baseline_repr(baseline), "seed": seed, "chunk": chunk,
              "scorer": "custom" if custom_scorer else "onnxruntime",
              "forward_passes": int(sum(metrics[m][f"scored_{s}"].sum()
                                        for m in names for s in SCANS)),
              "tie_break": "pixel index, ascending (stable sort)",
              "never_flipped": "e with every pixel removed; flipped_* = False"}
    return Evaluation(methods=names, metrics=metrics, predicted=predicted, labels=labels,
                      noise_source=perm, config=config, maps=maps)


def _baseline_repr(b):
    b = np.asarray(b)
    return float(b) if b.ndim == 0 else f"array of shape {b.shape}"
