"""Converters for piecewise-linear activations: Relu, LeakyRelu, PRelu, Clip."""

from __future__ import annotations

import numpy as np

from ..network.piecewise import PiecewiseLinear
from .builder import Var
from .registry import converter

FLOAT_LIMIT = 3.4e38  # ONNX's default Clip bounds are float32's lowest and max


@converter("Relu", first=6)
def convert_relu(b, node, ins):
    x = _variable(node, ins[0])
    act = PiecewiseLinear.uniform("Relu", x.size, [0.0], [0.0, 1.0], [0.0, 0.0])
    return [b.activate(x, act, node.name)]


@converter("LeakyRelu", first=6, attrs=("alpha",))
def convert_leaky_relu(b, node, ins):
    x = _variable(node, ins[0])
    a = node.float_attr("alpha", 0.01)
    act = PiecewiseLinear.uniform("LeakyRelu", x.size, [0.0], [a, 1.0], [0.0, 0.0])
    return [b.activate(x, act, node.name)]


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
    act = PiecewiseLinear("PRelu", np.zeros((x.size, 1)), slopes, np.zeros((x.size, 2)))
    return [b.activate(x, act, node.name)]


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


def _clip(b, node, x, lo, hi):
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
    act = PiecewiseLinear.uniform("Clip", x.size, breaks, slopes, offsets)
    return b.activate(x, act, node.name)


def _variable(node, x):
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    return x
