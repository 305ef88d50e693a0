"""Per-node structures for the kernel, built once per node and cached.

The kernel (``refbbp/_core.pyx``) reads a node's local matrix row by row from its row
sources (``_core.NodeRows``), one per input, the inputs' columns stacked one after the
other, so that a single pass over row ``p`` sees all of its components (SPEC 3.2: the
softmax runs over the union of the row's components across all inputs). The structure
also fixes the node's row blocks (:func:`n_blocks`) and the order its rows are visited
in (``NodeRows.set_interleave``), which fix the order of every sum the kernel makes.

* CSR weights are copied (see *Safety* below), canonical (sorted, no duplicates).
* Dense weights (Gemm, MatMul) are a dense source: read in place (a read-only view, no
  copy) for a single input stored as C-contiguous float64; every entry is a structural
  non-zero (a dense layer's receptive field is its whole input).
* Window matrices (convolutions, average pooling) are a window source: the kernel and
  the per-axis tables sorted by position (copies); the kernel generates each row. A
  node with one window input is visited position by position (all output channels at
  one position, then the next), so consecutive rows read the same inputs.
* A max node's structure is its window (padding removed): the structural non-zeros of
  the unscaled row (SPEC 3.6). Its local data -- 1 at the selected element, 0 elsewhere
  -- depends on the input and is made per input by :meth:`NodeStructure.max_rows`.
* CSR indices are int32 while the entries, columns and rows fit (``INDEX32_LIMIT``),
  else int64 (``indices`` and ``indptr`` always share one type); the kernel gives the
  same bits for both.

Safety: nothing edited from outside reaches the kernel unchecked
----------------------------------------------------------------
The kernel trusts the structure: it never re-checks a column index (that would cost
O(nnz) per node and per input). So a structure *owns* what the kernel indexes with:
``indices``, ``indptr`` and ``data`` are its own copies, checked once when it is built
(``_core.check_csr_memview``, O(nnz)) and read-only from then on
(``flags.writeable = False``). The one exception is the ``data`` of a single-input
dense layer stored as C-contiguous float64: a read-only view of the matrix itself (no
copy of the largest matrices; entries are never used as addresses, and an edit in place
is then seen alike by the forward pass, the gradients -- ``A.T`` is a view too -- and
the kernel).

Owning its arrays keeps a structure safe; it also has to stay *current*. The cache is
keyed on the node object (weakly) and holds the matrices the structure was built from,
with copies of their arrays (for a canonical single-input CSR matrix, the structure's
own arrays serve as these copies). :func:`node_structures`, which ``refbbp.bbp`` calls
before its forward pass, checks on every call that each weight matrix (and a max node's
window) is still the same object, of the same shape, holding the same bytes: one
``memcmp`` per array (``_core.same_bytes_memview``: no allocation, no GIL). If anything
changed -- an edit in place or a new matrix -- the structure is rebuilt and re-checked
and the node's cached transposes (``node.weights_t``, read by the gradient pass) are
dropped, so the call computes the attribution of the edited network; a matrix that is
no longer a valid CSR matrix, or has the wrong shape, raises a ``ValueError`` naming the
node. This check comes before the forward pass on purpose: scipy's matrix products do
not check indices either, so a corrupt ``indices`` array would crash there first.

Why this choice, against the alternatives:

* checking a structure only when it is (re)built, keyed on the identity of the weight
  objects: free per call, but misses edits in place -- the stale structure is safe (it
  owns its arrays), yet the forward pass crashes on corrupt indices and in-bounds edits
  give silently wrong attributions;
* a bounds check of the user's indices on every call: prevents the crash at a third of
  the cost or less, but misses in-bounds edits and edits of ``data``, which then give
  silently wrong attributions (stale structure, stale transposes);
* a fingerprint of the contents: no cheaper (both are bound by memory bandwidth, and
  ``memcmp`` runs at it), and only probabilistic;
* making the network's own arrays read-only: free, but it changes objects the user owns
  and forbids edits that are legitimate (ablations).

The price is the copies (12 bytes per stored CSR entry: as much as the transposes the
node caches already) and the comparison, O(nnz) per ``bbp`` call (not per input):
about 50 ms for the 83 million entries of the STL-10 benchmark network, where one
input takes about 0.3 s on one thread (forward and gradient passes included). Edits
made before refbbp first used a node cannot be told from the original; the structure
is then simply built from the edited matrix.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import _core
from ..network.window import MAX_AXES, WindowMatrix
from .kernels import INDEX_DTYPES, status_message

__all__ = ["NodeStructure", "index_dtype", "n_blocks", "node_structure",
           "node_structures"]

#: The largest number of entries, columns or rows a structure stores with int32
#: indices; above it, int64. (Tests lower it to run small layers with int64 indices.)
INDEX32_LIMIT = np.iinfo(np.int32).max

#: Row blocks per node: at most this many ...
MAX_BLOCKS = 64
#: ... with at least this many rows each ...
MIN_BLOCK_ROWS = 32
#: ... with per-block accumulators (gradient and BBp: two per block) of at most this
#: many bytes in all (the largest layers of an ImageNet VGG read 3.2 million elements:
#: 2 blocks, so 2 threads; a smaller bound left them on one thread) ...
ACC_BYTES = 128 << 20
#: Output channels per group from which a window node's rows take the vectorised pass
#: (``refbbp/_vector.h``; it runs four rows per vector, padding a group to a multiple
#: of 4).
MIN_VECTOR_CHANNELS = 4
#: ... and at least this many stored entries per accumulated value (clearing and
#: adding up the accumulators, O(K * n_cols), stays small beside the O(nnz) row pass).
MIN_ENTRIES_PER_VALUE = 4
#: A node whose rows take the vectorised pass spends far less per entry: it keeps at
#: least this many entries per accumulated value (1x1 and small convolutions of a
#: ResNet took 40-64 blocks of accumulators the size of their input, whose clearing and
#: reduction cost more than the pass) ...
MIN_VECTOR_ENTRIES_PER_VALUE = 64
#: ... but, where its rows allow, this many blocks (so that a few threads share it).
MIN_VECTOR_BLOCKS = 4


def n_blocks(n_rows, n_cols, nnz, vector=False):
    """The number K of row blocks of a node (a kernel detail; SPEC-independent).

    Each block sums its rows' messages into its own accumulator of ``n_cols`` values,
    and the blocks are added in order: K fixes the order of every floating-point sum,
    so it depends only on the node's shape -- never on the number of threads. K is
    large enough to keep up to 64 threads busy on the big layers, and small enough that
    the accumulators (``2 * K * n_cols * 8`` bytes) stay within ``ACC_BYTES`` and cost little
    beside the row pass (``K * n_cols <= nnz / MIN_ENTRIES_PER_VALUE``): a max node
    (4 entries per row) or a small layer gets K = 1. ``vector``: the node's rows take
    the vectorised pass (``NodeRows.vector_workspace()`` not ``(0, 0)``): then
    ``K * n_cols <= nnz / MIN_VECTOR_ENTRIES_PER_VALUE`` too, unless that leaves
    fewer than ``MIN_VECTOR_BLOCKS`` blocks (then up to that many, within the other
    bounds).
    """
    cols = max(n_cols, 1)
    k = min(MAX_BLOCKS, n_rows // MIN_BLOCK_ROWS, ACC_BYTES // (2 * 8 * cols),
            nnz // (MIN_ENTRIES_PER_VALUE * cols))
    if vector:
        k = min(k, max(MIN_VECTOR_BLOCKS, nnz // (MIN_VECTOR_ENTRIES_PER_VALUE * cols)))
    return max(1, int(k))


def index_dtype(nnz, n_cols, n_rows=0):
    """The index type of a structure: int32 if its entries, columns and rows all fit
    :data:`INDEX32_LIMIT`, else int64."""
    fits = max(int(nnz), int(n_cols), int(n_rows)) <= INDEX32_LIMIT
    return np.dtype(np.int32) if fits else np.dtype(np.int64)


@dataclass(eq=False)
class NodeStructure:
    """One node's local matrix over its stacked inputs, for the kernels.

    Built by :func:`node_structure` from read-only arrays it owns (the matrix of a
    single-input dense layer excepted: read in place, through a read-only view).

    Attributes
    ----------
    rows : refbbp._core.NodeRows
        The row sources, one per input (CSR arrays, a dense matrix, or a window
        matrix's kernel and sorted tables); a max node's is made per input by
        :meth:`max_rows`.
    entry_start : ndarray of int64, shape (n_rows + 1,)
        Node-wide index of each row's first structural non-zero (user rules' scores are
        aligned with these entries).
    offsets : ndarray of int64, shape (n_inputs + 1,)
        Where each input starts in the stacked columns; ``offsets[-1] = n_cols``.
    max_row : int
        The largest number of entries in a row (the kernels' scratch rows).
    n_blocks : int
        Row blocks of the reverse pass (:func:`n_blocks`).
    empty_rows : ndarray of int64
        Rows with no structural non-zero (SPEC 3.6, second fallback).
    window : tuple of ndarray or None
        A max node's window as CSR ``(indices, indptr)`` and the row of every entry.
    parts : tuple
        Per input, what its source reads: ``("csr", (data, indices, indptr))``,
        ``("dense", (matrix,))`` or ``("window", (kernel, spos..., skoff...,
        scount...))``; for a max node ``("max", window)`` (for inspection and tests).
    """

    rows: object
    entry_start: np.ndarray
    offsets: np.ndarray
    max_row: int
    n_blocks: int
    empty_rows: np.ndarray
    window: tuple = None
    parts: tuple = ()

    @property
    def n_rows(self):
        return len(self.entry_start) - 1

    @property
    def n_cols(self):
        return int(self.offsets[-1])

    @property
    def nnz(self):
        return int(self.entry_start[-1])

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
        indices, _, entry_row = self.window
        hit = np.flatnonzero(indices == selected[entry_row])
        rows = entry_row[hit]
        first = hit[np.r_[True, rows[1:] != rows[:-1]]] if hit.size else hit
        data = np.zeros(self.nnz)
        data[first] = 1.0
        return data

    def max_rows(self, selected):
        """The row source of a max node for one input (its selection as data)."""
        indices, indptr, _ = self.window
        rows = _core.NodeRows(self.n_rows, self.n_cols, 1)
        rows.add_csr(_frozen(self.max_data(selected)), indices, indptr, 0)
        return rows

    def entries(self, rows=None):
        """Every structural non-zero, row after row: stacked columns and unscaled
        weights, shape (nnz,) each (for user rules; memory O(nnz))."""
        cols = np.empty(self.nnz, np.int64)
        w = np.empty(self.nnz)
        _core.emit_all(rows if rows is not None else self.rows, self.entry_start, cols, w)
        return cols, w


_CACHE = weakref.WeakKeyDictionary()   # node -> _Entry


def node_structures(network):
    """Every node's :class:`NodeStructure` (None for the input node), each checked
    against the node's current matrices (module docstring, *Safety*). ``refbbp.bbp``
    calls it before anything reads ``node.weights``.

    Parameters
    ----------
    network : Network

    Returns
    -------
    list of NodeStructure or None, one per node

    Raises
    ------
    ValueError
        A node's matrix is not a valid CSR matrix, or does not fit the node (the
        message names the node).
    """
    return [None if node.kind == "input" else node_structure(network, k)
            for k, node in enumerate(network.nodes)]


def node_structure(network, k):
    """The cached :class:`NodeStructure` of node ``k`` (affine or max), built on first
    use and rebuilt when the node's matrices changed (module docstring, *Safety*).

    Parameters
    ----------
    network : Network
    k : int
        Index of the node.

    Returns
    -------
    NodeStructure

    Raises
    ------
    ValueError
        As :func:`node_structures`.
    """
    node = network.nodes[k]
    sizes = tuple(network.nodes[i].size for i in node.inputs)
    entry = _CACHE.get(node)
    if entry is not None and entry.current(node, sizes):
        return entry.structure
    # New or edited matrices: the transposes the node caches for the gradient pass
    # (Node.weights_t) may be stale too.
    node.weights_changed()
    structure, sources = _build(node, sizes, f"node {k} ({node.name!r})")
    _CACHE[node] = _Entry(structure, node.kind, tuple(node.inputs), sizes, sources)
    return structure


@dataclass(eq=False)
class _Entry:
    """A cached structure and what it was built from (never the node itself: the cache
    holds the node weakly)."""

    structure: NodeStructure
    kind: str
    inputs: tuple
    sizes: tuple
    sources: tuple   # one _Source per weight matrix, or the window's (max nodes)

    def current(self, node, sizes):
        """Whether the node still has the matrices, holding the same bytes."""
        mats = _matrices(node)
        return (node.kind == self.kind and tuple(node.inputs) == self.inputs
                and sizes == self.sizes and len(mats) == len(self.sources)
                and all(s.holds(m) for s, m in zip(self.sources, mats)))


class _Source:
    """One matrix a structure was built from: the object, its shape and read-only copies
    of its arrays (``copies`` None: the structure reads the matrix in place, a
    C-contiguous float64 ndarray)."""

    __slots__ = ("obj", "shape", "copies")

    def __init__(self, obj, copies):
        self.obj, self.shape, self.copies = obj, _shape(obj), copies

    def holds(self, obj):
        """Whether ``obj`` is this matrix, unchanged: O(1) for a matrix read in place,
        else one ``memcmp`` per array."""
        if obj is not self.obj or _shape(obj) != self.shape:
            return False
        if self.copies is None:
            return _is_f64_c(obj)
        arrays = _arrays(obj)
        return len(arrays) == len(self.copies) and all(
            _same(a, c) for a, c in zip(arrays, self.copies))


def _matrices(node):
    return [node.window] if node.kind == "max" else list(node.weights)


def _shape(m):
    shape = getattr(m, "shape", None)
    return tuple(shape) if shape is not None else None


def _arrays(m):
    """The arrays of a matrix: ``(data, indices, indptr)`` of a sparse one (converted to
    CSR if it is not), ``(array,)`` of a dense one."""
    if isinstance(m, WindowMatrix):
        extra = () if m.row_scale is None else (m.row_scale,)
        return (m.kernel, *m.tables, *extra)
    if sp.issparse(m):
        if m.format != "csr":
            m = m.tocsr()
        return m.data, m.indices, m.indptr
    return (np.asarray(m),)


def _is_f64_c(a):
    return isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous


def _same(a, c):
    """``a`` holds exactly the bytes of ``c`` (same dtype and shape)."""
    if not (isinstance(a, np.ndarray) and a.dtype == c.dtype and a.shape == c.shape):
        return False
    if a.flags.c_contiguous:
        return bool(_core.same_bytes_memview(a.reshape(-1).view(np.uint8),
                                             c.reshape(-1).view(np.uint8)))
    return bool(np.array_equal(a, c))


def _frozen(a):
    """``a``, read-only (a view stays a view: only this array object is frozen)."""
    a.flags.writeable = False
    return a


def _owned_copy(a):
    return _frozen(np.array(a, copy=True))


def _check(indptr, indices, n_cols, where):
    """CSR invariants (scipy's ``check_format``), O(n_rows + nnz), by the kernel's own
    ``check_csr_memview``; its status codes become a ValueError naming ``where``."""
    status = _core.check_csr_memview(indptr, indices, n_cols)
    if status != _core.STATUS_OK:
        raise ValueError(f"{where}: invalid CSR structure: {status_message(status)} "
                         f"(n_cols = {n_cols})")


def _build(node, sizes, where):
    """``(NodeStructure, sources)`` of a node, from copies of its matrices (checked)."""
    n_rows = node.size
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n_cols = int(offsets[-1])
    window = None
    if node.kind == "max":
        win, source = _window(node, sizes, where)
        valid = win >= 0
        counts = valid.sum(1).astype(np.int64)
        indptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = win[valid]                                 # row-major: window order
        _check(indptr, indices, sizes[0], f"{where}: window")
        dtype = index_dtype(indices.size, n_cols, n_rows)
        window = (_frozen(indices.astype(dtype)), _frozen(indptr.astype(dtype)),
                  _frozen(np.repeat(np.arange(n_rows, dtype=dtype), counts)))
        rows, sources = None, (source,)
        parts = (("max", window),)
    elif node.kind == "affine":
        if len(node.weights) != len(node.inputs):
            raise ValueError(f"{where}: {len(node.weights)} weight matrices for "
                             f"{len(node.inputs)} inputs")
        rows = _core.NodeRows(n_rows, n_cols, len(sizes))
        counts = np.zeros(n_rows, np.int64)
        sources, parts = [], []
        for i, (w, size) in enumerate(zip(node.weights, sizes)):
            part_counts, source, part = _add_source(rows, w, (n_rows, size), int(offsets[i]),
                                                    len(sizes) == 1, f"{where}: weight {i}")
            counts += part_counts
            sources.append(source)
            parts.append(part)
        sources, parts = tuple(sources), tuple(parts)
        if len(parts) == 1 and parts[0][0] == "window":
            # every output channel at one position, then the next: neighbouring rows
            # read the same inputs (see NodeRows.set_interleave)
            rows.set_interleave(node.weights[0].out_channels)
    else:
        raise ValueError(f"{where} of kind {node.kind!r} has no local matrix")
    entry_start = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=entry_start[1:])
    structure = NodeStructure(
        rows, _frozen(entry_start), _frozen(offsets), int(counts.max(initial=0)),
        n_blocks(n_rows, n_cols, int(entry_start[-1]),
                 rows is not None and rows.vector_workspace() != (0, 0)),
        _frozen(np.flatnonzero(counts == 0)),
        window, parts)
    return structure, sources


def _add_source(rows, w, shape, offset, in_place, where):
    """Add one weight matrix to ``rows`` as a source starting at column ``offset``;
    returns the number of entries of each row, the matrix's _Source and what the
    source reads (``NodeStructure.parts``).

    ``in_place``: a C-contiguous float64 dense matrix is read in place (no copy).
    """
    if _shape(w) != shape:
        raise ValueError(f"{where} has shape {_shape(w)}, expected {shape} "
                         f"(node size, input size)")
    if isinstance(w, WindowMatrix):
        copies = tuple(_owned_copy(a) for a in _arrays(w))
        counts, arrays = _add_window(rows, w, copies, offset, where)
        return counts, _Source(w, copies), ("window", arrays)
    if sp.issparse(w):
        copies = tuple(_owned_copy(a) for a in _arrays(w))
        data, indices, indptr = _csr_part(*copies, shape, where)
        dtype = index_dtype(indices.size, shape[1], shape[0])
        data = _frozen(np.ascontiguousarray(data, np.float64))
        indices = _frozen(np.ascontiguousarray(indices, dtype))
        indptr = _frozen(np.ascontiguousarray(indptr, dtype))
        rows.add_csr(data, indices, indptr, offset)
        return np.diff(indptr).astype(np.int64), _Source(w, copies), ("csr", (data, indices,
                                                                              indptr))
    a = np.asarray(w)
    _check_entries(a, where)
    if in_place and a is w and _is_f64_c(a):
        matrix, source = _frozen(a.view()), _Source(w, None)
    else:
        copy = _owned_copy(a)
        matrix, source = _frozen(np.ascontiguousarray(copy, np.float64)), _Source(w, (copy,))
    matrix = matrix.reshape(shape)
    rows.add_dense(matrix, offset)
    return np.full(shape[0], shape[1], np.int64), source, ("dense", (matrix,))


def _add_window(rows, w, copies, offset, where):
    """A window matrix's kernel and sorted tables as a source (from owned copies,
    re-checked: its tables must stay inside its grid, its columns inside the input)."""
    kernel, tables = copies[0], copies[1:1 + len(w.tables)]
    row_scale = copies[-1] if w.row_scale is not None else None
    n_axes = len(tables)
    if n_axes > MAX_AXES:
        raise ValueError(f"{where}: window matrices of more than {MAX_AXES} spatial axes "
                         f"are not supported by the kernel (got {n_axes}); load the model "
                         f"with storage='csr'")
    try:
        wm = WindowMatrix(kernel, w.groups, tables, w.in_extent, w.strides, w.base,
                          w.n_cols, row_scale)
    except ValueError as exc:
        raise ValueError(f"{where}: invalid window matrix: {exc}") from None
    spos, skoff, scount = [], [], []
    for a in range(n_axes):
        order, count = wm.sorted_axis(a)
        spos.append(_frozen(np.ascontiguousarray(np.take_along_axis(tables[a], order, 1))))
        skoff.append(_frozen(np.ascontiguousarray(order, np.int64)))
        scount.append(_frozen(np.ascontiguousarray(count, np.int64)))
    one = _frozen(np.zeros((1, 1), np.int64))
    for _ in range(n_axes, 3):                # pad to 3 axes with size-1 axes
        spos.append(one)
        skoff.append(one)
        scount.append(_frozen(np.ones(1, np.int64)))
    kdim = list(kernel.shape[2:]) + [1] * (3 - n_axes)
    odim = list(wm.out_spatial) + [1] * (3 - n_axes)
    strides = list(w.strides[1:]) + [0] * (3 - n_axes)
    m = wm.out_channels
    rows.add_window(_frozen(kernel.reshape(-1)), m // wm.groups, wm.group_channels, kdim,
                    odim, spos, skoff, scount, w.base, w.strides[0], strides, row_scale,
                    offset, _transposed_kernel(kernel, wm.groups, row_scale))
    per_out = np.ones(1, np.int64)
    for c in scount[:n_axes]:
        per_out = np.multiply.outer(per_out, c).reshape(-1)
    return np.tile(per_out * wm.group_channels, m), (kernel, *spos, *skoff, *scount)


def _transposed_kernel(kernel, groups, row_scale):
    """The kernel as the vectorised pass reads it (``NodeRows.add_window``): shape
    (groups, cg, prod(k), mgp), the output channels of a group last, zero-padded to
    ``mgp``, a multiple of 4; or None where the pass does not apply (a row scale, or
    fewer than 4 output channels per group, e.g. a depthwise convolution: most of each
    vector would be padding)."""
    m_per_group = kernel.shape[0] // groups
    if row_scale is not None or m_per_group < MIN_VECTOR_CHANNELS:
        return None
    mgp = -(-m_per_group // 4) * 4
    k = kernel.reshape(groups, m_per_group, kernel.shape[1], -1).transpose(0, 2, 3, 1)
    out = np.zeros(k.shape[:3] + (mgp,))
    out[..., :m_per_group] = k
    return _frozen(out)


def _window(node, sizes, where):
    """A max node's window: an owned copy (checked: integers, one row per element)."""
    w = node.window
    if not (isinstance(w, np.ndarray) and w.ndim == 2 and w.shape[0] == node.size
            and w.dtype.kind in "iu"):
        raise ValueError(f"{where}: window must be an integer array of shape "
                         f"({node.size}, K), got {type(w).__name__} {_shape(w)}")
    copy = _owned_copy(w)
    return copy.astype(np.int64, copy=False), _Source(w, (copy,))


