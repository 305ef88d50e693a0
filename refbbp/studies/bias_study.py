"""How much a network's decisions rest on its biases (SPEC section 6; BBp paper Table 1;
companion paper section 3 and appendix B.1).

For a labelled set ``(x, y)`` and the local linear model ``logits(x) = W^x x + b^x`` of
every class at every input:

* **full**: accuracy of ``argmax logits(x)``;
* **only wx**: accuracy of ``argmax (W^x x)``, computed per class as
  ``logits - b^x`` (BBp Table 1, "Test Only wx");
* **only b**: accuracy of ``argmax b^x`` ("Test Only b"), where ``b^x`` is the local
  bias of every class at once (:meth:`LocalLinearModel.bias_x_all`: the network with its
  activation pattern frozen, evaluated at input 0);
* **zero bias**: accuracy of the same network with every bias set to zero
  (:func:`zero_bias_network`), the companion paper's brute-force bias removal;
* optionally, accuracy of the model and of its zero-bias copy on scaled inputs
  ``x * a`` and shifted inputs ``x + c`` (companion paper appendix B.1);
* with a start node ``s`` (SPEC section 8, e.g. ``"after-normalisation"``), "only wx"
  and "only b" also from ``z``, the output of ``s``: the local linear model
  ``logits = W^z z + b^z`` of the network cut at ``s``, whose ``b^z`` leaves out the
  biases upstream of ``s``. A model that normalises its input inside the graph has in
  ``b^x`` the normalisation's ``-W^z (m / s)``; the BBp paper's networks took
  normalised inputs, so its Table 1 corresponds to the rows from ``z``.

For ``b^x`` (and ``b^z``) the report also counts how often each class is its argmax: a
"only b" accuracy near the share of one class is a constant-class predictor.

Each accuracy comes with the *agreement*: the fraction of inputs where the variant
predicts the same class as the full model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .._progress import progress as _progress_bar
from .._checks import check_labels
from ..network.graph import Network
from ..network.start import cut_network, resolve_start, start_input

__all__ = ["BiasReport", "bias_importance", "bias_rows", "report_from_rows", "start_of",
           "zero_bias_network"]


def zero_bias_network(net, keep=()):
    """A copy of ``net`` with every node's bias ``b`` set to zero.

    Parameters
    ----------
    net : Network
    keep : sequence of int, optional
        Node indices whose bias is kept (e.g. an input normalisation).

    Returns
    -------
    Network
        Shares the (read-only) weight matrices with ``net``.

    Notes
    -----
    Every affine node's bias is zeroed: convolution and dense biases, and, because
    refbbp folds BatchNorm into the node before it (or keeps it as a diagonal affine
    node), BatchNorm's shift ``beta`` and the ``- gamma * mean / sqrt(var + eps)`` term of
    its running mean too, as in the companion paper's bias removal (appendix C: "biases
    include the BatchNorm parameters"); so are an input normalisation's ``- mean / std``
    and the constant of a non-zero Pad. The activations are kept as they are, with their
    offsets ``d`` (a Clip's bounds, e.g. ReLU6's 6): they are part of the nonlinearity,
    not parameters, and zeroing them would change the activation function itself.
    """
    keep = set(int(k) for k in keep)
    nodes = [node if (k in keep or node.kind != "affine") else
             dataclasses.replace(node, bias=np.zeros(node.size), bias_parts=None)
             for k, node in enumerate(net.nodes)]
    for node, old in zip(nodes, net.nodes):
        if node is not old and "weights_t" in old.__dict__:
            node.__dict__["weights_t"] = old.__dict__["weights_t"]  # share the cache
    return Network(nodes, net.output, net.input_shape, input_name=net.input_name,
                   output_name=net.output_name, graph_output=net.graph_output,
                   batch_axis=net.batch_axis,
                   notices=list(net.notices) + ["every bias set to zero"],
                   source=net.source)


@dataclass(eq=False)
class BiasReport:
    """Results of :func:`bias_importance`.

    Attributes
    ----------
    n : int
        Number of labelled inputs.
    accuracy : dict of str to float
        ``"full"``, ``"only_wx"``, ``"only_b"`` and ``"zero_bias"`` (if computed).
    agreement : dict of str to float
        Fraction of inputs where each variant predicts the full model's class.
    scaled, shifted : dict of float to dict of str to float
        ``scaled[a] = {"full": acc, "zero_bias": acc}`` on inputs ``x * a``;
        ``shifted[c]`` likewise on ``x + c``.
    bias_abs : dict of str to float
        Median over inputs of ``|b^x|`` and of ``|W^x x|`` of the predicted class, and
        the median share ``|b^x| / (|W^x x| + |b^x|)``.
        With a start node also ``"only_wz"`` and ``"only_bz"``.
    argmax_b : dict of str to list of int
        ``argmax_b["x"][c]``: for how many inputs class ``c`` is the argmax of ``b^x``;
        with a start node, ``argmax_b["z"]`` likewise for ``b^z``.
    start : Start or None
        The start node of the rows from ``z`` (``None``: rows from ``x`` only).
    """

    n: int
    accuracy: dict
    agreement: dict
    scaled: dict = field(default_factory=dict)
    shifted: dict = field(default_factory=dict)
    bias_abs: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    argmax_b: dict = field(default_factory=dict)
    start: object = None

    @property
    def paper(self):
        """Which rows correspond to the BBp paper's Table 1: ``"z"`` with a start node
        (its networks took normalised inputs), else ``"x"``."""
        return "x" if self.start is None else "z"

    def to_dict(self):
        """Plain Python (predictions left out), for JSON."""
        start = None if self.start is None else {"index": self.start.index,
                                                 "name": self.start.name}
        return {"n": self.n, "accuracy": self.accuracy, "agreement": self.agreement,
                "scaled": {str(k): v for k, v in self.scaled.items()},
                "shifted": {str(k): v for k, v in self.shifted.items()},
                "bias_abs": self.bias_abs, "argmax_b": self.argmax_b, "start": start,
                "paper": self.paper}

    def table(self):
        """Rows and header: one row per variant (accuracy, agreement with full)."""
        names = {"full": "full logits", "only_wx": "only W^x x", "only_b": "only b^x",
                 "only_wz": "only W^z z", "only_bz": "only b^z",
                 "zero_bias": "every bias = 0"}
        if self.start is not None:
            names.update({k: f"{v} (from {f})" for k, v, f in (
                ("only_wx", names["only_wx"], "x"), ("only_b", names["only_b"], "x"),
                ("only_wz", names["only_wz"], "z"), ("only_bz", names["only_bz"], "z"))})
        rows = [[names[k], self.accuracy[k], self.agreement[k]] for k in self.accuracy]
        return rows, ["variant", "accuracy", "agrees with full"]

    def notes(self):
        """Lines that say what the rows are: where ``z`` comes from, which rows are the
        paper's, and the most frequent argmax of the bias."""
        lines = []
        if self.start is not None:
            lines.append(f"z = the output of {self.start}; the BBp paper's networks took "
                         f"normalised inputs, so its Table 1 (Only wx, Only b) corresponds "
                         f"to the rows from z")
        for src, counts in self.argmax_b.items():
            c = int(np.argmax(counts))
            lines.append(f"argmax over classes of b^{src}: class {c} for {counts[c]} of "
                         f"{self.n} inputs")
        return lines

    def robustness_table(self):
        """Rows and header: accuracy on scaled and shifted inputs."""
        rows = [[f"x * {a:g}", v["full"], v.get("zero_bias", float("nan"))]
                for a, v in self.scaled.items()]
        rows += [[f"x + {c:g}", v["full"], v.get("zero_bias", float("nan"))]
                 for c, v in self.shifted.items()]
        return rows, ["input", "accuracy (model)", "accuracy (every bias = 0)"]


