"""Converters for Conv and ConvTranspose: window matrices (kernel and geometry; see
``refbbp/network/window.py``), unrolled to CSR only where the input is not a plain grid
of one node or ``load(..., storage="csr")`` asks for it. ``conv_matrix`` and
``conv_transpose_matrix`` are the direct CSR constructions, kept as independent
references for the tests.

For one group, the column pattern of every output position is the same whatever the
output channel: a table ``(output position, input channel x kernel offset)`` of input
indices with a validity mask. Each output channel's rows are that table shifted to its
group, valued by its own kernel, so the CSR arrays come out row by row with sorted
columns and no sort. Kernel entries that are zero stay structural non-zeros (the
receptive field; SPEC section 3.6).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..network.window import WindowMatrix, window_table
from .builder import Var
from .registry import converter
from .windows import geometry, windows

__all__ = ["conv_matrix", "conv_transpose_matrix"]

INT32_MAX = np.iinfo(np.int32).max


def _attrs(node, w, n_spatial):
    a = node.attrs
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    if list(kernel) != list(w.shape[2:]):
        raise node.unsupported(f"kernel_shape {kernel} disagrees with the weights {w.shape}")
    strides = list(a.get("strides", [1] * n_spatial))
    dilations = list(a.get("dilations", [1] * n_spatial))
    return kernel, strides, dilations, int(a.get("group", 1))


def conv_matrix(w, spatial, geom, strides, dilations, group, reserve=None):
    """The CSR matrix of a convolution over a (C, *spatial) input.

    Parameters
    ----------
    w : ndarray, shape (M, C // group, *kernel)
    spatial : tuple of int
    geom : SpatialGeometry
    reserve : callable(nbytes), optional
        Called with the size of the CSR arrays before they are allocated.

    Returns
    -------
    csr_array, shape (M * prod(out), C * prod(spatial))
    """
    m, cg = w.shape[:2]
    kernel = w.shape[2:]
    s_prod, o_prod, k_prod = int(np.prod(spatial)), int(np.prod(geom.out)), int(np.prod(kernel))
    pos, _ = windows(spatial, kernel, strides, dilations, geom)          # (O, K)
    valid = pos >= 0
    # Template over (output position, input channel in group, kernel offset).
    template = (np.arange(cg)[None, :, None] * s_prod + pos[:, None, :])  # (O, Cg, K)
    mask = np.broadcast_to(valid[:, None, :], template.shape)
    nnz_row_pattern = int(mask.sum())
    nnz = m * nnz_row_pattern
    n_rows, n_cols = m * o_prod, group * cg * s_prod
    if reserve is not None:
        reserve(nnz * 12 + (n_rows + 1) * 4)
    if nnz > INT32_MAX or n_cols > INT32_MAX:
        raise ValueError(f"convolution with {nnz:,} non-zeros exceeds int32 CSR indices")
    cols = template[mask].astype(np.int32)                                 # (nnz_pattern,)
    m_per_group = m // group
    offsets = (np.arange(m) // m_per_group).astype(np.int32) * (cg * s_prod)
    indices = (cols[None, :] + offsets[:, None]).ravel()
    data = np.broadcast_to(w.reshape(m, 1, cg, k_prod), (m, o_prod, cg, k_prod))[
        :, mask].ravel()
    counts = np.tile(mask.reshape(o_prod, -1).sum(1), m)
    indptr = np.zeros(n_rows + 1, np.int32)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_array((data.astype(np.float64), indices, indptr), shape=(n_rows, n_cols))


def _operands(node, ins):
    """``x``, the float64 weights and bias (or ``None``) and the attributes of a Conv or
    ConvTranspose; only ``x`` may depend on the input."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 and ins[2] is not None else None
    if not isinstance(x, Var) or isinstance(w, Var) or isinstance(bias, Var):
        raise node.not_piecewise_linear(
            f"a {node.op_type} whose weights or bias depend on the input")
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise node.unsupported(f"expected an input of shape (1, C, *spatial), got {x.shape}")
    w = np.asarray(w, np.float64)
    bias = None if bias is None else np.asarray(bias, np.float64)
    return (x, w, bias) + _attrs(node, w, len(x.shape) - 2)


def grid_strides(channels, spatial):
    """Column steps of a C-order ``(channels, *spatial)`` grid: one channel, then one
    position along each spatial axis."""
    steps = [int(np.prod(spatial[a + 1:], dtype=np.int64)) for a in range(len(spatial))]
    return [int(np.prod(spatial, dtype=np.int64))] + steps


@converter("Conv", first=1)
def convert_conv(b, node, ins):
    x, w, bias, kernel, strides, dilations, group = _operands(node, ins)
    c, spatial = x.shape[1], x.shape[2:]
    if c % group or w.shape[0] % group or w.shape[1] * group != c:
        raise node.unsupported(f"group={group} does not fit {c} input channels and weights "
                               f"of shape {w.shape}")
    geom = geometry(node, spatial, kernel, strides, dilations)
    tables = [window_table(o, k, st, d, pb, s) for o, k, st, d, pb, s
              in zip(geom.out, kernel, strides, dilations, geom.pads_begin, spatial)]
    wm = WindowMatrix(w, group, tables, spatial, grid_strides(c, spatial), 0, x.size)
    out_shape = (1, w.shape[0]) + geom.out
    bvec = np.zeros(w.shape[0]) if bias is None else bias
    return [b.window(x, wm, np.repeat(bvec, int(np.prod(geom.out))), out_shape, "Conv",
                     node.name, foldable=True)]


def conv_transpose_matrix(w, spatial, out, pads_begin, strides, dilations, group, reserve=None):
    """The CSR matrix of a transposed convolution: input ``(c, i)`` adds
    ``w[c, m, k]`` to output ``(m, i * stride + k * dilation - pad_begin)``.

    Parameters
    ----------
    w : ndarray, shape (C, M // group, *kernel)

    Returns
    -------
    csr_array, shape (M * prod(out), C * prod(spatial))
    """
    c, mg = w.shape[:2]
    kernel = w.shape[2:]
    # Built as the transpose of a conv-like pattern: rows are input positions.
    n = len(spatial)
    flat = np.zeros((1,) * (2 * n), np.int64)
    valid = np.ones_like(flat, bool)
    for ax in range(n):
        pos = (np.arange(spatial[ax])[:, None] * strides[ax]
               + np.arange(kernel[ax])[None, :] * dilations[ax] - pads_begin[ax])
        shape = [1] * (2 * n)
        shape[ax], shape[n + ax] = spatial[ax], kernel[ax]
        pos = pos.reshape(shape)
        flat = flat * out[ax] + pos
        valid = valid & (pos >= 0) & (pos < out[ax])
    s_prod, o_prod, k_prod = int(np.prod(spatial)), int(np.prod(out)), int(np.prod(kernel))
    flat = flat.reshape(s_prod, k_prod)
    valid = valid.reshape(s_prod, k_prod)
    nnz = int(valid.sum()) * c * mg
    if reserve is not None:
        reserve(2 * nnz * 12)
    cin = np.arange(c)
    g = cin // (c // group)
    # entries over (c, i, m_local, k)
    rows = ((g[:, None, None, None] * mg + np.arange(mg)[None, None, :, None]) * o_prod
            + flat[None, :, None, :])
    cols = np.broadcast_to((cin[:, None] * s_prod + np.arange(s_prod)[None, :])[:, :, None, None],
                           rows.shape)
    data = np.broadcast_to(w.reshape(c, 1, mg, k_prod), rows.shape)
    mask = np.broadcast_to(valid[None, :, None, :], rows.shape)
    mt = sp.csr_array((data[mask].astype(np.float64), (cols[mask], rows[mask])),
                      shape=(c * s_prod, group * mg * o_prod))
    return mt.T.tocsr()


@converter("ConvTranspose", first=1)
def convert_conv_transpose(b, node, ins):
    x, w, bias, kernel, strides, dilations, group = _operands(node, ins)
    c, spatial = x.shape[1], x.shape[2:]
    n = len(spatial)
    if w.shape[0] != c or c % group:
        raise node.unsupported(f"weights {w.shape} do not fit {c} input channels, group={group}")
    a = node.attrs
    out_pad = list(a.get("output_padding", [0] * n))
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    full = [st * (s - 1) + op + e for st, s, op, e in zip(strides, spatial, out_pad, extent)]
    auto_pad = a.get("auto_pad", "NOTSET")
    if "output_shape" in a:
        # ONNX: the extra padding of an odd total goes to the end for SAME_UPPER, to the
        # beginning otherwise (NOTSET and SAME_LOWER alike).
        out = list(a["output_shape"])[-n:]
        total = [f - o for f, o in zip(full, out)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        if min(total) < 0:
            raise node.unsupported(
                f"output_shape {out} is larger than the full transposed convolution {full} "
                f"(negative padding)")
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [s * st for s, st in zip(spatial, strides)]
        total = [f - o for f, o in zip(full, out)]
        begin = [t - t // 2 if auto_pad == "SAME_LOWER" else t // 2 for t in total]
    else:
        pads = list(a.get("pads", [0] * (2 * n))) if auto_pad != "VALID" else [0] * (2 * n)
        begin = pads[:n]
        out = [f - pads[i] - pads[i + n] for i, f in enumerate(full)]
    if min(out) <= 0:
        raise node.unsupported(f"output spatial shape {out} is empty")
    wm = conv_transpose_window(w, spatial, out, begin, strides, dilations, group)
    m = w.shape[1] * group
    out_shape = (1, m) + tuple(out)
    bvec = np.zeros(m) if bias is None else bias
    return [b.window(x, wm, np.repeat(bvec, int(np.prod(out))), out_shape, "ConvTranspose",
                     node.name, foldable=True)]


def conv_transpose_window(w, spatial, out, pads_begin, strides, dilations, group):
    """The window matrix of a transposed convolution over a C-order ``(C, *spatial)``
    input: output ``(m, o)`` reads every input ``(c, i)`` of its group with
    ``i * stride + k * dilation - pad_begin = o``, weighted ``w[c, m_local, k]``.

    Parameters
    ----------
    w : ndarray, shape (C, M // group, *kernel)

    Returns
    -------
    WindowMatrix, shape (M * prod(out), C * prod(spatial))
    """
    c, mg = w.shape[:2]
    kernel = w.shape[2:]
    cg = c // group
    # kernel[m, c_local, k] = w[g * cg + c_local, m_local, k] for m = g * mg + m_local
    rows = np.swapaxes(w.reshape((group, cg, mg) + kernel), 1, 2).reshape(
        (group * mg, cg) + kernel)
    tables = [window_table(o, k, st, d, pb, s, transposed=True) for o, k, st, d, pb, s
              in zip(out, kernel, strides, dilations, pads_begin, spatial)]
    return WindowMatrix(rows, group, tables, spatial, grid_strides(c, spatial), 0,
                        c * int(np.prod(spatial, dtype=np.int64)))


