"""Converters for elementwise piecewise-linear activations (SPEC section 1): Relu,
LeakyRelu, PRelu, Clip, Abs, HardSigmoid, Shrink, ThresholdedRelu, Sign, and Max/Min of
one input-dependent tensor with constants.

Each is an activation given by breakpoints, slopes and offsets, shared by every element
or per element (:func:`_activation`); the builder attaches it to the affine node that
produces the tensor, or puts it on a diagonal node of its own. HardSigmoid is a Clip of
an elementwise affine map, which folds like an Add/Mul written out.

Pieces are left-open and right-closed, so at a breakpoint the left piece applies. Where
onnxruntime takes the right piece's value at a jump (Shrink at ``x = -lambd``: 0, not
``x + bias``), the breakpoint is the next float64 below it: the pieces are then
``x < t`` and ``x >= t`` exactly, for every float64 ``x``.
"""

from __future__ import annotations

import numpy as np

from ..network.piecewise import PiecewiseLinear
from .builder import Var
from .elementwise import broadcast
from .maxnodes import max_min_of_tensors
from .pool import POOL_ATTRS, reduce_axes, reduce_node, sum_pool
from .registry import converter

FLOAT_LIMIT = 3.4e38  # ONNX's default Clip bounds are float32's lowest and max


def _activation(b, node, x, breaks, slopes, offsets, name=None):
    """``psi(x)`` elementwise, ``psi`` given by its pieces (SPEC section 1).

    Parameters
    ----------
    b : Builder
    node : OnnxNode
    x : Var
        The input-dependent tensor (anything else is refused).
    breaks : array_like, shape (K-1,) or (x.size, K-1)
        Breakpoints, the same for every element (1-D) or per element in ``x``'s
        C order (2-D).
    slopes, offsets : array_like, shape (K,) or (x.size, K)
        ``c_k`` and ``d_k`` of each piece, likewise.
    name : str, optional
        The activation's name; default the node's op.

    Returns
    -------
    Var
        A view of the node carrying the activation (the one producing ``x`` when the
        canonical form allows, else a new diagonal node).
    """
    x = _variable(node, x)
    act = PiecewiseLinear.uniform(name or node.op_type, x.size, breaks, slopes, offsets)
    return b.activate(x, act, node.name)


@converter("Relu", first=6)
def convert_relu(b, node, ins):
    return [_activation(b, node, ins[0], [0.0], [0.0, 1.0], [0.0, 0.0])]


@converter("LeakyRelu", first=6, attrs=("alpha",))
def convert_leaky_relu(b, node, ins):
    a = node.float_attr("alpha", 0.01)
    return [_activation(b, node, ins[0], [0.0], [a, 1.0], [0.0, 0.0])]


@converter("PRelu", first=7)
def convert_prelu(b, node, ins):
    x, slope = ins
    x = _variable(node, x)
    if isinstance(slope, Var):
        raise node.not_piecewise_linear("the slope depends on the input")
    try:
        s = np.broadcast_to(np.asarray(slope, np.float64), x.shape).ravel()
    except ValueError:
        raise node.unsupported(f"slope of shape {np.shape(slope)} does not broadcast to "
                               f"the input shape {x.shape}") from None
    slopes = np.stack([s, np.ones_like(s)], axis=1)
    return [_activation(b, node, x, [0.0], slopes, [0.0, 0.0])]


@converter("Abs", first=6)
def convert_abs(b, node, ins):
    # At 0 the left piece: c = -1 (SPEC section 1).
    return [_activation(b, node, ins[0], [0.0], [-1.0, 1.0], [0.0, 0.0])]


@converter("ReduceL1", first=1, last=13, attrs=("axes", "keepdims"))
def convert_reduce_l1_axes_attribute(b, node, ins):
    return [_reduce_l1(b, node, ins, axes_from_input=False)]


@converter("ReduceL1", first=18, attrs=("keepdims", "noop_with_empty_axes"))
def convert_reduce_l1(b, node, ins):
    return [_reduce_l1(b, node, ins, axes_from_input=True)]