def _predict(net, x, batch_size, desc, progress):
    out = []
    for a in _progress_bar(range(0, len(x), batch_size), total=-(-len(x) // batch_size),
                           desc=desc, enabled=progress):
        out.append(np.argmax(net.forward(x[a:a + batch_size]), axis=1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _bias_all(net, x):
    """Logits and the local bias ``b^x`` of every class at inputs ``x`` (batch, n_outputs)."""
    trace = net.trace(x)
    return trace.logits, net.frozen_forward(trace, 0.0)


def bias_importance(net, x, y, *, zero_bias=True, scales=(), shifts=(), batch_size=256,
                    progress=None, start=None):
    """Accuracy of the full logits, of ``W^x x`` alone, of ``b^x`` alone and of the model
    with every bias zeroed (BBp Table 1; SPEC section 6).

    Parameters
    ----------
    net : Network
    x : array_like, shape (n, *input_shape)
    y : array_like of int, shape (n,)
        Labels: class indices in ``[0, n_outputs)`` (checked by
        :func:`refbbp._checks.check_labels`, which names the first bad one).
    zero_bias : bool
        Also evaluate :func:`zero_bias_network` (default True).
    scales, shifts : sequence of float
        Also report accuracy on ``x * a`` for each ``a`` in ``scales`` and on ``x + c``
        for each ``c`` in ``shifts``, for the model and its zero-bias copy.
    batch_size : int
        Inputs per forward pass.
    progress : bool, optional
        Show progress bars (default: on a terminal).
    start : None, int or str, optional
        Also report "only wx" and "only b" from the output ``z`` of this cut node (SPEC
        section 8): its index or name, or ``"after-normalisation"``.

    Returns
    -------
    BiasReport
    """
    xb, batched = net.as_batch(x)
    if not batched:
        raise ValueError(f"bias_importance needs a batch of inputs (n, {net.input_shape}), "
                         f"got one input of shape {np.shape(x)}")
    x = xb.reshape((-1,) + tuple(net.input_shape))
    y = check_labels(y, len(x), net.n_outputs)
    s = resolve_start(net, start)
    rows = bias_rows(net, x, zero_bias=zero_bias, scales=scales, shifts=shifts,
                     batch_size=batch_size, progress=progress, start=s)
    return report_from_rows(rows, y, n_outputs=net.n_outputs, start=start_of(net, s),
                            scales=scales, shifts=shifts)


def start_of(net, start):
    """The :class:`~refbbp.network.start.Start` of the rows from ``z`` for a ``start``
    argument of :func:`bias_importance` (``None``: rows from ``x`` only)."""
    s = resolve_start(net, start)
    return cut_network(net, s).start if s else None


def _variant_key(kind, v, model):
    """Row key of the predictions on ``x * v`` (kind "scale") or ``x + v`` ("shift")."""
    return f"{kind}/{float(v)!r}/{model}"


def bias_rows(net, x, *, zero_bias=True, scales=(), shifts=(), batch_size=256,
              progress=None, start=None):
    """The per-input rows :func:`bias_importance` reduces: predicted classes of every
    variant (with ``start``, also from ``z``), and ``|b^x|``, ``|W^x x|`` of the
    predicted class.

    Parameters
    ----------
    net : Network
    x : ndarray, shape (n, *input_shape)
    zero_bias, scales, shifts, batch_size, progress, start
        As for :func:`bias_importance`.

    Returns
    -------
    dict of str to ndarray, shape (n,)
        ``"full"``, ``"only_wx"``, ``"only_b"``, ``"only_wz"`` and ``"only_bz"`` (with a
        start node), ``"zero_bias"`` (if computed),
        ``"abs_bias"``, ``"abs_wx"``, and ``"scale/<a>/full"``, ``"scale/<a>/zero_bias"``,
        ``"shift/<c>/..."`` likewise. Rows of different inputs are independent, so the
        rows of a set are those of its parts, concatenated (up to the last bits of the
        batched float64 passes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s = resolve_start(net, start)
    preds = {"full": [], "only_wx": [], "only_b": []}
    if s:
        preds.update(only_wz=[], only_bz=[])
    b_abs, wx_abs = [], []
    for a in _progress_bar(range(0, len(x), batch_size), total=-(-len(x) // batch_size),
                           desc="local linear models", enabled=progress):
        logits, bias = _bias_all(net, x[a:a + batch_size])     # b^x of every class
        wx = logits - bias                                     # W^x x of every class
        k = np.argmax(logits, axis=1)
        preds["full"].append(k)
        preds["only_wx"].append(np.argmax(wx, axis=1))
        preds["only_b"].append(np.argmax(bias, axis=1))
        if s:
            bias_z = _bias_all(*start_input(net, x[a:a + batch_size], s))[1]
            preds["only_wz"].append(np.argmax(logits - bias_z, axis=1))
            preds["only_bz"].append(np.argmax(bias_z, axis=1))
        rows = np.arange(len(k))
        b_abs.append(np.abs(bias[rows, k]))
        wx_abs.append(np.abs(wx[rows, k]))
    out = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in preds.items()}
    out["abs_bias"] = np.concatenate(b_abs) if b_abs else np.zeros(0)
    out["abs_wx"] = np.concatenate(wx_abs) if wx_abs else np.zeros(0)
    zero = None
    if zero_bias:
        zero = zero_bias_network(net)
        out["zero_bias"] = _predict(zero, x, batch_size, "zero-bias model", progress)
    for kind, values, op in (("scale", scales, np.multiply), ("shift", shifts, np.add)):
        for v in values:
            xs = op(x, float(v))
            out[_variant_key(kind, v, "full")] = _predict(net, xs, batch_size,
                                                          f"{kind} {v:g}", progress)
            if zero is not None:
                out[_variant_key(kind, v, "zero_bias")] = _predict(
                    zero, xs, batch_size, f"{kind} {v:g} (zero bias)", progress)
    return out


def report_from_rows(rows, y, *, n_outputs, start=None, scales=(), shifts=()):
    """The :class:`BiasReport` of the rows of :func:`bias_rows` and the labels ``y``.

    ``n_outputs`` is the number of classes (of the ``argmax_b`` counts), ``start`` the
    :class:`~refbbp.network.start.Start` of the rows from ``z`` (:func:`start_of`) or
    None, ``scales`` and ``shifts`` those the rows were computed with.
    """
    y = np.asarray(y)
    preds = {k: rows[k] for k in ("full", "only_wx", "only_b", "only_wz", "only_bz",
                                  "zero_bias") if k in rows}
    accuracy = {k: float(np.mean(v == y)) for k, v in preds.items()}
    agreement = {k: float(np.mean(v == preds["full"])) for k, v in preds.items()}
    b_abs, wx_abs = rows["abs_bias"], rows["abs_wx"]
    total = b_abs + wx_abs
    share = np.divide(b_abs, total, out=np.zeros_like(total), where=total > 0)
    bias_abs = {"median_abs_bias": float(np.median(b_abs)),
                "median_abs_wx": float(np.median(wx_abs)),
                "median_bias_share": float(np.median(share))}
    scaled, shifted = {}, {}
    for kind, values in (("scale", scales), ("shift", shifts)):
        for v in values:
            res = {model: float(np.mean(rows[_variant_key(kind, v, model)] == y))
                   for model in ("full", "zero_bias") if _variant_key(kind, v, model) in rows}
            (scaled if kind == "scale" else shifted)[float(v)] = res
    argmax_b = {src: np.bincount(preds[key], minlength=n_outputs).tolist()
                for src, key in (("x", "only_b"), ("z", "only_bz")) if key in preds}
    return BiasReport(n=len(y), accuracy=accuracy, agreement=agreement, scaled=scaled,
                      shifted=shifted, bias_abs=bias_abs, predictions=preds,
                      argmax_b=argmax_b, start=start)
