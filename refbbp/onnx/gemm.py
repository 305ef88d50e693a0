"""Converters for matrix ops with a constant side: Gemm and MatMul.

A product with a constant is a linear map of the input-dependent side's elements.
Written over flat C-order elements it is ``I_L (x) W (x) I_N`` for the right ``L``
(leading batch dimensions), ``W`` and ``N``; with ``L = N = 1`` the matrix is ``W``
itself and stays dense, otherwise it is built as CSR with every entry of ``W`` kept as
a structural non-zero.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .builder import Var
from .index import transpose
from .registry import converter

__all__ = ["einsum_matrix", "kron_eye", "matmul_shape"]


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


def einsum_matrix(terms, out, var_pos, operands, reserve=None):
    """The matrix of the linear map ``X -> einsum(terms -> out)`` in its one
    input-dependent operand ``X = operands[var_pos]`` (a shape tuple there; the others
    are constant arrays), over flat C-order elements, as CSR.

    Every (output element, element of ``X``) pair the einsum multiplies is a structural
    non-zero (kept even where its value is 0, as :func:`kron_eye` does): the iteration
    space is the output's letters followed by the letters only ``X`` has (summed), and
    the constants, contracted over their own letters, give each entry's value. A letter
    repeated in ``X``'s term reads its diagonal. Sizes come from the shapes alone; the
    ``reserve(nbytes)`` callback (the memory budget) is called before anything is
    allocated.

    Parameters
    ----------
    terms : list of str
        One subscript string per operand, no ellipsis (letters only).
    out : str
        The output subscripts.
    var_pos : int
    operands : list
        ``operands[var_pos]`` is the shape of ``X``; the rest are arrays.

    Returns
    -------
    scipy.sparse.csr_array, shape (prod(out sizes), prod(X shape))
    """
    sizes = {}
    for t, v in zip(terms, operands):
        for letter, d in zip(t, v if isinstance(v, tuple) else np.shape(v)):
            sizes.setdefault(letter, int(d))
    x_term = terms[var_pos]
    space = list(out) + [c for c in dict.fromkeys(x_term) if c not in out]
    dims = [sizes[c] for c in space]
    nnz = math.prod(dims)
    n_rows = math.prod(sizes[c] for c in out)
    n_cols = math.prod(operands[var_pos])
    if reserve is not None:
        reserve(nnz * 28 + (n_rows + 1) * 8)  # data, int32 + int64 columns, indptr
    consts = [(t, np.asarray(v, np.float64)) for i, (t, v) in enumerate(zip(terms, operands))
              if i != var_pos]
    kept = [c for c in space if any(c in t for t, _ in consts)]
    if consts:
        value = np.einsum(",".join(t for t, _ in consts) + "->" + "".join(kept),
                          *[v for _, v in consts])
    else:
        value = np.float64(1.0)
    value = np.reshape(value, [sizes[c] if c in kept else 1 for c in space])
    strides = np.cumprod([1] + [int(d) for d in operands[var_pos][:0:-1]])[::-1]
    cols = np.zeros([1] * len(space), np.int64)
    for letter, stride in zip(x_term, strides):
        shape = [1] * len(space)
        shape[space.index(letter)] = sizes[letter]
        cols = cols + (np.arange(sizes[letter], dtype=np.int64) * int(stride)).reshape(shape)
    per_row = nnz // n_rows if n_rows else 0
    index = np.int32 if max(nnz, n_cols) < 2**31 else np.int64
    return sp.csr_array((np.broadcast_to(value, dims).ravel().copy(),
                         np.broadcast_to(cols, dims).ravel().astype(index),
                         (np.arange(n_rows + 1, dtype=np.int64) * per_row).astype(index)),
                        shape=(n_rows, n_cols))


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _matmul_broadcast(b, node, x, w, var_left, out_shape, scale, bias):
    """``x @ w`` or ``w @ x`` where the constant has batch dimensions (or the leading
    dimensions broadcast): an einsum ``...mk,...kn->...mn`` over the broadcast leading
    dimensions, by :func:`einsum_matrix`."""
    from .elementwise import broadcast

    a2 = (1,) + w.shape if (not var_left and w.ndim == 1) else w.shape
    xs = x.shape
    x2 = ((1,) + xs if len(xs) == 1 else xs) if var_left else (xs + (1,) if len(xs) == 1 else xs)
    w2 = (w.shape + (1,) if w.ndim == 1 else w.shape) if var_left else a2
    lead = tuple(np.broadcast_shapes(x2[:-2], w2[:-2]))
    xv = broadcast(Var(x2, x.src, x.idx, x.const), lead + x2[-2:])
    wv = np.broadcast_to(np.reshape(w, w2), lead + w2[-2:])
    ll = _LETTERS[:len(lead)]
    m, k, n = _LETTERS[len(lead):len(lead) + 3]
    terms = [ll + m + k, ll + k + n]
    ops = [xv.shape, wv] if var_left else [wv, xv.shape]
    mat = einsum_matrix(terms, ll + m + n, 0 if var_left else 1, ops,
                        lambda nbytes: b.reserve(node.name, nbytes))
    if scale != 1.0:
        mat.data *= scale
    bias = np.broadcast_to(np.asarray(bias, np.float64), out_shape).ravel()
    return b.affine([(xv, mat)], bias, out_shape, node.op_type, node.name, foldable=True)


def matmul_constant(b, node, x, w, var_left, bias=0.0, scale=1.0):
    """``x @ (scale * w)`` (``var_left``) or ``(scale * w) @ x`` for an input-dependent
    ``x`` and a constant ``w`` (any float type: converted to float64 once, in
    :func:`kron_eye`), with NumPy's matmul semantics (1-D operands promoted, leading
    dimensions broadcast). A 1-D or 2-D ``w`` is ``I_L (x) W (x) I_N`` (dense where
    that is ``W``); a ``w`` with batch dimensions goes through :func:`einsum_matrix`."""
    w = np.asarray(w)
    a_shape = x.shape if var_left else w.shape
    c_shape = w.shape if var_left else x.shape
    out_shape = matmul_shape(a_shape, c_shape)
    if out_shape is None:
        raise node.unsupported(f"operand shapes {a_shape} and {c_shape} do not multiply")
    if w.ndim > 2:
        return _matmul_broadcast(b, node, x, w, var_left, out_shape, scale, bias)
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


def _einsum_terms(node, equation, shapes):
    """The subscripts of each operand and of the output, with every ellipsis written
    out as letters (aligned from the right, as NumPy broadcasts them) and an implicit
    output made explicit (NumPy's rule: the ellipsis, then the letters that appear
    once, in alphabetical order)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise node.malformed(f"equation {equation!r} has {len(terms)} operands; the node "
                             f"has {len(shapes)} inputs")
    named = [t.replace("...", "") for t in terms] + [rhs.replace("...", "")]
    if any(not c.isalpha() for t in named for c in t):
        raise node.malformed(f"equation {equation!r}: expected letters, ',', '->' and "
                             f"'...'")
    free = [c for c in _LETTERS if c not in "".join(named)]
    n_ell = []
    for t, shape in zip(terms, shapes):
        k = len(shape) - len(t.replace("...", ""))
        if ("..." in t and k < 0) or ("..." not in t and k != 0):
            raise node.malformed(f"equation {equation!r}: term {t!r} does not fit an "
                                 f"operand of shape {tuple(shape)}")
        n_ell.append(k if "..." in t else 0)
    width = max(n_ell, default=0)
    ell = "".join(free[:width])
    terms = [t.replace("...", ell[width - k:]) for t, k in zip(terms, n_ell)]
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = {}
        for t in terms:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    return terms, out