def _reduce_l1(b, node, ins, axes_from_input):
    """ReduceL1 is the sum of ``|x|`` over the axes: Abs (at 0 the left piece, SPEC
    section 1) on the node producing ``x`` or a diagonal node, then a sum node."""
    axes = reduce_axes(node, ins, axes_from_input)
    if axes is None:
        raise node.unsupported("noop_with_empty_axes=1 with no axes (what the identity "
                               "of an L1 norm means is not defined by ONNX)")
    a = _activation(b, node, ins[0], [0.0], [-1.0, 1.0], [0.0, 0.0], name="Abs")
    return reduce_node(b, node, a, axes, node.flag_attr("keepdims", 1), mean=False)


@converter("LpPool", first=2, attrs=POOL_ATTRS + ("p",))
def convert_lp_pool(b, node, ins):
    """LpPool with p = 1 is the window sums of ``|x|`` (Abs, then a window matrix of
    ones); any other p is a p-norm, not piecewise linear."""
    p = node.int_attr("p", 2)
    if p != 1:
        raise node.not_piecewise_linear(f"p = {p}: the window's {p}-norm is not piecewise "
                                        f"linear (only p = 1, a sum of absolute values, is)")
    a = _activation(b, node, ins[0], [0.0], [-1.0, 1.0], [0.0, 0.0], name="Abs")
    return [sum_pool(b, node, a)]


@converter("ThresholdedRelu", first=10, attrs=("alpha",))
def convert_thresholded_relu(b, node, ins):
    # onnxruntime: x > alpha ? x : 0, so x = alpha is on the left piece (0).
    a = node.float_attr("alpha", 1.0)
    return [_activation(b, node, ins[0], [a], [0.0, 1.0], [0.0, 0.0])]


@converter("Sign", first=9)
def convert_sign(b, node, ins):
    # Three constant pieces, -1 | 0 | 1: sign(0) = 0 is the middle piece (-tiny, 0], its
    # left breakpoint the float64 below 0 (as for Shrink), so x < 0 gives -1 exactly.
    tiny = np.nextafter(0.0, -1.0)
    return [_activation(b, node, ins[0], [tiny, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0])]


@converter("Shrink", first=9, attrs=("bias", "lambd"))
def convert_shrink(b, node, ins):
    # onnxruntime: x < -lambd ? x + bias : (x > lambd ? x - bias : 0). The first piece
    # is open on the right: its breakpoint is the float64 below -lambd.
    bias = node.float_attr("bias", 0.0)
    lambd = node.float_attr("lambd", 0.5)
    below = float(np.nextafter(-lambd, -np.inf))
    if lambd >= 0:
        breaks, slopes, offsets = [below, lambd], [1.0, 0.0, 1.0], [bias, 0.0, -bias]
    else:  # every x >= -lambd > lambd takes x - bias: no zero piece
        breaks, slopes, offsets = [below], [1.0, 1.0], [bias, -bias]
    return [_activation(b, node, ins[0], breaks, slopes, offsets)]


@converter("HardSigmoid", first=6, attrs=("alpha", "beta"))
def convert_hard_sigmoid(b, node, ins):
    # max(0, min(1, alpha x + beta)): the affine map folds like Mul/Add written out,
    # then a Clip(0, 1).
    alpha, beta = node.float_attr("alpha", 0.2), node.float_attr("beta", 0.5)
    y = b.elementwise(_variable(node, ins[0]), alpha, beta, node.op_type, node.name)
    return [_clip(b, node, y, 0.0, 1.0, "HardSigmoid")]


@converter("Clip", first=6, last=6, attrs=("min", "max"))
def convert_clip_attributes(b, node, ins):
    lo = node.float_attr("min", -np.inf, finite=False)
    return [_clip(b, node, ins[0], lo, node.float_attr("max", np.inf, finite=False))]


@converter("Clip", first=11)
def convert_clip_inputs(b, node, ins):
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = ins[i] if len(ins) > i else None
        if isinstance(v, Var):
            raise node.not_piecewise_linear(f"the Clip bound input {i} depends on the input")
        if v is not None and np.size(v) != 1:
            raise node.malformed(f"input {i} ({'min' if i == 1 else 'max'}) has shape "
                                 f"{np.shape(v)}; expected a scalar")
        bounds.append(default if v is None else float(np.asarray(v, np.float64).ravel()[0]))
    return [_clip(b, node, ins[0], *bounds)]


