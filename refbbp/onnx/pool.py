"""Converters for pooling and reductions.

MaxPool and GlobalMaxPool become max nodes (a window of candidates per output, padding
never wins). AveragePool is a window matrix (a depthwise all-ones kernel, each row weighted by
1 / its divisor); GlobalAveragePool, ReduceMean and ReduceSum are affine maps in CSR
(every input element appears once: no blow-up).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..network.window import WindowMatrix, window_table
from .builder import Var
from .conv import grid_strides
from .registry import converter
from .windows import geometry, padding, window_attrs, windows

__all__ = ["reduce_axes", "reduce_node", "reduced_shape", "reduction_matrix", "sum_pool"]


POOL_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")


def _pool_setup(node, x):
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor")
    if len(x.shape) < 3:
        raise node.unsupported(f"expected an input of shape (N, C, *spatial), got {x.shape}")
    spatial = x.shape[2:]
    kernel, strides, dilations = window_attrs(node, len(spatial))
    auto_pad, _ = padding(node, len(spatial))
    if auto_pad.startswith("SAME") and any(d != 1 for d in dilations):
        # The definition pads for the dilated kernel, so that the output has
        # ceil(input / stride) positions; onnxruntime pads for the undilated kernel and
        # gives fewer, and ONNX's reference evaluator differs from both.
        raise node.unsupported(
            f"auto_pad={auto_pad} with dilations {dilations}: the runtimes disagree on its "
            f"padding and output shape; export the pooling with explicit pads")
    geom = geometry(node, spatial, kernel, strides, dilations, node.flag_attr("ceil_mode"))
    negative = geom.pads_end is not None and min(geom.pads_begin + geom.pads_end) < 0
    if negative and not (node.op_type == "AveragePool" and node.opset >= 19):
        # A kernel smaller than the stride: onnxruntime's AveragePool-19 starts the
        # windows inside the input (as the definition's formula says); its MaxPool and
        # older AveragePool refuse the negative padding.
        raise node.unsupported(
            f"auto_pad={auto_pad} with kernel {kernel} smaller than strides {strides} on an "
            f"input of spatial shape {list(spatial)} implies negative padding (begin "
            f"{list(geom.pads_begin)}, end {list(geom.pads_end)}), which onnxruntime "
            f"refuses for {node.op_type} at opset {node.opset}; export the pooling with "
            f"explicit pads")
    return spatial, kernel, strides, dilations, geom


# storage_order only orders the Indices output, which refbbp does not produce.
@converter("MaxPool", first=1, attrs=POOL_ATTRS + ("storage_order",))
def convert_maxpool(b, node, ins):
    x = ins[0]
    spatial, kernel, strides, dilations, geom = _pool_setup(node, x)
    node.flag_attr("storage_order")
    pos, _ = windows(spatial, kernel, strides, dilations, geom)
    if np.any(np.all(pos < 0, axis=1)):
        raise node.unsupported("a pooling window lies entirely in the padding")
    channels = x.size // int(np.prod(spatial))
    s_prod = int(np.prod(spatial))
    win = np.where(pos[None] >= 0, pos[None] + (np.arange(channels) * s_prod)[:, None, None], -1)
    out_shape = x.shape[:2] + geom.out
    # The Indices output (argmax positions, an integer tensor) is not produced: the
    # loader refuses the model if anything reads it.
    return [b.max_pool(x, win.reshape(-1, pos.shape[1]), out_shape, node.name), None]


def _global_input(node, x):
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    if len(x.shape) < 3:
        raise node.unsupported(f"expected an input of shape (N, C, *spatial), got {x.shape}")
    return x


@converter("GlobalMaxPool", first=1)
def convert_global_maxpool(b, node, ins):
    x = _global_input(node, ins[0])
    s_prod = int(np.prod(x.shape[2:]))
    channels = x.size // s_prod
    win = np.arange(channels * s_prod).reshape(channels, s_prod)
    return [b.max_pool(x, win, x.shape[:2] + (1,) * (len(x.shape) - 2), node.name)]


@converter("AveragePool", first=7, attrs=POOL_ATTRS + ("count_include_pad",))
def convert_average_pool(b, node, ins):
    x = ins[0]
    spatial, kernel, strides, dilations, geom = _pool_setup(node, x)
    n = len(spatial)
    auto_pad, pads = padding(node, n)
    if auto_pad == "NOTSET":
        pad_end = [s + p for s, p in zip(spatial, pads[n:])]
    elif auto_pad == "VALID":  # no padding: ceil_mode's overhang never counts
        pad_end = list(spatial)
    else:  # SAME_*: the implied padding counts up to its end
        pad_end = [(o - 1) * st + (k - 1) * d + 1 - pb for o, st, k, d, pb
                   in zip(geom.out, strides, kernel, dilations, geom.pads_begin)]
    pos, in_pad = windows(spatial, kernel, strides, dilations, geom, pad_end)
    valid = pos >= 0
    if node.flag_attr("count_include_pad"):
        # Positions in the begin padding and up to the end padding count; ceil_mode's
        # overhang past the padded input does not.
        divisor = in_pad.sum(1)
    else:
        divisor = valid.sum(1)
    if np.any(divisor == 0):
        raise node.unsupported("a pooling window lies entirely in the padding")
    # A depthwise all-ones kernel; each row weighted 1 / its divisor.
    channels = x.size // int(np.prod(spatial))
    tables = [window_table(o, k, st, d, pb, s) for o, k, st, d, pb, s
              in zip(geom.out, kernel, strides, dilations, geom.pads_begin, spatial)]
    wm = WindowMatrix(np.ones((channels, 1) + tuple(kernel)), channels, tables, spatial,
                      grid_strides(channels, spatial), 0, x.size,
                      row_scale=np.tile(1.0 / divisor, channels))
    return [b.window(x, wm, 0.0, x.shape[:2] + geom.out, "AveragePool", node.name)]


def sum_pool(b, node, x):
    """The window sums of ``x`` (no divisor; padding adds nothing) under the node's
    pooling attributes: a window matrix with a depthwise all-ones kernel. LpPool with
    p = 1 is this of ``|x|``."""
    spatial, kernel, strides, dilations, geom = _pool_setup(node, x)
    channels = x.size // int(np.prod(spatial))
    tables = [window_table(o, k, st, d, pb, s) for o, k, st, d, pb, s
              in zip(geom.out, kernel, strides, dilations, geom.pads_begin, spatial)]
    wm = WindowMatrix(np.ones((channels, 1) + tuple(kernel)), channels, tables, spatial,
                      grid_strides(channels, spatial), 0, x.size)
    return b.window(x, wm, 0.0, x.shape[:2] + geom.out, node.op_type, node.name)


def reduction_matrix(shape, axes, mean):
    """CSR matrix of a sum (or mean) over ``axes`` of a tensor of ``shape``
    (output in C order with the reduced axes removed)."""
    axes = sorted(a % len(shape) for a in axes)
    kept = [d for i, d in enumerate(shape) if i not in axes]
    out_ids = np.arange(int(np.prod(kept))).reshape(
        [d if i not in axes else 1 for i, d in enumerate(shape)])
    rows = np.broadcast_to(out_ids, shape).ravel()
    n_in = int(np.prod(shape))
    count = n_in // max(1, int(np.prod(kept)))
    data = np.full(n_in, 1.0 / count if mean else 1.0)
    return sp.csr_array((data, (rows, np.arange(n_in))), shape=(int(np.prod(kept)), n_in))


def reduce_node(b, node, x, axes, keepdims, mean):
    """The affine node of a sum (``mean``: an average) of ``x`` over ``axes``."""
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor")
    mat = reduction_matrix(x.shape, axes, mean)
    return b.affine([(x, mat)], 0.0, reduced_shape(x.shape, axes, keepdims), node.op_type,
                    node.name)


def reduced_shape(shape, axes, keepdims):
    """The shape of a reduction of a tensor of ``shape`` over ``axes`` (in ``[0, rank)``):
    the reduced axes kept with size 1 (``keepdims``) or removed."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@converter("GlobalAveragePool", first=1)
