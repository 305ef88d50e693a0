"""Sliding windows over N-d spatial grids, shared by convolutions and pooling.

Everything is built by broadcasting small per-axis tables (output position x kernel
offset); there is no loop over elements and no meshgrid over the whole index space.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SpatialGeometry", "geometry", "windows"]


class SpatialGeometry:
    """Output size and begin-padding of a sliding window on each spatial axis."""

    def __init__(self, out, pads_begin):
        self.out = tuple(int(o) for o in out)
        self.pads_begin = tuple(int(p) for p in pads_begin)


def geometry(node, spatial, kernel, strides, dilations, ceil_mode=False):
    """Resolve ``pads``/``auto_pad``/``ceil_mode`` to output sizes (ONNX semantics)."""
    attrs = node.attrs
    n = len(spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(s / st) for s, st in zip(spatial, strides)]
        total = [max(0, (o - 1) * st + e - s) for o, st, e, s in zip(out, strides, extent, spatial)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        return SpatialGeometry(out, begin)
    if auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad == "NOTSET":
        pads = list(attrs.get("pads", [0] * (2 * n)))
    else:
        raise node.unsupported(f"auto_pad={auto_pad!r}")
    if len(pads) != 2 * n:
        raise node.unsupported(f"pads {pads} has {len(pads)} values, expected {2 * n}")
    out = []
    for ax in range(n):
        span = spatial[ax] + pads[ax] + pads[ax + n] - extent[ax]
        if span < 0:
            raise node.unsupported(
                f"the kernel (extent {extent[ax]}) is larger than the padded input "
                f"({spatial[ax] + pads[ax] + pads[ax + n]}) on spatial axis {ax}")
        o = (math.ceil if ceil_mode else math.floor)(span / strides[ax]) + 1
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
