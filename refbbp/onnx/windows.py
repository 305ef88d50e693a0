"""Sliding windows over N-d spatial grids, shared by convolutions and pooling.

Everything is built by broadcasting small per-axis tables (output position x kernel
offset); there is no loop over elements and no meshgrid over the whole index space.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AUTO_PADS", "SpatialGeometry", "geometry", "padding", "same_pads",
           "window_attrs", "windows"]


#: The values of ``auto_pad`` ONNX defines.
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


class SpatialGeometry:
    """Output size and begin-padding of a sliding window on each spatial axis, and the
    end-padding where ``auto_pad`` implies it (``None`` otherwise)."""

    def __init__(self, out, pads_begin, pads_end=None):
        self.out = tuple(int(o) for o in out)
        self.pads_begin = tuple(int(p) for p in pads_begin)
        self.pads_end = None if pads_end is None else tuple(int(p) for p in pads_end)


def window_attrs(node, n, kernel=None):
    """``kernel_shape``, ``strides`` and ``dilations`` of a convolution or pooling node
    over ``n`` spatial axes: ``n`` ints ``>= 1`` each (``kernel``: the default kernel,
    e.g. the weights' shape; ``None``: the attribute is required)."""
    what = f"one per spatial axis of the input, which has {n}"
    kernel = node.ints_attr("kernel_shape", kernel, length=n, min=1, what=what)
    if kernel is None:
        raise node.malformed("required attribute 'kernel_shape' is missing")
    strides = node.ints_attr("strides", [1] * n, length=n, min=1, what=what)
    dilations = node.ints_attr("dilations", [1] * n, length=n, min=1, what=what)
    return kernel, strides, dilations


def padding(node, n):
    """``auto_pad`` (one of :data:`AUTO_PADS`) and the explicit ``pads`` (``2 n`` ints
    ``>= 0``) of a node over ``n`` spatial axes. ONNX allows explicit pads only with
    ``auto_pad=NOTSET``; non-zero pads with any other ``auto_pad`` are refused (they
    would be ignored)."""
    auto_pad = node.str_attr("auto_pad", "NOTSET", AUTO_PADS)
    pads = node.ints_attr("pads", [0] * (2 * n), length=2 * n, min=0,
                          what=f"a begin and an end for each of the {n} spatial axes")
    if auto_pad != "NOTSET" and any(pads):
        raise node.malformed(
            f"attribute 'pads' is {pads} with auto_pad={auto_pad!r}; ONNX allows explicit "
            f"pads only with auto_pad='NOTSET'")
    return auto_pad, pads


def _trunc_div(a, b):
    """``a / b`` rounded towards zero (C integer division), for ``b > 0``."""
    return a // b if a >= 0 else -((-a) // b)


def same_pads(spatial, kernel, strides, dilations, auto_pad, conv=False):
    """Output size and ``(begin, end)`` padding per axis of ``auto_pad=SAME_UPPER`` or
    ``SAME_LOWER``, exactly as onnxruntime computes them.

    The output has ``ceil(input / stride)`` positions and the padding totals
    ``(out - 1) * stride + (kernel - 1) * dilation + 1 - input``, split as ``total / 2``
    (SAME_UPPER) or ``(total + 1) / 2`` (SAME_LOWER) at the beginning, in C integer
    division (rounded towards zero). The total is negative where the kernel is smaller
    than the stride: the windows then start inside the input. onnxruntime's pooling
    uses that total as it is (the ONNX definition's formula); its convolutions
    (``conv=True``) add 1 to a negative total whenever ``(input + 2 total - kernel) /
    stride + 1``, rounded towards zero, falls short of the output size.
    """
    out, begin, end = [], [], []
    for s, k, st, d in zip(spatial, kernel, strides, dilations):
        extent = (k - 1) * d + 1
        o = -(-s // st)
        total = (o - 1) * st + extent - s
        if conv and total < 0 and _trunc_div(s + 2 * total - extent + st, st) < o:
            total += 1
        head = _trunc_div(total if auto_pad == "SAME_UPPER" else total + 1, 2)
        out.append(o)
        begin.append(head)
        end.append(total - head)
    return out, begin, end


def geometry(node, spatial, kernel, strides, dilations, ceil_mode=False, conv=False):
    """Resolve ``pads``/``auto_pad``/``ceil_mode`` to output sizes (ONNX semantics;
    SAME_UPPER / SAME_LOWER as onnxruntime pads them, :func:`same_pads`, with
    ``conv`` for convolutions)."""
    n = len(spatial)
    auto_pad, pads = padding(node, n)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return SpatialGeometry(*same_pads(spatial, kernel, strides, dilations, auto_pad, conv))
    if auto_pad == "VALID":
        pads = [0] * (2 * n)
    out = []
    for ax in range(n):
        span = spatial[ax] + pads[ax] + pads[ax + n] - extent[ax]
        if span < 0:
            raise node.unsupported(
                f"the kernel (extent {extent[ax]}) is larger than the padded input "
                f"({spatial[ax] + pads[ax] + pads[ax + n]}) on spatial axis {ax}")
        o = (-(-span // strides[ax]) if ceil_mode else span // strides[ax]) + 1
        # ceil_mode: a window that would start in the end padding is dropped.
        if ceil_mode and (o - 1) * strides[ax] >= spatial[ax] + pads[ax]:
            o -= 1
        out.append(o)
    return SpatialGeometry(out, pads[:n])


def windows(spatial, kernel, strides, dilations, geom, pad_limit=None):
    """Input positions of every (output position, kernel offset) pair.

    Parameters
    ----------
    spatial, kernel, strides, dilations : sequences of int, one per spatial axis
    geom : SpatialGeometry
    pad_limit : sequence of int, optional
        Per axis, the end of the padded input (``spatial + pad_end``); positions past
        it are reported in ``in_padded`` as False (AveragePool's divisor).

    Returns
    -------
    flat : ndarray of int64, shape (prod(out), prod(kernel))
        Flat C-order index into the spatial grid, -1 where the position is padding.
    in_padded : ndarray of bool, same shape, or None
        Whether the position lies inside the padded input.
    """
    flat = np.zeros((1,) * (2 * len(spatial)), np.int64)
    valid = np.ones_like(flat, bool)
    in_pad = np.ones_like(flat, bool)
    n = len(spatial)
    for ax in range(n):
        pos = (np.arange(geom.out[ax])[:, None] * strides[ax]
               + np.arange(kernel[ax])[None, :] * dilations[ax] - geom.pads_begin[ax])
        shape = [1] * (2 * n)
        shape[ax], shape[n + ax] = geom.out[ax], kernel[ax]
        pos = pos.reshape(shape)
        flat = flat * spatial[ax] + pos
        valid = valid & (pos >= 0) & (pos < spatial[ax])
        if pad_limit is not None:
            in_pad = in_pad & (pos < pad_limit[ax])
    n_out, n_k = int(np.prod(geom.out)), int(np.prod(kernel))
    flat = np.where(valid, flat, -1).reshape(n_out, n_k)
    return flat, (in_pad.reshape(n_out, n_k) if pad_limit is not None else None)
