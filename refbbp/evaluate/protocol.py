"""The driver of the pixel-removal evaluation: :func:`evaluate` runs the protocol of
:mod:`refbbp.evaluate` (SPEC section 5) on a set of images.

Steps: score the images (:mod:`.scoring`) for their classes ``k``; compute every
method's saliency maps (:mod:`.methods`, :mod:`.registry`), a group of images at a
time; pair each image with its noise sources (:func:`~.removal.noise_sources`); run the
four removal scans of every image and method (:data:`~.results.SCANS`; a noise scan once
per pool member) through :func:`~.removal.first_flips`, with the options of
:mod:`.options` (baseline, ties); apply the never-flip rule, average over the noise pool
and collect the metrics in an :class:`~.results.Evaluation`.
"""

from __future__ import annotations

import numpy as np

from .._progress import progress as _progress_bar
from .._checks import check_count, check_labels
from ..explain.saliency import map_shape
from .methods import DEFAULT_METHODS, saliency_maps
from .registry import resolve
from .options import (baseline_images, check_never_flip, check_ties, describe_never_flip,
                      describe_ties, parse_baseline, per_image_baseline, tie_keys)
from .removal import first_flips, noise_sources, removal_order
from .results import SCANS, Evaluation
from .scoring import OnnxScorer, scorer_for

__all__ = ["evaluate", "finish_evaluation", "group_maps", "n_pixels", "random_draws",
           "removal_metrics"]

# the scans of SCANS, in its order: name, whether the noise source's map orders the
# removal, direction
_SCAN_SPECS = (("minus", False, "-"), ("plus", False, "+"),
               ("minus_xi", True, "-"), ("plus_xi", True, "+"))
# what first_flips reports per scan, and its dtype
_FIELDS = (("e", np.float64), ("removed", np.int64), ("flipped", bool), ("scored", np.int64))


