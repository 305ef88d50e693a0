"""Sliding windows over N-d spatial grids, shared by convolutions and pooling.

Everything is built by broadcasting small per-axis tables (output position x kernel
offset); there is no loop over elements and no meshgrid over the whole index space.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AUTO_PADS", "SpatialGeometry", "geometry", "padding", "same_pads_begin",
           "window_attrs", "windows"]


#: The values of ``auto_pad`` ONNX defines.
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


class SpatialGeometry:
    """Output size and begin-padding of a sliding window on each spatial axis."""

    def __init__(self, out, pads_begin):
        self.out = tuple(int(o) for o in out)
        self.pads_begin = tuple(int(p) for p in pads_begin)


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


def same_pads_begin(total, auto_pad):
    """Begin padding of a SAME_UPPER / SAME_LOWER axis whose padding totals ``total``,
    as onnxruntime computes it: ``total / 2`` (SAME_UPPER) or ``(total + 1) / 2``
    (SAME_LOWER) in C integer division (rounded towards zero). ``total`` is negative
    where the kernel is smaller than the stride: the windows then start inside the
    input, not at its first element."""
    num = total if auto_pad == "SAME_UPPER" else total + 1
    return num // 2 if num >= 0 else -((-num) // 2)


def geometry(node, spatial, kernel, strides, dilations, ceil_mode=False):
    """Resolve ``pads``/``auto_pad``/``ceil_mode`` to output sizes (ONNX semantics).

    SAME_UPPER / SAME_LOWER give ``ceil(input / stride)`` outputs, with a total padding
    of ``(out - 1) * stride + (kernel - 1) * dilation + 1 - input`` (not clamped at 0,
    as in the ONNX definition and onnxruntime) split by :func:`same_pads_begin`.
    """
    n = len(spatial)
    auto_pad, pads = padding(node, n)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-s // st) for s, st in zip(spatial, strides)]
        total = [(o - 1) * st + e - s for o, st, e, s in zip(out, strides, extent, spatial)]
        return SpatialGeometry(out, [same_pads_begin(t, auto_pad) for t in total])
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
