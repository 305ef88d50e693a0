"""Checks of a loaded network against onnxruntime and against SPEC's identities.

Tolerances are SPEC section 2's (``refbbp/tolerance.py``): the float64 forward pass
agrees with onnxruntime (float32) within ``rtol = 1e-4`` and ``atol = 1e-5 * output
scale``; the local linear model is exact to ``1e-9 * scale``.

Inputs are checked in chunks of :data:`CHUNK` (``verify`` holds one chunk at a time, so
its memory does not grow with the number of inputs); :class:`RandomInputs` draws random
inputs chunk by chunk, up to :data:`MAX_RANDOM_INPUTS`.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..bbp import bbp
from ..onnx.loader import strip_final_softmax, topological_order
from ..onnx.registry import NOT_PIECEWISE_LINEAR
from ..onnx.runtime import RuntimeSession
from ..tolerance import TOLERANCE, forward_error
from .._checks import check_count

__all__ = ["CHUNK", "MAX_RANDOM_INPUTS", "RandomInputs", "in_chunks", "nonlinear_nodes",
           "onnxruntime_logits", "verify"]

#: Inputs checked at once by :func:`verify`.
CHUNK = 256
#: Most random inputs :class:`RandomInputs` draws (``refbbp verify --n-random``): at
#: about a millisecond or more per input and rule, a million is already a long run.
MAX_RANDOM_INPUTS = 1_000_000


class RandomInputs:
    """``n`` inputs uniform in [0, 1), drawn ``chunk`` at a time: the same values as
    ``numpy.random.default_rng(seed).random((n, *input_shape))``, without holding them
    all.

    Parameters
    ----------
    input_shape : tuple of int
    n : int
        At most :data:`MAX_RANDOM_INPUTS`.
    seed : int, optional
    chunk : int, optional

    Examples
    --------
    >>> batches = list(RandomInputs((2,), 5, chunk=2))
    >>> [len(b) for b in batches]
    [2, 2, 1]
    """

    def __init__(self, input_shape, n, seed=0, chunk=CHUNK):
        self.input_shape = tuple(input_shape)
        self.n = check_count(n, "the number of random inputs", least=0,
                             most=MAX_RANDOM_INPUTS)
        self.seed = seed
        self.chunk = check_count(chunk, "chunk")

    def __len__(self):
        return -(-self.n // self.chunk)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for lo in range(0, self.n, self.chunk):
            yield rng.random((min(self.chunk, self.n - lo),) + self.input_shape)


class in_chunks:
    """An array's inputs (axis 0) as views of at most ``chunk`` inputs (sized: ``len``
    is the number of chunks)."""

    def __init__(self, x, chunk=CHUNK):
        self.x, self.chunk = x, chunk

    def __len__(self):
        return -(-len(self.x) // self.chunk)

    def __iter__(self):
        for lo in range(0, len(self.x), self.chunk):
            yield self.x[lo:lo + self.chunk]


def _proto(model):
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def onnxruntime_logits(model, net, x):
    """The logits ``net`` explains, computed by onnxruntime (float32) on ``x``.

    The tensor ``net.output_name`` is added as a graph output when it is not one (a final
    Softmax was dropped), so the comparison is on logits. A thin function over
    :class:`refbbp.onnx.runtime.RuntimeSession`.

    Parameters
    ----------
    model : path or onnx.ModelProto
    net : Network
    x : ndarray, shape (n, *net.input_shape)

    Returns
    -------
    ndarray, shape (n, n_outputs), float64
    """
    return RuntimeSession(model, net)(x)


def nonlinear_nodes(model):
    """ONNX nodes whose op is not piecewise linear (a final Softmax/LogSoftmax aside).

    Returns
    -------
    list of (op_type, node name)
    """
    proto = _proto(model)
    graph = proto.graph
    available = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    nodes, produced_by = topological_order(list(graph.node), available)
    _, dropped = strip_final_softmax(graph.output[0].name, produced_by, nodes)
    dropped_ids = {id(n) for n in dropped}
    return [(n.op_type, n.name or n.op_type) for n in nodes
            if n.op_type in NOT_PIECEWISE_LINEAR and (n.domain or "") in ("", "ai.onnx")
            and id(n) not in dropped_ids]


def verify(model, net, x, rules=("sign",), temperature=1.0, progress=None):
    """Forward vs onnxruntime, the local linear model and BBp completeness on ``x``.

    Parameters
    ----------
    model : path or onnx.ModelProto
    net : Network
    x : ndarray of shape (n, *net.input_shape), or an iterable of such batches
        An array is checked :data:`CHUNK` inputs at a time (:class:`in_chunks`); batches
        (e.g. :class:`RandomInputs`) are checked as they come, one at a time.
    rules : sequence of str
    temperature : float
    progress : callable, optional
        ``progress(batches, desc=...)`` wraps the iteration (``refbbp._progress``).

    Returns
    -------
    dict
        ``n_inputs``; ``forward_error`` (multiple of SPEC's tolerance; <= 1 passes; the
        output scale is that of each batch, which is stricter than one scale over all
        inputs), ``forward_max_abs``, ``linear_error`` (relative; <= 1e-9 passes),
        ``bbp_error`` per rule (relative, worst of SPEC 3's identities), each the worst
        over the batches; ``ok``.
    """
    batches = in_chunks(x) if isinstance(x, np.ndarray) else x
    if progress is not None:
        batches = progress(batches, desc="verify")
    session = RuntimeSession(model, net)
    report = {"n_inputs": 0, "forward_error": 0.0, "forward_max_abs": 0.0,
              "linear_error": 0.0, "bbp_error": {rule: 0.0 for rule in rules}}
    for xb in batches:
        xb = np.asarray(xb, np.float32).astype(np.float64)
        if len(xb) == 0:
            continue
        ref = session(xb)
        ours = net.forward(xb)
        lin = net.linearize(xb)
        report["n_inputs"] += int(len(xb))
        report["forward_error"] = max(report["forward_error"], forward_error(ours, ref))
        report["forward_max_abs"] = max(report["forward_max_abs"],
                                        float(np.abs(ours - ref).max(initial=0.0)))
        report["linear_error"] = max(report["linear_error"], lin.check())
        for rule in rules:
            att = bbp(net, xb, rule=rule, temperature=temperature)
            report["bbp_error"][rule] = max(report["bbp_error"][rule],
                                            float(att.completeness().worst))
    if report["n_inputs"] == 0:
        raise ValueError("verify: no inputs to check")
    report["ok"] = bool(report["forward_error"] <= 1 and report["linear_error"] <= TOLERANCE
                        and all(e <= TOLERANCE for e in report["bbp_error"].values()))
    return report