def evaluate(model, x, methods=DEFAULT_METHODS, *, labels=None, net=None, scorer=None,
             baseline=0.0, ties="index", never_flip="count-as-1", noise_pool=1, seed=0,
             chunk=32, group=32, max_batch=4096, keep_maps=False, progress=None):
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
    baseline : float, ndarray or str
        Value of removed pixels: a number (default 0), an array broadcastable to the
        input shape, ``"mean"`` (per-channel mean over ``x``) or ``"blur"`` /
        ``"blur:SIGMA"`` (a Gaussian-blurred copy of each image); see
        :mod:`~refbbp.evaluate.options`.
    ties : {"index", "random"}
        Order of pixels with equal saliency: ascending pixel index (default), or a
        seeded random permutation per image.
    never_flip : {"count-as-1", "exclude"}
        An image whose class never changes: ``e = 1`` for that scan (default), or the
        image left out of that method's statistics (NaN metrics; counted in the
        summary as ``excluded``).
    noise_pool : int
        ``k``: each image's noise baseline is the maps of ``k`` other images (default 1,
        the derangement), ``e(x, xi)`` the mean over them.
    seed : int
        Seed of the noise sources, of the ``"random"`` method and of random ties.
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
        Its ``config`` records every option.
    """
    chunk, group = check_count(chunk, "chunk"), check_count(group, "group")
    max_batch = check_count(max_batch, "max_batch")
    parse_baseline(baseline)
    ties, never_flip = check_ties(ties), check_never_flip(never_flip)
    net, score, model_name = scorer_for(model, net, scorer, max_batch)
    xb, batched = net.as_batch(x)
    if not batched:
        raise ValueError(f"evaluate needs a batch of images (n, {net.input_shape}), got one "
                         f"input of shape {np.shape(x)}")
    x = xb.reshape((-1,) + tuple(net.input_shape))
    n = len(x)
    sources = noise_sources(n, noise_pool, seed)
    base, base_config = baseline_images(baseline, x)
    keys_of = tie_keys(ties, n, n_pixels(net.input_shape), seed)
    if labels is not None:
        labels = check_labels(labels, n, net.n_outputs)
    methods = list(methods)
    if not methods:
        raise ValueError("no methods to evaluate")
    names = [name for name, _, _ in resolve(methods)]
    predicted = np.argmax(score(x), axis=1)

    maps = group_maps(net, x, methods, predicted, group, np.random.default_rng(seed),
                      progress)
    parts = []
    groups = range(0, n, group)
    for a in _progress_bar(groups, total=len(groups), desc="pixel removal",
                           enabled=progress):
        b = min(a + group, n)
        parts.append(removal_metrics(
            score, x[a:b], predicted[a:b], names, {m: v[a:b] for m, v in maps.items()},
            {m: v[sources[a:b]] for m, v in maps.items()},
            baseline=base[a:b] if per_image_baseline(base, x) else base,
            ties=None if keys_of is None else keys_of[a:b], never_flip=never_flip,
            chunk=chunk, max_batch=max_batch))
    metrics = {m: {f: np.concatenate([p[m][f] for p in parts]) for f in parts[0][m]}
               for m in names}
    return finish_evaluation(names, metrics, predicted, labels, sources,
                             model_name=model_name, baseline_config=base_config, ties=ties,
                             never_flip=never_flip, seed=seed, chunk=chunk,
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


def n_pixels(input_shape):
    """Pixel positions of one saliency map of inputs of ``input_shape``."""
    return int(np.prod(map_shape(tuple(input_shape))))


def random_draws(net, methods):
    """Values :func:`group_maps` draws from its generator per image: one per map pixel
    for each ``"random"`` method. With groups starting at multiples of ``group``, the
    generator of a part starting at image ``a`` is ``default_rng(seed)`` advanced by
    ``a * random_draws(...)`` (``bit_generator.advance``)."""
    names = [name for name, _, _ in resolve(methods)]
    return names.count("random") * n_pixels(net.input_shape)


def removal_metrics(score, x, predicted, names, maps, partner_maps, *, baseline=0.0,
                    ties=None, never_flip="count-as-1", chunk=32, max_batch=4096):
    """The four removal scans (:data:`~.results.SCANS`) of images ``x`` for every method,
    and the metrics of each image.

    Parameters
    ----------
    score : callable
    x : ndarray, shape (n, *input_shape)
    predicted : ndarray of int, shape (n,)
    names : list of str
    maps : dict of str to ndarray, shape (n, *map)
        Each image's own maps.
    partner_maps : dict of str to ndarray, shape (n, k, *map)
        The maps of each image's ``k`` noise sources (the ``_xi`` scans).
    baseline : float or ndarray
        Broadcastable to ``x.shape`` (:func:`~.options.baseline_images` of these images).
    ties : ndarray of int, shape (n, n_pixels), optional
        Each image's tie keys (:func:`~.options.tie_keys`); None: pixel index.
    never_flip : {"count-as-1", "exclude"}

    Returns
    -------
    dict of str to dict of str to ndarray, shape (n,)
        ``metrics[method]["e_minus"]``, ... : every metric of :func:`_scan_metrics`.
        Images are independent, so the metrics of a set are those of its parts.
    """
    n = len(x)
    k = next(iter(partner_maps.values())).shape[1] if partner_maps else 1
    orders, scan_image, keys = [], [], []
    for m in names:
        for i in range(n):
            tie = None if ties is None else ties[i]
            for s, noise, direction in _SCAN_SPECS:
                for j in range(k if noise else 1):
                    src = partner_maps[m][i, j] if noise else maps[m][i]
                    orders.append(removal_order(src, direction, tie))
                    scan_image.append(i)
                    keys.append((m, s, i, j))
    # per scan, image and pool member: what first_flips reports (one member if not noise)
    raw = {m: {f"{w}_{s}": np.zeros((n, k if noise else 1), dt)
               for s, noise, _ in _SCAN_SPECS for w, dt in _FIELDS} for m in names}
    if keys:
        res = first_flips(score, x, predicted, np.stack(orders), np.asarray(scan_image),
                          baseline=baseline, chunk=chunk, max_batch=max_batch)
        for r, (m, s, i, j) in enumerate(keys):
            for w, _ in _FIELDS:
                raw[m][f"{w}_{s}"][i, j] = res[w][r]
    return {m: _scan_metrics(raw[m], never_flip) for m in names}


def finish_evaluation(names, metrics, predicted, labels, sources, *, model_name,
                      baseline_config, ties, never_flip, seed, chunk, custom_scorer,
                      maps=None):
    """The :class:`~.results.Evaluation` of the images' ``metrics``
    (:func:`removal_metrics`), their noise ``sources`` (n, k) and the configuration
    (``baseline_config`` from :func:`~.options.baseline_images`)."""
    k = sources.shape[1]
    config = {"model": model_name, "n_images": len(predicted), **baseline_config,
              "ties": ties, "never_flip": never_flip, "noise_pool": k, "seed": seed,
              "chunk": chunk, "scorer": "custom" if custom_scorer else "onnxruntime",
              "forward_passes": int(sum(metrics[m][f"scored_{s}"].sum()
                                        for m in names for s in SCANS)),
              "tie_break": describe_ties(ties),
              "never_flipped": describe_never_flip(never_flip),
              "excluded": {m: int(metrics[m]["excluded"].sum()) for m in names}}
    return Evaluation(methods=names, metrics=metrics, predicted=predicted, labels=labels,
                      noise_source=sources[:, 0] if k == 1 else sources, config=config,
                      maps=maps)


def _scan_metrics(raw, never_flip):
    """One method's metrics (:data:`~.results.METRICS` and the per-scan fields) from the
    scans ``raw["<field>_<scan>"]`` of shape (n, pool members): a never-flipping scan
    counts as ``e = 1`` or excludes its image; a noise scan's ``e`` is the mean over
    the pool, ``flipped`` whether all of them flipped, ``removed`` and ``scored`` sums."""
    flipped = {s: raw[f"flipped_{s}"] for s in SCANS}
    d = {"excluded": (never_flip == "exclude")
         & ~np.all(np.concatenate(list(flipped.values()), axis=1), axis=1)}
    for s in SCANS:
        e = raw[f"e_{s}"].copy()
        if never_flip == "count-as-1":
            e[~flipped[s] & np.isfinite(e)] = 1.0
        d[f"e_{s}"] = e.mean(axis=1)
        d[f"e_{s}"][d["excluded"]] = np.nan
        d[f"flipped_{s}"] = np.all(flipped[s], axis=1)
        d[f"removed_{s}"] = raw[f"removed_{s}"].sum(axis=1)
        d[f"scored_{s}"] = raw[f"scored_{s}"].sum(axis=1)
    d["e_delta"] = d["e_minus"] - d["e_plus"]
    d["e_delta_xi"] = d["e_minus_xi"] - d["e_plus_xi"]
    for t in ("minus", "plus", "delta"):
        d[f"de_{t}"] = d[f"e_{t}"] - d[f"e_{t}_xi"]
    return d
