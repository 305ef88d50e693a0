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
                      describe_ties, parse_baseline, tie_keys)
from .removal import first_flips, noise_sources, removal_order
from .results import SCANS, Evaluation
from .scoring import OnnxScorer, scorer_for

__all__ = ["evaluate"]

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
    k = sources.shape[1]
    base, base_config = baseline_images(baseline, x)
    n_pix = int(np.prod(map_shape(net.input_shape)))
    keys_of = tie_keys(ties, n, n_pix, seed)
    if labels is not None:
        labels = check_labels(labels, n, net.n_outputs)
    methods = list(methods)
    if not methods:
        raise ValueError("no methods to evaluate")
    names = [name for name, _, _ in resolve(methods)]
    predicted = np.argmax(score(x), axis=1)

    groups = range(0, n, group)
    maps = {m: [] for m in names}
    rng = np.random.default_rng(seed)  # one stream: the "random" maps do not depend on group
    for a in _progress_bar(groups, total=len(groups), desc="saliency maps",
                           enabled=progress):
        part = saliency_maps(net, x[a:a + group], methods, predicted[a:a + group],
                             batch_size=group, rng=rng)
        for m in names:
            maps[m].append(part[m])
    maps = {m: np.concatenate(v) for m, v in maps.items()}

    # per scan, image and pool member: what first_flips reports (one member if not noise)
    raw = {m: {f"{w}_{s}": np.zeros((n, k if noise else 1), dt)
               for s, noise, _ in _SCAN_SPECS for w, dt in _FIELDS} for m in names}
    for a in _progress_bar(groups, total=len(groups), desc="pixel removal",
                           enabled=progress):
        orders, scan_image, keys = [], [], []
        for m in names:
            for i in range(a, min(a + group, n)):
                tie = None if keys_of is None else keys_of[i]
                for s, noise, direction in _SCAN_SPECS:
                    for j in range(k if noise else 1):
                        src = sources[i, j] if noise else i
                        orders.append(removal_order(maps[m][src], direction, tie))
                        scan_image.append(i)
                        keys.append((m, s, i, j))
        res = first_flips(score, x, predicted, np.stack(orders), np.asarray(scan_image),
                          baseline=base, chunk=chunk, max_batch=max_batch)
        for r, (m, s, i, j) in enumerate(keys):
            for w, _ in _FIELDS:
                raw[m][f"{w}_{s}"][i, j] = res[w][r]

    metrics = {m: _scan_metrics(raw[m], never_flip) for m in names}
    config = {"model": model_name, "n_images": n, **base_config, "ties": ties,
              "never_flip": never_flip, "noise_pool": k, "seed": seed, "chunk": chunk,
              "scorer": "onnxruntime" if isinstance(score, OnnxScorer) else "custom",
              "forward_passes": int(sum(metrics[m][f"scored_{s}"].sum()
                                        for m in names for s in SCANS)),
              "tie_break": describe_ties(ties),
              "never_flipped": describe_never_flip(never_flip),
              "excluded": {m: int(metrics[m]["excluded"].sum()) for m in names}}
    return Evaluation(methods=names, metrics=metrics, predicted=predicted, labels=labels,
                      noise_source=sources[:, 0] if k == 1 else sources, config=config,
                      maps=maps if keep_maps else None)


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
