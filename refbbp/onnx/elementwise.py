"""Converters for elementwise affine ops: Add, Sub, Mul, Div, Neg, Sum, and
BatchNormalization (an elementwise affine map per channel).

With one constant side they become ``z = scale * t + shift`` and fold into the
producing node when the canonical form allows (``builder.Builder.elementwise``).
Add/Sub/Sum of input-dependent tensors make an affine node of several inputs
(residual connections). Mul/Div of two input-dependent tensors are not piecewise linear.
"""

from __future__ import annotations

import numpy as np

from .builder import Var, diagonal
from .registry import converter

__all__ = ["broadcast", "batchnorm_scale_shift"]


def broadcast(var, shape):
    """``var`` broadcast to ``shape`` (ONNX multidirectional broadcasting = NumPy's)."""
    if var.shape == tuple(shape):
        return var
    ids = np.broadcast_to(np.arange(var.size).reshape(var.shape), shape)
    return var.select(ids, shape)


def _out_shape(node, *shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise node.unsupported(f"input shapes {shapes} do not broadcast") from None


def _sum(b, node, ins, signs):
    """``sum_j sign_j * t_j`` of tensors and constants: an affine node with one matrix
    per input-dependent tensor (a residual connection)."""
    shape = _out_shape(node, *[np.shape(v) if not isinstance(v, Var) else v.shape for v in ins])
    parts, bias = [], np.zeros(shape)
    for v, s in zip(ins, signs):
        if isinstance(v, Var):
            parts.append((broadcast(v, shape), s))
        else:
            bias = bias + s * np.asarray(v, np.float64)
    if len(parts) == 1:
        (v, s), = parts
        return b.elementwise(v, s, bias.ravel(), node.op_type, node.name)
    n = int(np.prod(shape, dtype=np.int64))
    mats = [(v, diagonal(np.full(n, float(s)))) for v, s in parts]
    return b.affine(mats, bias.ravel(), shape, node.op_type, node.name)


@converter("Add", first=7)
def convert_add(b, node, ins):
    return [_sum(b, node, ins, [1.0, 1.0])]


@converter("Sub", first=7)
def convert_sub(b, node, ins):
    return [_sum(b, node, ins, [1.0, -1.0])]


@converter("Sum", first=6)
def convert_sum(b, node, ins):
    return [_sum(b, node, ins, [1.0] * len(ins))]


@converter("Neg", first=6)
def convert_neg(b, node, ins):
    return [b.elementwise(ins[0], -1.0, 0.0, node.op_type, node.name)]


@converter("Mul", first=7)
def convert_mul(b, node, ins):
    x, c = _one_constant(node, ins)
    shape = _out_shape(node, x.shape, np.shape(c))
    scale = np.broadcast_to(np.asarray(c, np.float64), shape).ravel()
    return [b.elementwise(broadcast(x, shape), scale, 0.0, node.op_type, node.name)]


@converter("Div", first=7)
def convert_div(b, node, ins):
    if isinstance(ins[1], Var):
        raise node.not_piecewise_linear("division by an input-dependent tensor")
    x, c = ins
    shape = _out_shape(node, x.shape, np.shape(c))
    c = np.broadcast_to(np.asarray(c, np.float64), shape).ravel()
    if np.any(c == 0):
        raise node.unsupported("division by a constant that contains zeros")
    return [b.elementwise(broadcast(x, shape), 1.0 / c, 0.0, node.op_type, node.name)]


def _one_constant(node, ins):
    a, c = ins
    if isinstance(a, Var) and isinstance(c, Var):
        raise node.not_piecewise_linear(
            f"{node.op_type} of two input-dependent tensors is not piecewise linear")
    return (a, c) if isinstance(a, Var) else (c, a)


def batchnorm_scale_shift(gamma, beta, mean, var, eps):
    """BatchNormalization at inference as ``scale * x + shift`` per channel:
    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``. Folded into a
    matrix op ``W x + b`` this gives ``W' = W * scale``, ``b' = (b - mean) * scale + beta``.
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return scale, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale


# momentum only updates running statistics in training mode, which is refused.
@converter("BatchNormalization", first=7,
           attrs=("epsilon", "momentum", "spatial", "training_mode"))
def convert_batchnorm(b, node, ins):
    x = ins[0]
    if node.flag_attr("training_mode") or len([o for o in node.proto.output if o]) > 1:
        raise node.unsupported("training mode (batch statistics) is not an inference op")
    if not node.flag_attr("spatial", 1):
        raise node.unsupported("spatial=0 (per-element statistics) is not supported")
    node.float_attr("momentum", 0.9)
    eps = node.float_attr("epsilon", 1e-5)
    params = ins[1:5]
    if any(isinstance(p, Var) for p in params):
        raise node.not_piecewise_linear("BatchNormalization parameters depend on the input")
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    channels = x.shape[1] if len(x.shape) > 1 else None
    for i, (p, what) in enumerate(zip(params, ("scale", "B", "mean", "var")), start=1):
        if channels is None or np.shape(p) != (channels,):
            raise node.unsupported(
                f"expected {channels if channels is not None else '?'} channel parameters "
                f"on axis 1 of the input {x.shape}, got input {i} ({what}) of shape "
                f"{np.shape(p)}")
    if np.any(~(np.asarray(params[3], np.float64) + eps > 0)):
        raise node.unsupported(f"var + epsilon is not positive for every channel (epsilon "
                               f"{eps}): the normalisation divides by its square root")
    scale, shift = batchnorm_scale_shift(*params, eps)
    per_channel = (1, -1) + (1,) * (len(x.shape) - 2)
    s = np.broadcast_to(scale.reshape(per_channel), x.shape).ravel()
    t = np.broadcast_to(shift.reshape(per_channel), x.shape).ravel()
    return [b.elementwise(x, s, t, node.op_type, node.name)]