def _check_entries(a, where):
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{where}: entries of type {a.dtype}, expected real numbers")


def _csr_part(data, indices, indptr, shape, where):
    """Checked, canonical (sorted, no duplicates) CSR parts from owned copies."""
    n_rows, n_cols = shape
    _check_entries(data, where)
    for name, a in (("indices", indices), ("indptr", indptr)):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise ValueError(f"{where}: {name} must be a vector of integers, got "
                             f"{a.dtype} {a.shape}")
    if data.shape != indices.shape:
        raise ValueError(f"{where}: {data.size} entries for {indices.size} column indices")
    if len(indptr) != n_rows + 1:
        raise ValueError(f"{where}: indptr has {len(indptr)} entries, expected "
                         f"{n_rows + 1}")
    if not (indices.dtype == indptr.dtype and indices.dtype in INDEX_DTYPES):
        indices, indptr = indices.astype(np.int64), indptr.astype(np.int64)
    _check(indptr, indices, n_cols, where)
    # Only now may scipy read the arrays (its C++ routines trust them as the kernel does).
    m = sp.csr_array((data, indices, indptr), shape=shape)
    if not m.has_canonical_format:
        m = sp.csr_array((data.astype(np.float64), indices, indptr), shape=shape,
                         copy=True)
        m.sum_duplicates()  # also sorts the indices
        data, indices, indptr = m.data, m.indices, m.indptr
    return data, indices, indptr