def convert_global_average_pool(b, node, ins):
    x = _global_input(node, ins[0])
    return [reduce_node(b, node, x, list(range(2, len(x.shape))), True, mean=True)]


def reduce_axes(node, ins, axes_from_input):
    """The reduced axes, in ``[0, rank)``, sorted, or ``None`` for a no-op
    (``noop_with_empty_axes`` with no axes). Axes must lie in ``[-rank, rank - 1]`` and
    be distinct, as ONNX requires."""
    x = ins[0]
    if not isinstance(x, Var):
        raise node.unsupported("expected an input-dependent tensor as input 0")
    rank = len(x.shape)
    if axes_from_input:
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else None
        if isinstance(axes, Var):
            raise node.unsupported("input-dependent axes")
        if axes is not None:
            axes = np.asarray(axes)
            if axes.ndim > 1 or axes.dtype.kind not in "iu":
                raise node.malformed(f"input 1 (axes) has shape {axes.shape} and type "
                                     f"{axes.dtype}; expected a 1-D tensor of ints")
            axes = [int(v) for v in axes.ravel()]
    else:
        axes = node.ints_attr("axes")
    if not axes:
        if node.flag_attr("noop_with_empty_axes"):
            return None
        return list(range(rank))
    if any(not -rank <= a < rank for a in axes):
        raise node.malformed(f"axes {axes} out of range; expected axes in "
                             f"[{-rank}, {rank - 1}] for an input of rank {rank}")
    norm = sorted(a % rank for a in axes)
    if len(set(norm)) != len(norm):
        raise node.malformed(f"axes {axes} repeat an axis")
    return norm


def _convertreduce_node(b, node, ins, mean, axes_from_input):
    axes = reduce_axes(node, ins, axes_from_input)
    if axes is None:  # noop_with_empty_axes
        return [ins[0]]
    return [reduce_node(b, node, ins[0], axes, node.flag_attr("keepdims", 1), mean)]


# An axes input appears with ReduceMean-18 and ReduceSum-13; before, axes is an
# attribute and the schema (checked by the registry) allows one input only.
@converter("ReduceMean", first=1, last=13, attrs=("axes", "keepdims"))
def convert_reduce_mean_axes_attribute(b, node, ins):
    return _convertreduce_node(b, node, ins, mean=True, axes_from_input=False)


@converter("ReduceMean", first=18, attrs=("keepdims", "noop_with_empty_axes"))
def convert_reduce_mean(b, node, ins):
    return _convertreduce_node(b, node, ins, mean=True, axes_from_input=True)


@converter("ReduceSum", first=1, last=11, attrs=("axes", "keepdims"))
def convert_reduce_sum_axes_attribute(b, node, ins):
    return _convertreduce_node(b, node, ins, mean=False, axes_from_input=False)


@converter("ReduceSum", first=13, attrs=("keepdims", "noop_with_empty_axes"))
def convert_reduce_sum(b, node, ins):
    return _convertreduce_node(b, node, ins, mean=False, axes_from_input=True)