@converter("Einsum", first=12, attrs=("equation",))
def convert_einsum(b, node, ins):
    """An einsum linear in its one input-dependent operand: one affine node whose
    matrix :func:`einsum_matrix` builds; a dimension of size 1 broadcasts."""
    from .elementwise import broadcast

    var_pos = [i for i, v in enumerate(ins) if isinstance(v, Var)]
    if len(var_pos) != 1:
        raise node.not_piecewise_linear("Einsum of several input-dependent operands (a "
                                        "product of input-dependent tensors)")
    (i_x,) = var_pos
    shapes = [v.shape if isinstance(v, Var) else np.shape(v) for v in ins]
    terms, out = _einsum_terms(node, node.str_attr("equation"), shapes)
    sizes = {}
    for t, shape in zip(terms, shapes):
        for c, d in zip(t, shape):
            if d != 1:
                if sizes.setdefault(c, d) != d:
                    raise node.malformed(f"equation {node.str_attr('equation')!r}: "
                                         f"subscript {c!r} has sizes {sizes[c]} and {d}")
    for c in out:
        if out.count(c) > 1 or not any(c in t for t in terms):
            raise node.malformed(f"output subscripts {out!r}: {c!r} repeated or in no "
                                 f"operand")
    ops = []
    for t, v in zip(terms, ins):          # broadcast size-1 dimensions
        full = tuple(sizes.get(c, 1) for c in t)
        if isinstance(v, Var):
            v = broadcast(v, full) if v.shape != full else v
            x = v
            ops.append(full)
        else:
            ops.append(np.broadcast_to(np.asarray(v), full))
    mat = einsum_matrix(terms, out, i_x, ops, lambda nbytes: b.reserve(node.name, nbytes))
    out_shape = tuple(sizes.get(c, 1) for c in out)
    return [b.affine([(x, mat)], 0.0, out_shape, node.op_type, node.name, foldable=True)]
