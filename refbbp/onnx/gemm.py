"""Converters for matrix ops with a constant side: Gemm and MatMul.

A product with a constant is a linear map of the input-dependent side's elements.
Written over flat C-order elements it is ``I_L (x) W (x) I_N`` for the right ``L``
(leading batch dimensions), ``W`` and ``N``; with ``L = N = 1`` the matrix is ``W``
itself and stays dense, otherwise it is built as CSR with every entry of ``W`` kept as
a structural non-zero.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .builder import Var
from .index import transpose
from .registry import converter

__all__ = ["kron_eye", "matmul_shape"]


def kron_eye(w, left, right, scale=1.0):
    """``I_left (x) (scale * w) (x) I_right`` for a dense ``w`` (m, k), in float64.

    Dense when ``left == right == 1`` (one C-contiguous float64 copy of ``w``, however
    ``w`` is typed or laid out, scaled in place); otherwise CSR keeping zeros of ``w``
    as entries (a layer's structural non-zeros are its receptive field, SPEC 3.6).
    """
    if left == right == 1:
        out = np.array(w, dtype=np.float64, order="C", copy=True)
        if scale != 1.0:
            out *= scale
        return out
    w = np.asarray(w, np.float64)
    if scale != 1.0:
        w = scale * w
    m, k = w.shape
    # Row (l, i, j) holds entries (l, kk, j) for every kk, valued w[i, kk].
    cols = (np.arange(left)[:, None, None, None] * (k * right)
            + np.arange(k)[None, None, None, :] * right
            + np.arange(right)[None, None, :, None])
    cols = np.broadcast_to(cols, (left, m, right, k))
    data = np.broadcast_to(w[None, :, None, :], (left, m, right, k))
    n_rows = left * m * right
    indptr = np.arange(n_rows + 1, dtype=np.int64) * k
    return sp.csr_array((data.ravel().copy(), cols.ravel().astype(np.int32),
                         indptr.astype(np.int32)), shape=(n_rows, left * k * right))


def matmul_shape(a_shape, c_shape):
    """Shape of ``a @ c`` under NumPy's matmul rules (1-D operands promoted, leading
    dimensions broadcast), or ``None`` if the shapes do not multiply. Computed from the
    shapes alone: no product is evaluated."""
    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    c2 = tuple(c_shape) + (1,) if len(c_shape) == 1 else tuple(c_shape)
    if not a2 or not c2 or a2[-1] != c2[-2]:
        return None
    try:
        lead = np.broadcast_shapes(a2[:-2], c2[:-2])
    except ValueError:
        return None
    return (tuple(lead) + ((a2[-2],) if len(a_shape) > 1 else ())
            + ((c2[-1],) if len(c_shape) > 1 else ()))


def matmul_constant(b, node, x, w, var_left, bias=0.0, scale=1.0):
    """``x @ (scale * w)`` (``var_left``) or ``(scale * w) @ x`` for an input-dependent
    ``x`` and a constant ``w`` (any float type: converted to float64 once, in
    :func:`kron_eye`), with NumPy's matmul semantics (1-D operands promoted)."""
    w = np.asarray(w)
    if w.ndim > 2:
        raise node.unsupported(f"a constant operand with batch dimensions {w.shape}")
    a_shape = x.shape if var_left else w.shape
    c_shape = w.shape if var_left else x.shape
    out_shape = matmul_shape(a_shape, c_shape)
    if out_shape is None:
        raise node.unsupported(f"operand shapes {a_shape} and {c_shape} do not multiply")
    if var_left:
        w2 = w if w.ndim == 2 else w[:, None]
        lead = x.size // w2.shape[0]              # all rows of x: L * M
        mat = kron_eye(w2.T, lead, 1, scale)       # (lead * N, lead * K)
    else:
        w2 = w if w.ndim == 2 else w[None, :]
        xs = x.shape if len(x.shape) >= 2 else x.shape + (1,)
        n = xs[-1]
        lead = x.size // (xs[-2] * n)
        mat = kron_eye(w2, lead, n, scale)         # (lead * M * N, lead * K * N)
    bias = np.broadcast_to(np.asarray(bias, np.float64), out_shape).ravel()
    return b.affine([(x, mat)], bias, out_shape, node.op_type, node.name, foldable=True)


@converter("MatMul", first=1)
def convert_matmul(b, node, ins):
    a, c = ins
    if isinstance(a, Var) and isinstance(c, Var):
        raise node.not_piecewise_linear("MatMul of two input-dependent tensors")
    if isinstance(a, Var):
        return [matmul_constant(b, node, a, c, var_left=True)]
    return [matmul_constant(b, node, c, a, var_left=False)]


@converter("Gemm", first=7, attrs=("alpha", "beta", "transA", "transB"))
def convert_gemm(b, node, ins):
    """``alpha * A' B' + beta * C`` with ``A'``, ``B'`` the 2-D ``A``, ``B``, transposed
    where ``transA``/``transB`` (0 or 1) say, and ``C`` broadcast to ``(M, N)``."""
    a, bb = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 and ins[2] is not None else 0.0
    alpha, beta = node.float_attr("alpha", 1.0), node.float_attr("beta", 1.0)
    trans_a, trans_b = node.flag_attr("transA"), node.flag_attr("transB")
    if isinstance(c, Var):
        raise node.unsupported("an input-dependent C operand (write it as a separate Add)")
    if isinstance(a, Var) and isinstance(bb, Var):
        raise node.not_piecewise_linear("Gemm of two input-dependent tensors")
    shapes = [v.shape if isinstance(v, Var) else np.shape(v) for v in (a, bb)]
    if any(len(s) != 2 for s in shapes):
        raise node.malformed(f"inputs A and B of shapes {shapes[0]} and {shapes[1]}; "
                             f"expected 2-D matrices")
    if trans_a:
        a = transpose(a, (1, 0)) if isinstance(a, Var) else np.asarray(a).T
    if trans_b:
        bb = transpose(bb, (1, 0)) if isinstance(bb, Var) else np.asarray(bb).T
    (m, k), (k2, n) = [v.shape if isinstance(v, Var) else np.shape(v) for v in (a, bb)]
    if k != k2:
        raise node.malformed(f"A' of shape {(m, k)} and B' of shape {(k2, n)} (after transA="
                             f"{int(trans_a)}, transB={int(trans_b)}) do not multiply")
    try:
        bias = np.broadcast_to(beta * np.asarray(c, np.float64), (m, n))
    except ValueError:
        raise node.malformed(f"C of shape {np.shape(c)} does not broadcast to the output "
                             f"shape {(m, n)}") from None
    if isinstance(a, Var):
        return [matmul_constant(b, node, a, bb, True, bias, scale=alpha)]
    return [matmul_constant(b, node, bb, a, False, bias, scale=alpha)]
