"""The pixel-removal evaluation of saliency maps (SPEC section 5; companion paper
section 4, eq. 17-20).

For an image ``x`` with predicted class ``k`` and a saliency map ``s`` (one value per
pixel position; all channels of a pixel are removed together):

* **Removal order.** ``+s`` removes the most salient pixel first, ``-s`` the least
  salient first. **Ties** in ``s`` are broken by pixel index (row-major), smallest first,
  in both directions (a stable sort).
* **Removal.** The first ``m`` pixels of the order are set to the baseline (0 by
  default; a scalar or an array broadcastable to the input shape), giving ``x_m``.
* **First flip.** ``m*`` is the smallest ``m >= 1`` with ``argmax f(x_m) != k``
  (``argmax`` takes the first maximum). ``e(x, s) = 1 - ||x_{m*}||_2 / ||x||_2``
  (norms over all channels and pixels, in float64).
* **Never flips.** If no prefix changes the class, not even with every pixel removed,
  ``e`` is its value with every pixel removed, ``1 - ||baseline||_2 / ||x||_2`` (1 for
  the zero baseline: the largest value possible), and the image's ``flipped_*`` flag is
  False, so such images can be counted or filtered. An image with ``||x||_2 = 0`` has
  ``e = nan`` (left out of the statistics).

Metrics per image: ``e_minus = e(x, -s)``, ``e_plus = e(x, +s)``,
``e_delta = e_minus - e_plus``; the same for the **noise baseline** ``xi`` (suffix
``_xi``): the map the same method gave another image, chosen by a seeded derangement
(a random permutation with no fixed point, the same for every method so that methods
stay paired); and ``de_* = e_* - e_*_xi`` (eq. 18, 20). Higher ``e_minus``,
``e_delta``, ``de_minus``, ``de_delta`` and lower ``e_plus``, ``de_plus`` mean a better
map.

**Scoring, exactly and in batches.** Perturbed images are scored by onnxruntime, one
session per model, in batches. The first flip is found exactly, not by bisection
(the class may flip and flip back): the prefixes of a removal order are scored *in
order*, in chunks of ``chunk`` prefixes; the scan stops at the first chunk containing a
flip, and ``m*`` is the first flipping prefix in it. Every prefix before ``m*`` has
therefore been scored and keeps the class. Prefixes whose image equals the previous one
(the pixel just removed was already at the baseline in every channel, e.g. the black
background of a digit) are not scored again: the image, hence the prediction, is
unchanged, so the first flip is never at such a prefix. Chunks of many scans (images,
methods, directions) go to onnxruntime together.

Methods (:func:`saliency_maps`): ``"gradient"``, ``"fullgrad"``, ``"fullgrad-layer"``,
``"layers-all"``, ``"layers-topK"`` (e.g. ``"layers-top2"``), ``"layers-from:N"``
(each with an optional ``"-noinput"`` suffix), ``"activity:N"``, ``"biasgrad:N"``,
``"bias"``, ``"bias-deviation"``, ``"random"``, or any callable.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..explain import saliency as sal
from .._progress import progress as _progress_bar
from ..explain.decompose import decompose

__all__ = ["DEFAULT_METHODS", "METRICS", "Evaluation", "OnnxScorer", "boxplot",
           "derangement", "evaluate", "first_flips", "removal_order", "saliency_maps",
           "wilcoxon_test"]

DEFAULT_METHODS = ("gradient", "fullgrad", "layers-all", "layers-top2", "bias", "random")
METRICS = ("e_minus", "e_plus", "e_delta", "e_minus_xi", "e_plus_xi", "e_delta_xi",
           "de_minus", "de_plus", "de_delta")
SCANS = ("minus", "plus", "minus_xi", "plus_xi")


# ------------------------------------------------------------------------- scoring
class OnnxScorer:
    """Logits of perturbed inputs from one onnxruntime session.

    Parameters
    ----------
    model : str, path or onnx.ModelProto
    net : Network
        The loaded model (gives the input name, the explained tensor and the shapes).
        Its ``output_name`` is added as a graph output if a final Softmax was dropped.
    max_batch : int
        Largest batch sent to onnxruntime at once.

    Notes
    -----
    Inputs are cast to float32 (the model's type). A model whose input has a fixed batch
    dimension, or none, is run one input at a time.
    """

    def __init__(self, model, net, max_batch=4096):
        import onnx
        import onnxruntime as ort

        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        if net.output_name not in [o.name for o in proto.graph.output]:
            copy = onnx.ModelProto()
            copy.CopyFrom(proto)
            copy.graph.output.append(onnx.helper.make_tensor_value_info(
                net.output_name, onnx.TensorProto.FLOAT, None))
            proto = copy
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = net.input_name
        self.output_name = net.output_name
        self.input_shape = tuple(net.input_shape)
        vin = next(i for i in self.session.get_inputs() if i.name == net.input_name)
        lead = vin.shape[0] if vin.shape else None
        self.one_at_a_time = (not net.batch_axis) or isinstance(lead, int)
        self.batch_axis = net.batch_axis
        self.max_batch = int(max_batch)
        self.calls = 0
        self.scored = 0

    def __call__(self, x):
        """Logits of a batch ``x`` (n, *input_shape) as float64 (n, n_outputs)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32).reshape((-1,) + self.input_shape)
        out = []
        if self.one_at_a_time:
            for xi in x32:
                feed = xi[None] if self.batch_axis else xi
                out.append(self.session.run([self.output_name], {self.input_name: feed})[0]
                           .reshape(1, -1))
                self.calls += 1
        else:
            for a in range(0, len(x32), self.max_batch):
                out.append(self.session.run([self.output_name],
                                            {self.input_name: x32[a:a + self.max_batch]})[0]
                           .reshape(len(x32[a:a + self.max_batch]), -1))
                self.calls += 1
        self.scored += len(x32)
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


