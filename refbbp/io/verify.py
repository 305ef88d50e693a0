"""Checks of a loaded network against onnxruntime and against SPEC's identities.

Tolerances are SPEC section 2's: the float64 forward pass agrees with onnxruntime (float32)
within ``rtol = 1e-4`` and ``atol = 1e-5 * output scale``; the local linear model is exact
to ``1e-9 * scale``.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..bbp import bbp
from ..onnx.loader import strip_final_softmax, topological_order
from ..onnx.registry import NOT_PIECEWISE_LINEAR

__all__ = ["onnxruntime_logits", "forward_error", "nonlinear_nodes", "verify",
           "FORWARD_RTOL", "FORWARD_ATOL", "LINEAR_TOL"]

FORWARD_RTOL = 1e-4
FORWARD_ATOL = 1e-5  # times the output scale
LINEAR_TOL = 1e-9


def _proto(model):
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def onnxruntime_logits(model, net, x):
    """The logits ``net`` explains, computed by onnxruntime (float32) on ``x``.

    The tensor ``net.output_name`` is added as a graph output when it is not one (a final
    Softmax was dropped), so the comparison is on logits.

    Parameters
    ----------
    model : path or onnx.ModelProto
    net : Network
    x : ndarray, shape (n, *net.input_shape)

    Returns
    -------
    ndarray, shape (n, n_outputs), float64
    """
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(_proto(model))
    outs = [o.name for o in proto.graph.output]
    if net.output_name not in outs:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(
            net.output_name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    vin = next(i for i in sess.get_inputs() if i.name == net.input_name)
    x32 = np.asarray(x, np.float32)
    if net.batch_axis:
        lead = vin.shape[0] if vin.shape else None
        if isinstance(lead, int):  # a fixed batch dimension: one input at a time
            res = [sess.run([net.output_name], {vin.name: xi[None]})[0] for xi in x32]
        else:
            res = [sess.run([net.output_name], {vin.name: x32})[0]]
    else:
        res = [sess.run([net.output_name], {vin.name: xi})[0][None] for xi in x32]
    return np.concatenate([r.reshape(r.shape[0] if net.batch_axis else 1, -1) for r in res]
                          ).astype(np.float64)


def forward_error(ours, ref):
    """``max |ours - ref| / (atol * scale + rtol * |ref|)``: at most 1 passes SPEC 2."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(np.abs(ref).max(initial=0.0), np.finfo(np.float32).tiny)
    bound = FORWARD_ATOL * scale + FORWARD_RTOL * np.abs(ref)
    return float(np.max(np.abs(ours - ref) / bound, initial=0.0))


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
    report["ok"] = bool(report["forward_error"] <= 1 and report["linear_error"] <= LINEAR_TOL
                        and all(e <= LINEAR_TOL for e in report["bbp_error"].values()))
    return report