def _clip(b, node, x, lo, hi, name="Clip"):
    """Clip as pieces ``c=0,d=lo | c=1,d=0 | c=0,d=hi`` over its finite bounds."""
    x = _variable(node, x)
    lo = -np.inf if lo <= -FLOAT_LIMIT else float(lo)
    hi = np.inf if hi >= FLOAT_LIMIT else float(hi)
    if np.isnan(lo) or np.isnan(hi):
        raise node.unsupported("a Clip bound is NaN")
    if lo > hi:  # ONNX: min(max(x, lo), hi) is hi everywhere
        breaks, slopes, offsets = [], [0.0], [hi]
    else:
        breaks, slopes, offsets = [], [1.0], [0.0]
        if np.isfinite(lo):
            breaks, slopes, offsets = [lo], [0.0, 1.0], [lo, 0.0]
        if np.isfinite(hi):
            breaks, slopes, offsets = breaks + [hi], slopes + [0.0], offsets + [hi]
    if not breaks and slopes == [1.0]:
        return x
    return _activation(b, node, x, breaks, slopes, offsets, name)


@converter("Max", first=6)
def convert_max(b, node, ins):
    return [_max_min(b, node, ins)]


@converter("Min", first=6)
def convert_min(b, node, ins):
    return [_max_min(b, node, ins)]


def _max_min(b, node, ins):
    """Max/Min of one input-dependent tensor and constants: an activation with one
    breakpoint per element, the constants' max (min) ``C`` broadcast to the output.

    Max: ``c=0,d=C | c=1,d=0``; Min: ``c=1,d=0 | c=0,d=C``; at ``x = C`` the left piece
    (both give ``C``). An element whose ``C`` cannot win (-inf for Max, +inf for Min)
    is the identity. Several input-dependent operands make a max node
    (:func:`refbbp.onnx.maxnodes.max_min_of_tensors`).
    """
    variables = [v for v in ins if isinstance(v, Var)]
    if len(variables) != 1:         # a max node over every operand (SPEC section 1)
        return max_min_of_tensors(b, node, ins)[0]
    x = variables[0]
    consts = [np.asarray(v, np.float64) for v in ins if not isinstance(v, Var)]
    shapes = [x.shape] + [c.shape for c in consts]
    try:
        shape = np.broadcast_shapes(*shapes)
    except ValueError:
        raise node.malformed(f"input shapes {shapes} do not broadcast") from None
    if node.opset < 8 and any(s != shape for s in shapes):
        raise node.malformed(f"input shapes {shapes} differ; {node.op_type} before opset 8 "
                             f"does not broadcast")
    x = broadcast(x, shape)
    if not consts:
        return x
    is_max = node.op_type == "Max"
    c = (np.maximum if is_max else np.minimum).reduce(
        [np.broadcast_to(v, shape) for v in consts]).ravel()
    if np.isnan(c).any():
        raise node.unsupported("a constant operand contains NaN")
    wins_always = np.inf if is_max else -np.inf
    if np.any(c == wins_always):
        raise node.unsupported(f"a constant operand is {wins_always} at some element, so "
                               f"the output is {wins_always} there; expected finite values")
    if c.size and np.all(c == c[0]):              # one breakpoint for every element
        c = c[:1]
    never = ~np.isfinite(c)                       # -inf for Max, +inf for Min
    if never.all():
        return x
    breaks = np.where(never, 0.0, c)[:, None]
    const, ones = np.where(never, 0.0, c), np.ones(c.size)
    flat = np.where(never, 1.0, 0.0)              # the constant's piece (identity if never)
    slopes = np.stack([flat, ones] if is_max else [ones, flat], axis=1)
    offsets = np.stack([const, 0 * ones] if is_max else [0 * ones, const], axis=1)
    if c.size == 1:
        breaks, slopes, offsets = breaks[0], slopes[0], offsets[0]
    return _activation(b, node, x, breaks, slopes, offsets)


def _variable(node, x):
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    return x