# ------------------------------------------------------------------ removal scans
def removal_order(s, direction):
    """Pixel indices in removal order.

    Parameters
    ----------
    s : array_like, shape map
        A saliency map (finite).
    direction : {"+", "-"}
        ``"+"``: most salient first; ``"-"``: least salient first.

    Returns
    -------
    ndarray of int64, shape (s.size,)
        Flat (row-major) pixel indices; ties in ``s`` in increasing pixel index.
    """
    s = np.asarray(s, np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency map contains NaN or infinite values")
    if direction == "+":
        return np.argsort(-s, kind="stable")
    if direction == "-":
        return np.argsort(s, kind="stable")
    raise ValueError(f"direction must be '+' or '-', got {direction!r}")


def _as_pixels(a, input_shape):
    """(…, *input_shape) -> (…, C, P): channels, then pixel positions."""
    lead = a.shape[:a.ndim - len(input_shape)]
    if len(input_shape) >= 2:
        return a.reshape(lead + (input_shape[0], -1))
    return a.reshape(lead + (1, -1))


def first_flips(score, images, classes, orders, scan_image=None, baseline=0.0, chunk=32,
                max_batch=4096):
    """The first prefix of each removal order that changes the class (exact).

    Parameters
    ----------
    score : callable
        ``score(batch) -> logits``: batch (b, *input_shape) -> (b, n_outputs).
    images : ndarray, shape (n_images, *input_shape)
    classes : ndarray of int, shape (n_images,)
        The class ``k`` of each unperturbed image.
    orders : ndarray of int, shape (n_scans, n_pixels)
        Removal orders (flat pixel indices, e.g. from :func:`removal_order`).
    scan_image : ndarray of int, shape (n_scans,), optional
        The image each order applies to (default ``arange(n_scans)``).
    baseline : float or ndarray broadcastable to input_shape
        Value removed pixels take.
    chunk : int
        Prefixes scored per scan and round (exactness does not depend on it).
    max_batch : int
        Largest number of perturbed images built at once.

    Returns
    -------
    dict of ndarray, each of shape (n_scans,)
        ``removed``: ``m*``, the number of pixels removed at the first flip (n_pixels if
        the class never changes); ``flipped``: whether it changed; ``e``:
        ``1 - ||x_{m*}|| / ||x||``; ``scored``: prefixes scored.
    """
    images = np.asarray(images, np.float64)
    input_shape = images.shape[1:]
    orders = np.asarray(orders, np.int64)
    n_scans, n_pix = orders.shape
    scan_image = np.arange(n_scans) if scan_image is None else np.asarray(scan_image)
    classes = np.asarray(classes)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    px = _as_pixels(images, input_shape)                        # (n_img, C, P)
    if px.shape[2] != n_pix:
        raise ValueError(f"orders have {n_pix} pixels, the images {px.shape[2]}")
    base = _as_pixels(np.broadcast_to(np.asarray(baseline, np.float64), input_shape),
                      input_shape)                              # (C, P)
    changes = np.any(px != base[None], axis=1)                  # (n_img, P)

    ranks = np.empty_like(orders)
    np.put_along_axis(ranks, orders, np.arange(n_pix)[None], axis=1)
    # prefix lengths m (pixels removed) at which the image changes
    cands = [np.flatnonzero(changes[scan_image[j]][orders[j]]) + 1 for j in range(n_scans)]
    pos = np.zeros(n_scans, np.int64)
    removed = np.full(n_scans, n_pix, np.int64)
    flipped = np.zeros(n_scans, bool)
    scored = np.zeros(n_scans, np.int64)
    active = [j for j in range(n_scans) if len(cands[j])]
    per_round = max(1, int(max_batch) // chunk)
    while active:
        take, active = active[:per_round], active[per_round:]
        parts, owners = [], []
        for j in take:
            ms = cands[j][pos[j]:pos[j] + chunk]
            mask = ranks[j][None, :] < ms[:, None]              # (M, P)
            img = px[scan_image[j]]
            parts.append(np.where(mask[:, None, :], base[None], img[None]))
            owners.append((j, ms))
        batch = np.concatenate(parts).reshape((-1,) + input_shape)
        pred = np.argmax(score(batch), axis=1)
        a = 0
        for j, ms in owners:
            p = pred[a:a + len(ms)]
            a += len(ms)
            scored[j] += len(ms)
            hit = np.flatnonzero(p != classes[scan_image[j]])
            if hit.size:
                removed[j] = ms[hit[0]]
                flipped[j] = True
                continue
            pos[j] += len(ms)
            if pos[j] < len(cands[j]):
                active.append(j)
    # e at the first flip (or with every pixel removed)
    norm_x = np.sqrt(np.einsum("icp,icp->i", px, px))
    e = np.empty(n_scans)
    for j in range(n_scans):
        img = px[scan_image[j]]
        xm = np.where((ranks[j] < removed[j])[None, :], base, img)
        nx = norm_x[scan_image[j]]
        e[j] = 1.0 - math.sqrt(float(np.sum(xm * xm))) / nx if nx > 0 else np.nan
    return {"removed": removed, "flipped": flipped, "e": e, "scored": scored}


def derangement(n, seed=0):
    """A seeded random permutation with no fixed point (a single cycle).

    ``perm[i]`` is the image whose map serves as image ``i``'s noise baseline.

    Parameters
    ----------
    n : int
        Number of images, at least 2.
    seed : int

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    if n < 2:
        raise ValueError(f"the noise baseline needs at least 2 images (maps of other "
                         f"images), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


# ------------------------------------------------------------------------- methods
def _parse_layers(name):
    """'layers-all[-noinput]', 'layers-topK[-noinput]', 'layers-from:N[-noinput]'."""
    body = name[len("layers-"):]
    include_input = True
    if body.endswith("-noinput"):
        body, include_input = body[:-len("-noinput")], False
    if body == "all" or (body.startswith("top") and body[3:].isdigit()):
        return body, include_input
    if body.startswith("from:") and body[5:].lstrip("-").isdigit():
        return int(body[5:]), include_input
    raise ValueError(f"method {name!r} not understood: expected layers-all, layers-topK "
                     f"or layers-from:N, optionally with the suffix -noinput")


def _node_arg(name, prefix):
    tail = name[len(prefix):]
    if not tail.isdigit():
        raise ValueError(f"method {name!r} needs a node index: {prefix}N")
    return int(tail)


def _decomposition_map(name, dec):
    if name == "gradient":
        return sal.gradient_map(dec)
    if name == "fullgrad":
        return sal.fullgrad(dec)
    if name == "fullgrad-layer":
        return sal.fullgrad(dec, normalise="layer")
    if name.startswith("layers-"):
        l0, include_input = _parse_layers(name)
        return sal.layer_aggregate(dec, l0, include_input=include_input)
    if name.startswith("activity:"):
        return sal.layer_map(dec, _node_arg(name, "activity:"), "h")
    if name.startswith("biasgrad:"):
        return sal.layer_map(dec, _node_arg(name, "biasgrad:"), "b")
    return None


_DECOMPOSITION_METHODS = ("gradient", "fullgrad", "fullgrad-layer")
_PREFIXES = ("layers-", "activity:", "biasgrad:")


def method_name(method):
    """The name a method is reported under (a callable's ``__name__``)."""
    if isinstance(method, str):
        return method
    return getattr(method, "__name__", repr(method))


def _uses_decomposition(m):
    return isinstance(m, str) and (m in _DECOMPOSITION_METHODS or m.startswith(_PREFIXES))


def _pixel_sum(net, a):
    """Sum |a| over channels of an input-shaped batch (n, *input_shape) -> (n, *map)."""
    a = np.abs(np.asarray(a, np.float64))
    return a.sum(axis=1) if len(net.input_shape) >= 2 else a


def _bbp_maps(net, x, classes, rule):
    try:
        from ..bbp import bbp
    except ImportError as exc:
        raise ImportError(f"the 'bias' methods need refbbp.bbp, which failed to import: "
                          f"{exc}") from exc
    beta = bbp(net, x, target=np.asarray(classes, np.int64), rule=rule).beta
    return _pixel_sum(net, beta)


def _validate(name, net, x, maps):
    mshape = sal.map_shape(net.input_shape)
    maps = np.asarray(maps, np.float64)
    if maps.shape == (len(x),) + tuple(net.input_shape) and mshape != tuple(net.input_shape):
        maps = _pixel_sum(net, maps)
    if maps.shape != (len(x),) + tuple(mshape):
        raise ValueError(f"method {name!r} returned maps of shape {maps.shape}, expected "
                         f"{(len(x),) + tuple(mshape)} (or the input's shape)")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"method {name!r} returned NaN or infinite values")
    return maps


def saliency_maps(net, x, methods, classes=None, seed=0, batch_size=64):
    """Saliency maps of ``x`` for several methods, sharing one decomposition.

    Parameters
    ----------
    net : Network
    x : ndarray, shape (n, *input_shape)
    methods : sequence of str or callable
        Names (module docstring) or callables ``f(net, x, classes) -> maps`` returning
        ``(n, *map)`` or input-shaped ``(n, *input_shape)`` arrays (then ``|.|`` is
        summed over channels, as for ``"gradient"`` and ``"bias"``).
    classes : ndarray of int, shape (n,), optional
        Explained class per input (default the float64 prediction).
    seed : int
        Seed of the ``"random"`` maps (uniform on [0, 1)).
    batch_size : int
        Inputs decomposed at once.

    Returns
    -------
    dict of str to ndarray, shape (n, *map)
    """
    x = np.asarray(x, np.float64)
    if classes is None:
        classes = np.argmax(net.forward(x), axis=1)
    classes = np.asarray(classes, np.int64)
    mshape = tuple(sal.map_shape(net.input_shape))
    names = [method_name(m) for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    for m in methods:
        if isinstance(m, str) and _uses_decomposition(m):
            _check_name(m)
    out = {}
    dec_methods = [m for m in methods if _uses_decomposition(m)]
    if dec_methods:
        parts = {m: [] for m in dec_methods}
        for a in range(0, len(x), batch_size):
            dec = decompose(net, x[a:a + batch_size], target=classes[a:a + batch_size])
            for m in dec_methods:
                parts[m].append(_decomposition_map(m, dec))
        for m in dec_methods:
            out[m] = np.concatenate(parts[m]).reshape((len(x),) + mshape)
    for m in methods:
        name = method_name(m)
        if name in out:
            continue
        if callable(m):
            out[name] = m(net, x, classes)
        elif m == "bias":
            out[name] = _bbp_maps(net, x, classes, "sign")
        elif m == "bias-deviation":
            out[name] = _bbp_maps(net, x, classes, "deviation")
        elif m == "random":
            out[name] = np.random.default_rng(seed).random((len(x),) + mshape)
        else:
            _check_name(m)
    return {method_name(m): _validate(method_name(m), net, x, out[method_name(m)])
            for m in methods}


def _check_name(m):
    if not isinstance(m, str):
        return
    if m in _DECOMPOSITION_METHODS or m in ("bias", "bias-deviation", "random"):
        return
    if m.startswith("layers-"):
        _parse_layers(m)
        return
    if m.startswith("activity:"):
        _node_arg(m, "activity:")
        return
    if m.startswith("biasgrad:"):
        _node_arg(m, "biasgrad:")
        return
    raise ValueError(f"unknown method {m!r}: expected one of gradient, fullgrad, "
                     f"fullgrad-layer, layers-all, layers-topK, layers-from:N, activity:N, "
                     f"biasgrad:N, bias, bias-deviation, random, or a callable")


# ---------------------------------------------------------------------- statistics
def wilcoxon_test(a, b):
    """Paired Wilcoxon signed-rank test of ``a`` against ``b`` (two-sided).

    Pairs with a non-finite value are dropped; zero differences are discarded by the
    test (``zero_method="wilcox"``, scipy's default).

    Parameters
    ----------
    a, b : array_like, shape (n,)

    Returns
    -------
    dict
        ``statistic``, ``pvalue``, ``n`` (finite pairs), ``n_nonzero`` (pairs with a
        non-zero difference) and ``median_difference`` (median of ``a - b`` over the
        ``n`` pairs). With no non-zero difference there is no evidence either way:
        ``statistic = 0`` and ``pvalue = 1``.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    nz = int(np.count_nonzero(d))
    res = {"n": int(d.size), "n_nonzero": nz,
           "median_difference": float(np.median(d)) if d.size else float("nan")}
    if nz == 0:
        res.update(statistic=0.0, pvalue=1.0)
    else:
        r = wilcoxon(d)
        res.update(statistic=float(r.statistic), pvalue=float(r.pvalue))
    return res


# ------------------------------------------------------------------------- results
@dataclass(eq=False)
class Evaluation:
    """Results of :func:`evaluate`.

    Attributes
    ----------
    methods : list of str
    metrics : dict of str to dict of str to ndarray
        ``metrics[method][name]``, shape (n,), for every name in :data:`METRICS`, plus
        ``removed_<scan>`` (pixels removed at the first flip), ``flipped_<scan>`` and
        ``scored_<scan>`` for ``<scan>`` in minus, plus, minus_xi, plus_xi.
    predicted : ndarray of int, shape (n,)
        The class ``k`` of each image (onnxruntime's argmax).
    labels : ndarray of int, shape (n,), or None
    noise_source : ndarray of int, shape (n,)
        The derangement: image ``i``'s noise map is the map of image ``noise_source[i]``.
    config : dict
        Baseline, seed, chunk, model, number of forward passes.
    maps : dict of str to ndarray or None
        The saliency maps (n, *map) when ``keep_maps=True``.
    """

    methods: list
    metrics: dict
    predicted: np.ndarray
    labels: np.ndarray
    noise_source: np.ndarray
    config: dict = field(default_factory=dict)
    maps: dict = None

    @property
    def n(self):
        return len(self.predicted)

    def summary(self, metrics=METRICS):
        """Median, quartiles and mean of each metric per method.

        Returns
        -------
        dict of str to dict of str to dict
            ``summary[method][metric] = {"median", "q25", "q75", "mean", "n"}``; also
            ``summary[method]["never_flipped"]`` per scan.
        """
        out = {}
        for m in self.methods:
            d = {}
            for k in metrics:
                v = self.metrics[m][k]
                v = v[np.isfinite(v)]
                d[k] = ({"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                         "q75": float(np.percentile(v, 75)), "mean": float(np.mean(v)),
                         "n": int(v.size)} if v.size else
                        {"median": float("nan"), "q25": float("nan"), "q75": float("nan"),
                         "mean": float("nan"), "n": 0})
            d["never_flipped"] = {s: int(np.sum(~self.metrics[m][f"flipped_{s}"]))
                                  for s in SCANS}
            out[m] = d
        return out

    def compare(self, a, b, metric="de_delta"):
        """Wilcoxon signed-rank test of method ``a`` against ``b`` on ``metric``, paired
        per image (:func:`wilcoxon_test`); ``median_difference`` is of ``a - b``."""
        for m in (a, b):
            if m not in self.metrics:
                raise ValueError(f"no method {m!r} in this evaluation ({self.methods})")
        if metric not in self.metrics[a]:
            raise ValueError(f"unknown metric {metric!r}: expected one of {METRICS}")
        res = wilcoxon_test(self.metrics[a][metric], self.metrics[b][metric])
        return {"a": a, "b": b, "metric": metric, **res}

    def comparisons(self, metric="de_delta", pairs=None):
        """:meth:`compare` for ``pairs`` (default every pair of methods, in order)."""
        if pairs is None:
            pairs = [(a, b) for i, a in enumerate(self.methods) for b in self.methods[i + 1:]]
        return [self.compare(a, b, metric) for a, b in pairs]

    def rows(self):
        """One dict per (image, method): the CSV rows."""
        rows = []
        keys = list(METRICS) + [f"{w}_{s}" for w in ("removed", "flipped", "scored")
                                for s in SCANS]
        for i in range(self.n):
            for m in self.methods:
                r = {"image": i, "label": None if self.labels is None else int(self.labels[i]),
                     "predicted": int(self.predicted[i]),
                     "noise_source": int(self.noise_source[i]), "method": m}
                for k in keys:
                    v = self.metrics[m][k][i]
                    r[k] = (bool(v) if k.startswith("flipped") else
                            int(v) if k.startswith(("removed", "scored")) else float(v))
                rows.append(r)
        return rows

    def to_csv(self, path):
        """Write :meth:`rows` as CSV (one line per image and method)."""
        rows = self.rows()
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    def to_dict(self, metric="de_delta"):
        """Everything as plain Python: config, summary, comparisons on ``metric`` and
        the per-image rows."""
        return {"config": self.config, "methods": list(self.methods), "n_images": self.n,
                "summary": _nan_to_none(self.summary()),
                "comparisons": {k: _nan_to_none(self.comparisons(k)) for k in
                                dict.fromkeys((metric, "de_minus", "e_delta", "e_minus"))},
                "images": _nan_to_none(self.rows())}

    def to_json(self, path, metric="de_delta"):
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(metric), fh, indent=1)
        return path

    def table(self, metrics=("e_minus", "e_plus", "e_delta", "de_minus", "de_plus",
                             "de_delta")):
        """Rows ``[method, median of each metric..., never-flipped counts]`` and the
        header, for printing."""
        summ = self.summary(metrics)
        header = ["method"] + [f"median {k}" for k in metrics] + ["no flip (-/+)"]
        rows = [[m] + [summ[m][k]["median"] for k in metrics] +
                [f"{summ[m]['never_flipped']['minus']}/{summ[m]['never_flipped']['plus']}"]
                for m in self.methods]
        return rows, header


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------ evaluate
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
        See :func:`saliency_maps`.
    labels : array_like of int, shape (n,), optional
        True labels, only reported.
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
    import onnx

    from ..network.graph import Network

    if isinstance(model, Network):
        net = model
        score = scorer if scorer is not None else net.forward
        model_name = "<Network>"
    else:
        if net is None:
            from ..onnx import load

            net = load(model)
        score = scorer if scorer is not None else OnnxScorer(model, net, max_batch)
        model_name = ("<ModelProto>" if isinstance(model, onnx.ModelProto)
                      else os.path.basename(str(model)))
    xb, batched = net.as_batch(x)
    if not batched:
        raise ValueError(f"evaluate needs a batch of images (n, {net.input_shape}), got one "
                         f"input of shape {np.shape(x)}")
    x = xb.reshape((-1,) + tuple(net.input_shape))
    n = len(x)
    perm = derangement(n, seed)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    names = [method_name(m) for m in methods]
    if not names:
        raise ValueError("no methods to evaluate")
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    for m in methods:
        if not callable(m):
            _check_name(m)
    predicted = np.argmax(score(x), axis=1)

    maps = {}
    for a in _progress_bar(range(0, n, group), total=-(-n // group), desc="saliency maps",
                           enabled=progress):
        part = saliency_maps(net, x[a:a + group], methods, predicted[a:a + group],
                             seed=seed, batch_size=group)
        for k, v in part.items():
            maps.setdefault(k, []).append(v)
    maps = {k: np.concatenate(v) for k, v in maps.items()}
    if "random" in [m for m in methods if isinstance(m, str)]:
        # one seeded draw for the whole set, not one per group
        maps["random"] = np.random.default_rng(seed).random(maps["random"].shape)

    raw = {m: {s: {} for s in SCANS} for m in names}
    for a in _progress_bar(range(0, n, group), total=-(-n // group), desc="pixel removal",
                           enabled=progress):
        idx = np.arange(a, min(a + group, n))
        orders, scan_image, keys = [], [], []
        for m in names:
            for i in idx:
                for s, src, d in (("minus", i, "-"), ("plus", i, "+"),
                                  ("minus_xi", perm[i], "-"), ("plus_xi", perm[i], "+")):
                    orders.append(removal_order(maps[m][src], d))
                    scan_image.append(i)
                    keys.append((m, s, i))
        res = first_flips(score, x, predicted, np.stack(orders), np.asarray(scan_image),
                          baseline=baseline, chunk=chunk, max_batch=max_batch)
        for j, (m, s, i) in enumerate(keys):
            raw[m][s][i] = (res["e"][j], res["removed"][j], res["flipped"][j],
                            res["scored"][j])

    metrics = {}
    for m in names:
        d = {}
        for s in SCANS:
            vals = [raw[m][s][i] for i in range(n)]
            d[f"e_{s}"] = np.array([v[0] for v in vals])
            d[f"removed_{s}"] = np.array([v[1] for v in vals], np.int64)
            d[f"flipped_{s}"] = np.array([v[2] for v in vals], bool)
            d[f"scored_{s}"] = np.array([v[3] for v in vals], np.int64)
        d["e_delta"] = d["e_minus"] - d["e_plus"]
        d["e_delta_xi"] = d["e_minus_xi"] - d["e_plus_xi"]
        for k in ("minus", "plus", "delta"):
            d[f"de_{k}"] = d[f"e_{k}"] - d[f"e_{k}_xi"]
        metrics[m] = d
    config = {"model": model_name, "n_images": n, "baseline": _baseline_repr(baseline),
              "seed": seed, "chunk": chunk,
              "scorer": "onnxruntime" if isinstance(score, OnnxScorer) else "custom",
              "forward_passes": int(sum(metrics[m][f"scored_{s}"].sum()
                                        for m in names for s in SCANS)),
              "tie_break": "pixel index, ascending (stable sort)",
              "never_flipped": "e with every pixel removed; flipped_* = False"}
    return Evaluation(methods=names, metrics=metrics, predicted=predicted, labels=labels,
                      noise_source=perm, config=config, maps=maps if keep_maps else None)


def _baseline_repr(b):
    b = np.asarray(b)
    return float(b) if b.ndim == 0 else f"array of shape {b.shape}"


# ------------------------------------------------------------------------- figure
_LABELS = {"e_minus": "e₋", "e_plus": "e₊", "e_delta": "e_Δ", "de_minus": "δe₋",
           "de_plus": "δe₊", "de_delta": "δe_Δ", "e_minus_xi": "e₋(ξ)",
           "e_plus_xi": "e₊(ξ)", "e_delta_xi": "e_Δ(ξ)"}


def boxplot(evaluation, path, metrics=("de_minus", "e_minus"), methods=None, title=None):
    """A box plot per metric of every method, like the companion paper's Fig. 5/6.

    Boxes span the 25th to 75th percentile with the median marked; whiskers the 10th
    to 90th percentile; outliers are not drawn. Needs matplotlib
    (``pip install 'refbbp[figures]'``).

    Parameters
    ----------
    evaluation : Evaluation
    path : str
        PNG file to write.
    metrics : sequence of str
        One panel each, stacked.
    methods : sequence of str, optional
        Boxes, in order (default every method).
    title : str, optional

    Returns
    -------
    str
        ``path``.
    """
    from ..figures import require_matplotlib

    plt = require_matplotlib()
    methods = list(evaluation.methods if methods is None else methods)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(4.0, 0.9 * len(methods) + 1.5),
                                                       2.6 * len(metrics) + 0.4),
                             squeeze=False)
    for ax, k in zip(axes[:, 0], metrics):
        data = [evaluation.metrics[m][k][np.isfinite(evaluation.metrics[m][k])]
                for m in methods]
        ax.boxplot(data, whis=(10, 90), showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#9ecae1"}, medianprops={"color": "#08306b"})
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(_LABELS.get(k, k))
        if k.startswith("de_") or k.endswith("delta"):
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        if k in ("e_plus", "de_plus"):
            ax.invert_yaxis()  # as in the paper: higher is better in every panel
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
