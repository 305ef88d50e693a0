"""Per-node CSR structures for the BBp kernel, built once per node and cached.

The kernel (``refbbp/_core.pyx``) sees one node as one CSR matrix whose columns are the
node's inputs stacked one after the other, so that a single pass over row ``p`` sees
all of its components (SPEC 3.2: the softmax runs over the union of the row's
components across all inputs). The structure also fixes the node's row blocks
(:func:`n_blocks`), which fix the order of every sum the kernel makes.

* CSR weights are used as they are (no copy) when the node has a single input.
* Dense weights (Gemm, MatMul) become a CSR *view*: ``data`` is the dense array itself
  (``A.reshape(-1)``, no copy) and every entry is a structural non-zero (a dense layer's
  receptive field is its whole input). One kernel, one code path to test, serves every
  layer; the price is a 4-byte column index per entry (a dense kernel would compute
  it), small beside the convolutions of the networks BBp is used on, and the rows of a
  dense layer are contiguous, so the CSR pass streams them as a dense one would.
* A max node's structure is its window (padding removed): the structural non-zeros of
  the unscaled row (SPEC 3.6). Its local data -- 1 at the selected element, 0 elsewhere
  -- depends on the input and is made per input by :meth:`NodeStructure.max_data`.

The cache is keyed on the node object (weakly) and remembers the weight objects it was
built from, so replacing ``node.weights`` rebuilds it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import _core

__all__ = ["NodeStructure", "n_blocks", "node_structure"]

INT32_MAX = np.iinfo(np.int32).max

#: Row blocks per node: at most this many ...
MAX_BLOCKS = 64
#: ... with at least this many rows each ...
MIN_BLOCK_ROWS = 32
#: ... with per-block accumulators of at most this many bytes in all ...
ACC_BYTES = 32 << 20
#: ... and at least this many stored entries per accumulated value (clearing and
#: adding up the accumulators, O(K * n_cols), stays small beside the O(nnz) row pass).
MIN_ENTRIES_PER_VALUE = 4


def n_blocks(n_rows, n_cols, nnz):
    """The number K of row blocks of a node (a kernel detail; SPEC-independent).

    Each block sums its rows' messages into its own accumulator of ``n_cols`` values,
    and the blocks are added in order: K fixes the order of every floating-point sum,
    so it depends only on the node's shape -- never on the number of threads. K is
    large enough to keep up to 64 threads busy on the big layers, and small enough that
    the accumulators (``K * n_cols * 8`` bytes) stay within ``ACC_BYTES`` and cost little
    beside the row pass (``K * n_cols <= nnz / MIN_ENTRIES_PER_VALUE``): a max node
    (4 entries per row) or a small layer gets K = 1.
    """
    cols = max(n_cols, 1)
    k = min(MAX_BLOCKS, n_rows // MIN_BLOCK_ROWS, ACC_BYTES // (8 * cols),
            nnz // (MIN_ENTRIES_PER_VALUE * cols))
    return max(1, int(k))

_CACHE = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class NodeStructure:
    """One node's local matrix over its stacked inputs, for the kernel.

    Attributes
    ----------
    data : ndarray of float64, shape (nnz,)
        Unscaled entries ``A[p, q]`` (affine nodes); ones for a max node.
    indices : ndarray of int32, shape (nnz,)
        Stacked column of each entry: input ``i``'s element ``q`` is ``offsets[i] + q``.
    indptr : ndarray of int32, shape (n_rows + 1,)
    offsets : ndarray of int64, shape (n_inputs + 1,)
        Where each input starts in the stacked columns; ``offsets[-1] = n_cols``.
    max_row : int
        The largest number of entries in a row (the kernel's scratch row).
    n_blocks : int
        Row blocks of the kernel (:func:`n_blocks`).
    empty_rows : ndarray of int64
        Rows with no structural non-zero (SPEC 3.6, second fallback).
    entry_row : ndarray of int32, shape (nnz,) or None
        Row of every entry (max nodes only: used to build their local data).
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    offsets: np.ndarray
    max_row: int
    n_blocks: int
    empty_rows: np.ndarray
    entry_row: np.ndarray = None

    @property
    def n_rows(self):
        return len(self.indptr) - 1

    @property
    def n_cols(self):
        return int(self.offsets[-1])

    @property
    def nnz(self):
        return len(self.indices)

    @property
    def nbytes(self):
        return self.indices.nbytes + self.indptr.nbytes

    def max_data(self, selected):
        """Local data of a max node for one input: 1 at the first window entry holding
        the selected element of each row, 0 elsewhere.

        Parameters
        ----------
        selected : ndarray of int64, shape (n_rows,)
            ``trace.selected[n][b]``.

        Returns
        -------
        ndarray of float64, shape (nnz,)
        """
        hit = np.flatnonzero(self.indices == selected[self.entry_row])
        rows = self.entry_row[hit]
        first = hit[np.r_[True, rows[1:] != rows[:-1]]] if hit.size else hit
        data = np.zeros(self.nnz)
        data[first] = 1.0
        return data


def node_structure(network, k):
    """The cached :class:`NodeStructure` of node ``k`` (affine or max), built on first use.

    Parameters
    ----------
    network : Network
    k : int
        Index of the node.

    Returns
    -------
    NodeStructure
    """
    node = network.nodes[k]
    sizes = tuple(network.nodes[i].size for i in node.inputs)
    key = [*node.weights, node.window, *node.inputs, *sizes]
    hit = _CACHE.get(node)
    if hit is not None and len(hit[0]) == len(key) and all(
            a is b or (isinstance(a, int) and a == b) for a, b in zip(hit[0], key)):
        return hit[1]
    st = _build(node, sizes)
    _CACHE[node] = (key, st)
    return st


def _csr_parts(w):
    """``(data, indices, indptr, n_cols)`` of one weight matrix; dense -> all entries."""
    if sp.issparse(w):
        w = w.tocsr() if w.format != "csr" else w
        if not w.has_canonical_format:
            w = w.copy()
            w.sum_duplicates()  # also sorts the indices
        return (np.ascontiguousarray(w.data, np.float64), np.ascontiguousarray(w.indices),
                np.ascontiguousarray(w.indptr), w.shape[1])
    w = np.ascontiguousarray(w, np.float64)
    n_rows, n_cols = w.shape
    if w.size > INT32_MAX:
        raise ValueError(f"dense layer of shape {w.shape} exceeds int32 CSR indices")
    indices = np.tile(np.arange(n_cols, dtype=np.int32), n_rows)
    indptr = (np.arange(n_rows + 1, dtype=np.int64) * n_cols).astype(np.int32)
    return w.reshape(-1), indices, indptr, n_cols


def _build(node, sizes):
    if node.kind == "max":
        window = np.asarray(node.window)
        valid = window >= 0
        counts = valid.sum(1)
        indices = window[valid].astype(np.int32)       # row-major: window order
        indptr = np.zeros(node.size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        parts = [(np.ones(indices.size), indices, indptr, None)]
        offsets = np.array([0, sizes[0]], np.int64)
    elif node.kind == "affine":
        parts = [_csr_parts(w) for w in node.weights]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([p[3] for p in parts], out=offsets[1:])
    else:
        raise ValueError(f"node {node.name!r} of kind {node.kind!r} has no local matrix")
    if len(parts) == 1:
        data, indices, indptr, _ = parts[0]
    else:
        data, indices, indptr = _hstack(parts, offsets, node.size)
    nnz = indices.size
    if nnz > INT32_MAX or offsets[-1] > INT32_MAX:
        raise ValueError(f"node {node.name!r}: {nnz:,} entries over {offsets[-1]:,} columns "
                         f"exceed int32 CSR indices")
    data = np.ascontiguousarray(data, np.float64)
    indices = np.ascontiguousarray(indices, np.int32)
    indptr = np.ascontiguousarray(indptr, np.int32)
    n_cols = int(offsets[-1])
    _check(node, data, indices, indptr, n_cols)
    counts = np.diff(indptr)
    entry_row = None
    if node.kind == "max":
        entry_row = np.repeat(np.arange(node.size, dtype=np.int32), counts)
    return NodeStructure(data, indices, indptr, offsets, int(counts.max(initial=0)),
                         n_blocks(node.size, n_cols, nnz), np.flatnonzero(counts == 0), entry_row)


def _hstack(parts, offsets, n_rows):
    """Stack CSR parts side by side, keeping explicit zeros (scipy's hstack may not)."""
    counts = [np.diff(p[2]) for p in parts]
    total = np.sum(counts, axis=0)
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(total, out=indptr[1:])
    nnz = int(indptr[-1])
    data = np.empty(nnz)
    indices = np.empty(nnz, np.int64)
    before = np.zeros(n_rows, np.int64)  # entries of earlier inputs in each row
    for (d, ind, ptr, _), cnt, off in zip(parts, counts, offsets[:-1]):
        rows = np.repeat(np.arange(n_rows), cnt)
        within = np.arange(ind.size) - np.asarray(ptr, np.int64)[rows]
        dest = indptr[rows] + before[rows] + within
        data[dest] = d
        indices[dest] = ind.astype(np.int64) + off
        before += cnt
    return data, indices, indptr


def _check(node, data, indices, indptr, n_cols):
    """CSR invariants (scipy ``check_format``) before anything enters the kernel."""
    if len(indptr) != node.size + 1:
        raise ValueError(f"node {node.name!r}: indptr has {len(indptr)} entries, expected "
                         f"{node.size + 1}")
    if data.shape != indices.shape:
        raise ValueError(f"node {node.name!r}: {data.size} values for {indices.size} indices")
    status = _core.check_csr_memview(indptr, indices, n_cols)
    if status:
        what = {1: "indptr does not start at 0", 2: "indptr decreases",
                3: f"a column index is outside [0, {n_cols})",
                4: "indptr[-1] differs from the number of entries"}[status]
        raise ValueError(f"node {node.name!r}: invalid CSR structure: {what}")
