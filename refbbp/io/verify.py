"""Checks of a loaded network against onnxruntime and against SPEC's identities.

Tolerances are SPEC section 2's (``refbbp/tolerance.py``): the float64 forward pass
agrees with onnxruntime (float32) within ``rtol = 1e-4`` and ``atol = 1e-5 * output
scale``; the local linear model is exact to ``1e-9 * scale``.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..bbp import bbp
from ..onnx.loader import strip_final_softmax, topological_order
from ..onnx.registry import NOT_PIECEWISE_LINEAR
from ..onnx.runtime import RuntimeSession
from ..tolerance import TOLERANCE, forward_error

__all__ = ["nonlinear_nodes", "onnxruntime_logits", "verify"]


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


def verify(model, net, x, rules=("sign",), temperature=1.0):
    """Forward vs onnxruntime, the local linear model and BBp completeness on ``x``.

    Returns
    -------
    dict
        ``forward_error`` (multiple of SPEC's tolerance; <= 1 passes), ``linear_error``
        (relative; <= 1e-9 passes), ``bbp_error`` per rule (relative, worst of SPEC 3's
        identities), ``ok``.
    """
    x = np.asarray(x, np.float32).astype(np.float64)
    ref = onnxruntime_logits(model, net, x)
    ours = net.forward(x)
    lin = net.linearize(x)
    report = {"n_inputs": int(len(x)), "forward_error": forward_error(ours, ref),
              "forward_max_abs": float(np.abs(ours - ref).max(initial=0.0)),
              "linear_error": lin.check(), "bbp_error": {}}
    for rule in rules:
        att = bbp(net, x, rule=rule, temperature=temperature)
        report["bbp_error"][rule] = float(att.completeness().worst)
    report["ok"] = bool(report["forward_error"] <= 1 and report["linear_error"] <= TOLERANCE
                        and all(e <= TOLERANCE for e in report["bbp_error"].values()))
    return report
