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
from .windows import geometry, padding, window_attrs, windows

__all__ = ["conv_matrix", "conv_transpose_matrix"]

INT32_MAX = np.iinfo(np.int32).max


CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _attrs(node, w, n_spatial):
    """``kernel``, ``strides``, ``dilations`` and ``group`` of a Conv or ConvTranspose
    with weights ``w`` over ``n_spatial`` axes."""
    kernel, strides, dilations = window_attrs(node, n_spatial, list(w.shape[2:]))
    if list(kernel) != list(w.shape[2:]):
        raise node.unsupported(f"kernel_shape {kernel} disagrees with the weights {w.shape}")
    return kernel, strides, dilations, node.int_attr("group", 1, min=1)


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
    ConvTranspose; only ``x`` may depend on the input. The weights have the input's rank
    (``(M, C / group, *kernel)`` or ``(C, M / group, *kernel)``); the bias, if any, is
    1-D (its length is checked by the converter)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 and ins[2] is not None else None
    if not isinstance(x, Var) or isinstance(w, Var) or isinstance(bias, Var):
        raise node.not_piecewise_linear(
            f"a {node.op_type} whose weights or bias depend on the input")
    if len(x.shape) < 3 or x.shape[0] != 1:
        raise node.unsupported(f"expected an input of shape (1, C, *spatial), got {x.shape}")
    w = np.asarray(w, np.float64)
    if w.ndim != len(x.shape) or 0 in w.shape:
        raise node.malformed(f"weights of shape {w.shape} for an input of shape {x.shape}; "
                             f"expected non-empty weights of rank {len(x.shape)}")
    bias = None if bias is None else np.asarray(bias, np.float64)
    if bias is not None and bias.ndim != 1:
        raise node.malformed(f"bias of shape {bias.shape}; expected a 1-D bias")
    return (x, w, bias) + _attrs(node, w, len(x.shape) - 2)


def _check_bias(node, bias, m):
    """The bias vector of ``m`` output channels (zeros if there is none)."""
    if bias is None:
        return np.zeros(m)
    if bias.shape != (m,):
        raise node.malformed(f"bias of shape {bias.shape}; expected ({m},), one per output "
                             f"channel")
    return bias


def grid_strides(channels, spatial):
    """Column steps of a C-order ``(channels, *spatial)`` grid: one channel, then one
    position along each spatial axis."""
    steps = [int(np.prod(spatial[a + 1:], dtype=np.int64)) for a in range(len(spatial))]
    return [int(np.prod(spatial, dtype=np.int64))] + steps


@converter("Conv", first=1, attrs=CONV_ATTRS)
def convert_conv(b, node, ins):
    x, w, bias, kernel, strides, dilations, group = _operands(node, ins)
    c, spatial = x.shape[1], x.shape[2:]
    if c % group or w.shape[0] % group or w.shape[1] * group != c:
        raise node.unsupported(f"group={group} does not fit {c} input channels and weights "
                               f"of shape {w.shape}")
    geom = geometry(node, spatial, kernel, strides, dilations, conv=True)
    tables = [window_table(o, k, st, d, pb, s) for o, k, st, d, pb, s
              in zip(geom.out, kernel, strides, dilations, geom.pads_begin, spatial)]
    wm = WindowMatrix(w, group, tables, spatial, grid_strides(c, spatial), 0, x.size)
    out_shape = (1, w.shape[0]) + geom.out
    bvec = _check_bias(node, bias, w.shape[0])
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


@converter("ConvTranspose", first=1,
           attrs=CONV_ATTRS + ("output_padding", "output_shape"))
def convert_conv_transpose(b, node, ins):
    x, w, bias, kernel, strides, dilations, group = _operands(node, ins)
    c, spatial = x.shape[1], x.shape[2:]
    n = len(spatial)
    if w.shape[0] != c or c % group:
        raise node.unsupported(f"weights {w.shape} do not fit {c} input channels, group={group}")
    what = f"one per spatial axis of the input, which has {n}"
    out_pad = node.ints_attr("output_padding", [0] * n, length=n, min=0, what=what)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    full = [st * (s - 1) + op + e for st, s, op, e in zip(strides, spatial, out_pad, extent)]
    auto_pad, pads = padding(node, n)
    out_shape_attr = node.ints_attr("output_shape", min=1)
    if out_shape_attr is not None:
        if len(out_shape_attr) not in (n, n + 2):
            raise node.malformed(f"attribute 'output_shape' is {out_shape_attr}; expected "
                                 f"{n} values (the output's spatial shape) or {n + 2}")
        # ONNX: the extra padding of an odd total goes to the end for SAME_UPPER, to the
        # beginning otherwise (NOTSET and SAME_LOWER alike).
        out = list(out_shape_attr)[-n:]
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
        begin = pads[:n]
        out = [f - pads[i] - pads[i + n] for i, f in enumerate(full)]
    if min(out) <= 0:
        raise node.unsupported(f"output spatial shape {out} is empty")
    wm = conv_transpose_window(w, spatial, out, begin, strides, dilations, group)
    m = w.shape[1] * group
    out_shape = (1, m) + tuple(out)
    bvec = _check_bias(node, bias, m)
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


