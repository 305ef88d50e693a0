# cython: language_level=3
"""Cython kernels of refbbp: gradients and bias backpropagation over a node's rows (SPEC
sections 2 and 3).

The NumPy reference of the same computation is ``refbbp/bbp/reference.py``; the two must
agree (tests/bbp). Inputs are validated in Python before they get here (see
``refbbp/bbp/kernels.py``): the ``cpdef *_memview`` entry points take typed memoryviews,
release the GIL and call a ``cdef ... noexcept nogil`` implementation that only
re-checks array sizes and returns a status code; nothing inside a ``nogil`` section
raises or touches a Python object. Every entry point returns a code of the one status
table below (``STATUS_*``); ``refbbp.bbp.kernels.STATUS_MESSAGES`` gives each its
message.

A CSR source's ``indices`` and ``indptr`` are int32 or int64 (one type per source; the
fused type ``index_t`` in ``check_csr_memview``): a layer with more than 2**31 - 1
entries or columns needs int64, and the results are the same bits for either width.
Columns, entry indices and scratch positions inside the kernel are int64.

OpenMP is optional: without it (a compiler with no ``-fopenmp``) the ``prange`` loops
compile to serial loops, ``max_threads()`` is 1 and ``openmp_enabled()`` False.

A node's local matrix, its inputs stacked horizontally, is read row by row from row
sources (``NodeRows``: CSR arrays, a dense matrix, or a window matrix whose rows are
generated here). The reverse step of one node is two passes:

1. ``rows_reverse_memview`` -- the rows (in the order the structure sets) are cut into
   ``K`` contiguous blocks; ``K`` depends only on the node's shape (chosen by the
   caller), never on the number of threads. Blocks run in parallel; within a block,
   each row sends its gradient messages ``c g A`` and, with beta, computes its non-zero
   components, scores and softmax (each exponential once, in a small per-block scratch
   row) and adds its messages ``alpha[p, j] * beta[p]``, into the block's own dense
   accumulators over the input elements, ``acc_g[k, :]`` and ``acc_b[k, :]``.
2. ``bbp_reduce_memview`` -- parallel over input elements: ``out[q] = spread +
   acc[0, q] + acc[1, q] + ...`` in block order, once for each accumulator.

A node whose only input is a window matrix with a transposed kernel, under a built-in
rule, runs pass 1 as the vectorised pass instead (``_window_reverse`` here, the vector
code in ``_vector.h``): its blocks hold tiles of rows (output channels of one group at
one output position, which share their window) rather than runs of rows; everything
else -- blocks fixed by the node's shape, block accumulators, pass 2 -- is the same.

Race-free: a block's accumulator, scratch row and flag are written by the one thread
that runs the block; pass 2 writes ``out[q]`` from one thread. Deterministic: every
number is the result of the same floating-point operations in the same order (blocks
and their boundaries do not depend on the thread count, and neither does the order of
rows within a block or of blocks in the sum), so results are bitwise identical for any
number of threads. Compared with a message buffer aligned with the CSR entries plus a
transpose permutation, the accumulators are small enough to stay in cache (the caller
bounds ``K * n_cols``), so no pass makes random accesses to memory the size of the
matrix, and no per-entry buffer is needed at all.
"""

from cython.parallel cimport prange
from libc.math cimport exp, fabs, isfinite, INFINITY, NAN
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memset

import numpy as np

# OpenMP behind a guard (no ``cimport openmp``, which needs omp.h): with -fopenmp the
# compiler defines _OPENMP and these call the runtime; without it they report 1 thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int refbbp_omp_enabled(void) { return 1; }
    static int refbbp_omp_max_threads(void) { return omp_get_max_threads(); }
    static int refbbp_omp_thread_num(void) { return omp_get_thread_num(); }
    #else
    static int refbbp_omp_enabled(void) { return 0; }
    static int refbbp_omp_max_threads(void) { return 1; }
    static int refbbp_omp_thread_num(void) { return 0; }
    #endif
    """
    int refbbp_omp_enabled() noexcept nogil
    int refbbp_omp_max_threads() noexcept nogil
    int refbbp_omp_thread_num() noexcept nogil

# The vectorised window pass (GCC and clang; REFBBP_VECTOR is 0 elsewhere).
cdef extern from "_vector.h":
    int REFBBP_VECTOR
    int REFBBP_TILE
    double refbbp_exp_nonpos(double x) noexcept nogil
    double refbbp_exp_nonpos_far(double x) noexcept nogil
    void refbbp_window_tile(
        int64_t n4, const double* wt, int64_t nw4, int64_t cg, int64_t k_prod,
        int64_t mgp, int64_t n_sp, const int64_t* off, const int64_t* kid, int64_t col0,
        int64_t stride_c, const double* u, const double* gyf, const int64_t* lane_m,
        int contig, const double* lc, const double* lb, const double* lsc,
        int deviation, double temperature, int64_t* list_col, int64_t* list_w,
        double* list_u, double* ebuf, double* acc_g, double* acc_b, int64_t* lnz,
        double* lratio) noexcept nogil

# ---------------------------------------------------------------- typedefs, codes
ctypedef double float64_t
ctypedef fused index_t:
    int32_t
    int64_t

# Rules. cpdef: also visible from Python as refbbp._core.RULE_SIGN, ... (rules.py's
# Rule.code holds one of these).
cpdef enum:
    RULE_SIGN = 0        # s = -sign(b^x[p]) * kappa               (paper eq. 14)
    RULE_DEVIATION = 1   # s = |h[p] / n_p - kappa|                 (paper eq. 16)
    RULE_SCORES = 2      # s = ext[j], scores given by the caller
    RULE_WEIGHTS = 3     # alpha = ext[j], weights given by the caller (no softmax)

# Columns per chunk of the reduction (a multiple of the cache line; any value gives the
# same bits).
cdef enum:
    REDUCE_CHUNK = 2048

# The one status table of every entry point (negative: bad arguments or an invalid CSR
# structure, nothing computed; positive: numerical trouble in some rows). cpdef: also
# visible from Python as refbbp._core.STATUS_OK, ...; refbbp.bbp.kernels.STATUS_MESSAGES
# maps each to its message.
cpdef enum:
    STATUS_OK = 0
    STATUS_SHAPE = -1                 # array sizes inconsistent with each other
    STATUS_RULE = -2                  # unknown rule code, or ext missing for a user rule
    STATUS_TEMPERATURE = -3           # temperature NaN or negative
    STATUS_THREADS = -4               # n_threads < 1
    STATUS_CSR_INDPTR_START = -5      # indptr empty or indptr[0] != 0
    STATUS_CSR_INDPTR_DECREASES = -6  # indptr[r + 1] < indptr[r] for some row r
    STATUS_CSR_INDEX_RANGE = -7       # a column index outside [0, n_cols)
    STATUS_CSR_NNZ = -8               # indptr[-1] != len(indices)
    STATUS_NONFINITE = 1              # some rows produced non-finite messages
                                      # (fallback[p] = NaN)

# Internal: _rows_reverse hands the node to the vectorised pass (never returned).
cdef enum:
    STATUS_VECTOR = 100


#: Whether the kernel was built with the vectorised window pass (GCC or clang).
VECTOR_PASS = REFBBP_VECTOR != 0


def exp_nonpos(const float64_t[::1] x, bint far=False):
    """The vectorised pass's exponential (``_vector.h``), for ``x <= 0`` (for tests);
    ``far``: by its general path alone (the pass takes a shorter one, of the same bits,
    for x in [-600, 0])."""
    out = np.empty(x.shape[0])
    cdef float64_t[::1] o = out
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        o[i] = refbbp_exp_nonpos_far(x[i]) if far else refbbp_exp_nonpos(x[i])
    return out


def openmp_enabled():
    """Whether the kernel was compiled with OpenMP (else its loops run serially)."""
    return bool(refbbp_omp_enabled())


def max_threads():
    """Threads OpenMP would use by default (``omp_get_max_threads``); 1 without OpenMP."""
    return refbbp_omp_max_threads()


cpdef bint same_bytes_memview(const uint8_t[::1] a, const uint8_t[::1] b):
    """Whether ``a`` and ``b`` hold the same bytes (a predicate, not a status).

    Input:
      a[n], b[m]        -- byte views of two arrays (``x.reshape(-1).view(np.uint8)``)

    True iff n == m and the bytes are equal. Complexity O(n) (``memcmp``), no extra
    memory, without the GIL. refbbp/bbp/structure.py compares a node's matrices with
    its structure's own copies with it.
    """
    cdef Py_ssize_t n = a.shape[0]
    cdef int diff = 0
    if b.shape[0] != n:
        return False
    if n == 0:
        return True
    with nogil:
        diff = memcmp(&a[0], &b[0], <size_t>n)
    return diff == 0


cpdef int check_csr_memview(const index_t[::1] indptr, const index_t[::1] indices,
                            int64_t n_cols):
    """Check a CSR structure (the invariants of scipy's ``check_format``).

    Input:
      indptr[n_rows + 1], indices[nnz]
                        -- row pointer and column indices, one integer type
      n_cols            -- number of columns

    Returns STATUS_OK, or STATUS_CSR_INDPTR_START (indptr empty or not starting at 0),
    STATUS_CSR_INDPTR_DECREASES, STATUS_CSR_NNZ (indptr[-1] != nnz) or
    STATUS_CSR_INDEX_RANGE (an index outside [0, n_cols)), checked in that order.
    Complexity O(n_rows + nnz), no extra memory, without the GIL.
    """
    cdef int status
    with nogil:
        status = _check_csr(indptr, indices, n_cols)
    return status


cdef int _check_csr(const index_t[::1] indptr, const index_t[::1] indices,
                    int64_t n_cols) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    if n_rows < 0 or indptr[0] != 0:
        return STATUS_CSR_INDPTR_START
    for r in range(n_rows):
        if indptr[r + 1] < indptr[r]:
            return STATUS_CSR_INDPTR_DECREASES
    if indptr[n_rows] != indices.shape[0]:
        return STATUS_CSR_NNZ
    for j in range(indices.shape[0]):
        if indices[j] < 0 or indices[j] >= n_cols:
            return STATUS_CSR_INDEX_RANGE
    return STATUS_OK

# ------------------------------------------------------------------ row sources
# A node's local matrix, its inputs stacked horizontally, is read row by row from one
# Source per input: CSR arrays, a dense matrix, or a window matrix (kernel and per-axis
# tables, refbbp/network/window.py) whose rows are generated here. _emit lists row p's
# structural non-zeros (column, unscaled weight), input by input.
cdef enum:
    SRC_CSR = 0
    SRC_DENSE = 1
    SRC_WINDOW = 2
    WINDOW_AXES = 3       # window matrices of 1 to 3 spatial axes (padded to 3)

cdef struct Source:
    int kind
    int index64           # CSR: int64 (else int32) indices and indptr
    int64_t col_offset    # where this input starts in the stacked columns
    const float64_t* data # CSR data, dense matrix (row-major), or window kernel
    const int32_t* ind32
    const int32_t* ptr32
    const int64_t* ind64
    const int64_t* ptr64
    int64_t width         # dense: columns of the matrix
    # window: rows m * n_out + o, kernel (M, cg, k_prod), sorted per-axis tables
    int64_t m_per_group
    int64_t cg
    int64_t k_prod
    int64_t n_out
    int64_t kdim[3]
    int64_t odim[3]
    const int64_t* spos[3]
    const int64_t* skoff[3]
    const int64_t* scount[3]
    int64_t base
    int64_t stride_c
    int64_t stride[3]
    const float64_t* row_scale
    # the vectorised pass: the kernel transposed to (groups, cg, k_prod, mgp), output
    # channels of a group last, padded with zeros to mgp (a multiple of 4); or NULL
    const float64_t* kernel_t
    int64_t mgp


cdef class NodeRows:
    """The row sources of one node (one per input, stacked in order), for the kernels.

    Built and validated by ``refbbp/bbp/structure.py``, which hands over arrays it owns
    (read-only copies): this object keeps references to them and the raw pointers the
    ``nogil`` loops read. Nothing here checks a column index: the caller guarantees
    that every row lists columns in ``[0, n_cols)`` (``check_csr_memview`` for CSR
    sources; window tables are checked against their geometry in Python).
    """

    cdef Source* src
    cdef int n_src
    cdef int cap
    cdef list keep
    cdef readonly int64_t n_rows
    cdef readonly int64_t n_cols
    cdef readonly int64_t interleave

    def __cinit__(self, int64_t n_rows, int64_t n_cols, int n_sources):
        if n_sources < 0 or n_sources > 1024:
            raise ValueError(f"n_sources must be in [0, 1024], got {n_sources}")
        self.src = <Source*>calloc(max(n_sources, 1), sizeof(Source))
        if self.src == NULL:
            raise MemoryError()
        self.n_src = 0
        self.cap = n_sources
        self.keep = []
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.interleave = 0

    def __dealloc__(self):
        free(self.src)

    cdef Source* _next(self, int64_t col_offset) except NULL:
        if self.n_src >= self.cap:
            raise ValueError(f"NodeRows was made for {self.cap} sources; cannot add another")
        cdef Source* s = &self.src[self.n_src]
        memset(s, 0, sizeof(Source))
        s.col_offset = col_offset
        self.n_src += 1
        return s

    def add_csr(self, const float64_t[::1] data, indices, indptr, int64_t col_offset):
        """A CSR input: ``indices`` and ``indptr`` both int32 or both int64."""
        cdef const int32_t[::1] i32
        cdef const int32_t[::1] p32
        cdef const int64_t[::1] i64
        cdef const int64_t[::1] p64
        cdef Source* s = self._next(col_offset)
        s.kind = SRC_CSR
        s.data = &data[0] if data.shape[0] > 0 else NULL
        if indptr.dtype.itemsize == 8:
            i64, p64 = indices, indptr
            s.index64 = 1
            s.ind64 = &i64[0] if i64.shape[0] > 0 else NULL
            s.ptr64 = &p64[0]
        else:
            i32, p32 = indices, indptr
            s.ind32 = &i32[0] if i32.shape[0] > 0 else NULL
            s.ptr32 = &p32[0]
        self.keep += [data, indices, indptr]

    def set_interleave(self, int64_t k):
        """The order the reverse pass visits the rows in: ``k = 0``, row after row;
        ``k > 0`` (``n_rows`` a multiple of ``k``), the rows as ``k`` interleaved runs
        -- visit ``i`` is row ``(i % k) * (n_rows // k) + i // k``. A convolution's rows
        with ``k`` = its output channels: every output channel at one position, then the
        next position, so consecutive rows read the same inputs (they stay in cache).
        The order fixes the order of every sum: the same bits for any thread count."""
        if k < 0 or (k > 0 and self.n_rows % k != 0):
            raise ValueError(f"interleave must be 0 or divide n_rows = {self.n_rows}, "
                             f"got {k}")
        self.interleave = k

    def set_csr_data(self, int index, const float64_t[::1] data):
        """Replace the values of CSR source ``index`` (a max node's selection of one
        input), same length as before."""
        if not 0 <= index < self.n_src or self.src[index].kind != SRC_CSR:
            raise ValueError(f"source {index} is not a CSR source")
        cdef Source* s = &self.src[index]
        cdef int64_t nnz = s.ptr64[self.n_rows] if s.index64 else s.ptr32[self.n_rows]
        if data.shape[0] != nnz:
            raise ValueError(f"source {index} has {nnz} entries, got {data.shape[0]} values")
        self.src[index].data = &data[0] if data.shape[0] > 0 else NULL
        self.keep.append(data)

    def add_dense(self, const float64_t[:, ::1] matrix, int64_t col_offset):
        """A dense input, ``matrix`` of shape (n_rows, width), row-major."""
        cdef Source* s = self._next(col_offset)
        s.kind = SRC_DENSE
        s.width = matrix.shape[1]
        s.data = &matrix[0, 0] if matrix.shape[0] * matrix.shape[1] > 0 else NULL
        self.keep.append(matrix)

    def add_window(self, const float64_t[::1] kernel, int64_t m_per_group, int64_t cg,
                   kdim, odim, spos, skoff, scount, int64_t base, int64_t stride_c,
                   stride, row_scale, int64_t col_offset, kernel_t=None):
        """A window input: ``kernel`` flat (M * cg * prod(kdim)); per axis (3, padded
        with size-1 axes) ``kdim``, ``odim``, the sorted tables ``spos``/``skoff``
        (int64, shape (odim, kdim): positions by increasing value, and their kernel
        offsets) with ``scount`` valid ones per output position; column of input
        ``(c, i)`` = ``col_offset + base + c * stride_c + sum_a i_a * stride[a]``.

        ``kernel_t`` (optional; only without ``row_scale``): the kernel as an array of
        shape (groups, cg, prod(kdim), mgp), the output channels of a group last and
        zero-padded to ``mgp``, a multiple of 4. With it, a node whose only input this
        is runs the built-in rules through the vectorised pass (``_vector.h``)."""
        cdef Source* s = self._next(col_offset)
        cdef const int64_t[:, ::1] t
        cdef const int64_t[::1] cnt
        cdef const float64_t[::1] rs
        cdef const float64_t[:, :, :, ::1] kt
        cdef int a
        s.kind = SRC_WINDOW
        s.data = &kernel[0]
        s.m_per_group, s.cg, s.base, s.stride_c = m_per_group, cg, base, stride_c
        s.k_prod = 1
        s.n_out = 1
        for a in range(WINDOW_AXES):
            s.kdim[a], s.odim[a], s.stride[a] = kdim[a], odim[a], stride[a]
            s.k_prod *= kdim[a]
            s.n_out *= odim[a]
            t = spos[a]
            s.spos[a] = &t[0, 0]
            t = skoff[a]
            s.skoff[a] = &t[0, 0]
            cnt = scount[a]
            s.scount[a] = &cnt[0]
        if row_scale is not None:
            rs = row_scale
            s.row_scale = &rs[0]
        if kernel_t is not None:
            kt = kernel_t
            if (row_scale is not None or kt.shape[0] * s.m_per_group * s.cg * s.k_prod
                    != kernel.shape[0] or kt.shape[1] != s.cg or kt.shape[2] != s.k_prod
                    or kt.shape[3] < s.m_per_group or kt.shape[3] % 4 != 0
                    or kt.shape[3] >= s.m_per_group + 4):
                raise ValueError("kernel_t does not fit the kernel (or comes with a "
                                 "row_scale)")
            s.kernel_t = &kt[0, 0, 0, 0]
            s.mgp = kt.shape[3]
        self.keep += [kernel, list(spos), list(skoff), list(scount), row_scale, kernel_t]

    def vector_workspace(self):
        """Per thread, the float64 and int64 scratch sizes the vectorised pass needs:
        ``(n_float, n_int)``, or ``(0, 0)`` if these rows never take it."""
        cdef const Source* s = &self.src[0]
        if not self.vector():
            return 0, 0
        return (s.cg * s.k_prod * REFBBP_TILE + 6 * REFBBP_TILE,
                2 * REFBBP_TILE + 2 * s.k_prod)

    cdef bint vector(self) noexcept nogil:
        """Whether the built-in rules run through the vectorised pass."""
        return (REFBBP_VECTOR != 0 and self.n_src == 1 and self.src[0].kind == SRC_WINDOW
                and self.src[0].kernel_t != NULL)


cdef struct WindowRow:
    # Where row p of a window source is: output channel m of group g, and per axis the
    # sorted input positions and kernel offsets at its output position, and their count.
    int64_t m
    int64_t g
    const int64_t* pos[3]
    const int64_t* koff[3]
    int64_t count[3]


cdef inline void _window_at(const Source* s, Py_ssize_t p, WindowRow* r) noexcept nogil:
    """Fill ``r`` for row ``p = m * n_out + o`` of window source ``s``."""
    cdef int64_t o
    cdef int64_t oa[3]
    cdef int a
    r.m = p // s.n_out
    o = p - r.m * s.n_out
    oa[2] = o % s.odim[2]
    o = o // s.odim[2]
    oa[1] = o % s.odim[1]
    oa[0] = o // s.odim[1]
    r.g = r.m // s.m_per_group
    for a in range(WINDOW_AXES):
        r.pos[a] = s.spos[a] + oa[a] * s.kdim[a]
        r.koff[a] = s.skoff[a] + oa[a] * s.kdim[a]
        r.count[a] = s.scount[a][oa[a]]


cdef inline Py_ssize_t _emit(const Source* srcs, int n_src, Py_ssize_t p, int64_t* cols,
                             float64_t* w) noexcept nogil:
    """Row ``p``'s structural non-zeros, input by input: columns into ``cols`` and
    unscaled weights into ``w``; returns their number."""
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t j, lo, hi, q
    cdef int si
    cdef const Source* s
    cdef WindowRow wr
    cdef int64_t m, g, c, col_c, col0, col1, kk0, kk1, n0, n1, n2
    cdef int64_t j0, j1, j2
    cdef const int64_t* p0
    cdef const int64_t* p1
    cdef const int64_t* p2
    cdef const int64_t* k0
    cdef const int64_t* k1
    cdef const int64_t* k2
    cdef const float64_t* wb
    cdef double rs
    for si in range(n_src):
        s = &srcs[si]
        if s.kind == SRC_CSR:
            if s.index64:
                lo, hi = s.ptr64[p], s.ptr64[p + 1]
                for j in range(lo, hi):
                    cols[n] = s.col_offset + s.ind64[j]
                    w[n] = s.data[j]
                    n += 1
            else:
                lo, hi = s.ptr32[p], s.ptr32[p + 1]
                for j in range(lo, hi):
                    cols[n] = s.col_offset + s.ind32[j]
                    w[n] = s.data[j]
                    n += 1
        elif s.kind == SRC_DENSE:
            wb = s.data + p * s.width
            for q in range(s.width):
                cols[n] = s.col_offset + q
                w[n] = wb[q]
                n += 1
        else:
            _window_at(s, p, &wr)
            m, g = wr.m, wr.g
            p0, p1, p2 = wr.pos[0], wr.pos[1], wr.pos[2]
            k0, k1, k2 = wr.koff[0], wr.koff[1], wr.koff[2]
            n0, n1, n2 = wr.count[0], wr.count[1], wr.count[2]
            rs = s.row_scale[p] if s.row_scale != NULL else 1.0
            for c in range(s.cg):
                col_c = s.col_offset + s.base + (g * s.cg + c) * s.stride_c
                wb = s.data + (m * s.cg + c) * s.k_prod
                for j0 in range(n0):
                    col0 = col_c + p0[j0] * s.stride[0]
                    kk0 = k0[j0] * s.kdim[1]
                    for j1 in range(n1):
                        col1 = col0 + p1[j1] * s.stride[1]
                        kk1 = (kk0 + k1[j1]) * s.kdim[2]
                        for j2 in range(n2):
                            cols[n] = col1 + p2[j2] * s.stride[2]
                            # as the unrolled matrix holds it: kernel entry times the
                            # row scale (x * 1.0 is x: the same bits without one)
                            w[n] = wb[kk1 + k2[j2]] * rs
                            n += 1
    return n


def emit_row(NodeRows rows, Py_ssize_t p):
    """Row ``p`` as the kernels see it: ``(columns, weights)`` (for tests)."""
    if not 0 <= p < rows.n_rows:
        raise IndexError(f"row {p} outside [0, {rows.n_rows})")
    cdef Py_ssize_t cap = max(_row_length(rows.src, rows.n_src, p), 1)
    cdef int64_t[::1] cols = np.empty(cap, np.int64)
    cdef float64_t[::1] w = np.empty(cap, np.float64)
    cdef Py_ssize_t n = _emit(rows.src, rows.n_src, p, &cols[0], &w[0])
    return np.asarray(cols)[:n].copy(), np.asarray(w)[:n].copy()


def emit_all(NodeRows rows, const int64_t[::1] entry_start, int64_t[::1] cols,
             float64_t[::1] w):
    """Every row's structural non-zeros, row after row: row ``p``'s go to
    ``cols[entry_start[p]:entry_start[p + 1]]`` and ``w[...]`` (user rules; O(nnz)).
    ``entry_start`` must be the rows' own (``NodeStructure.entry_start``)."""
    cdef Py_ssize_t p
    cdef int64_t* cp
    cdef float64_t* wp
    if (entry_start.shape[0] != rows.n_rows + 1
            or not _check_entry_start(rows.src, rows.n_src, rows.n_rows, entry_start)
            or cols.shape[0] != entry_start[rows.n_rows] or w.shape[0] != cols.shape[0]):
        raise ValueError("emit_all: entry_start or the array sizes do not fit the rows")
    if cols.shape[0] == 0:
        return None
    cp, wp = &cols[0], &w[0]
    with nogil:
        for p in range(rows.n_rows):
            _emit(rows.src, rows.n_src, p, cp + entry_start[p], wp + entry_start[p])
    return None


cdef Py_ssize_t _row_length(const Source* srcs, int n_src, Py_ssize_t p) noexcept nogil:
    """The number of entries _emit lists for row ``p`` (exact; O(number of sources))."""
    cdef Py_ssize_t total = 0
    cdef int si
    cdef const Source* s
    cdef WindowRow wr
    for si in range(n_src):
        s = &srcs[si]
        if s.kind == SRC_CSR:
            total += (s.ptr64[p + 1] - s.ptr64[p]) if s.index64 else (s.ptr32[p + 1] - s.ptr32[p])
        elif s.kind == SRC_DENSE:
            total += s.width
        else:
            _window_at(s, p, &wr)
            total += s.cg * wr.count[0] * wr.count[1] * wr.count[2]
    return total


cdef int _check_entry_start(const Source* srcs, int n_src, int64_t n_rows,
                            const int64_t[::1] entry_start) noexcept nogil:
    """Whether ``entry_start`` (n_rows + 1) is the rows' own: starts at 0 and steps by
    every row's exact length (O(n_rows)); the workspaces are sized from it."""
    cdef Py_ssize_t r
    if entry_start.shape[0] != n_rows + 1 or entry_start[0] != 0:
        return 0
    for r in range(n_rows):
        if entry_start[r + 1] - entry_start[r] != _row_length(srcs, n_src, r):
            return 0
    return 1


# -------------------------------------------------------------------- pass 1
cdef inline int _send(Py_ssize_t p, Py_ssize_t nz, float64_t* scratch,
                      const int64_t* to, const float64_t* ext_c, double b, int rule,
                      double temperature, const float64_t* bias_x, const float64_t* h,
                      float64_t* acc, float64_t* fallback) noexcept nogil:
    """SPEC 3.3-3.5 for row ``p``'s ``nz >= 1`` non-zero components, compacted: their
    kappa in ``scratch`` (overwritten by scores, then softmax terms), the column each
    message goes to in ``to``, and, for a user rule, their scores or weights in
    ``ext_c``. Adds ``alpha * b`` into ``acc``; returns 1 if the messages are not
    finite (and sets fallback[p] = NaN), else 0. Each exponential is computed once."""
    cdef Py_ssize_t i
    cdef double s, m, e, total, sgn, target, ratio
    if rule == RULE_WEIGHTS:          # SPEC 3.3 user weights: alpha given, no softmax
        for i in range(nz):
            acc[to[i]] += ext_c[i] * b
        return 0
    # SPEC 3.3: scores, in place of kappa.
    if rule == RULE_SIGN:
        sgn = 0.0
        if bias_x[p] > 0.0:
            sgn = -1.0
        elif bias_x[p] < 0.0:
            sgn = 1.0
        for i in range(nz):
            scratch[i] = sgn * scratch[i]
    elif rule == RULE_DEVIATION:
        target = h[p] / nz
        for i in range(nz):
            scratch[i] = fabs(target - scratch[i])
    else:
        for i in range(nz):
            scratch[i] = ext_c[i]
    # SPEC 3.4: softmax(s / T) with the row maximum subtracted.
    m = scratch[0]
    for i in range(1, nz):
        if scratch[i] > m:
            m = scratch[i]
    total = 0.0
    if temperature == INFINITY:       # uniform over the non-zero components
        for i in range(nz):
            scratch[i] = 1.0
        total = <double>nz
    elif temperature == 0.0:          # the maximum-score components share equally
        for i in range(nz):
            e = 1.0 if scratch[i] == m else 0.0
            scratch[i] = e
            total += e
    elif temperature == 1.0:          # s / 1 is exact: skip the division, same bits
        for i in range(nz):
            s = scratch[i]
            e = 1.0 if s == m else exp(s - m)
            scratch[i] = e
            total += e
    else:
        for i in range(nz):
            s = scratch[i]
            e = 1.0 if s == m else exp((s - m) / temperature)
            scratch[i] = e
            total += e
    # SPEC 3.5: messages alpha * beta = e * (beta / total).
    ratio = b / total
    if not isfinite(ratio):
        fallback[p] = NAN             # marks the row for the caller
        return 1
    for i in range(nz):
        acc[to[i]] += scratch[i] * ratio
    return 0


cdef inline int _row(Py_ssize_t p, Py_ssize_t n, const int64_t* cols, float64_t* w,
                     int64_t entry0, const float64_t* u, double c,
                     const float64_t* bias_x, const float64_t* h, double b,
                     const float64_t* ext, int rule, double temperature,
                     float64_t* scratch, int64_t* where, float64_t* acc,
                     float64_t* fallback, double gy, float64_t* acc_g) noexcept nogil:
    """Row ``p`` from its ``n >= 1`` emitted entries ``cols``/``w`` (``entry0``: the
    node-wide index of its first entry, for ``ext``), with ``b = beta[p] != 0``: its
    gradient messages ``gy * w`` into ``acc_g`` (if ``gy != 0``) and its BBp messages
    into ``acc``; returns 1 if the latter are not finite, else 0.

    The first loop compacts the non-zero components: kappa into ``scratch``, their
    columns into ``where`` and, for a user rule, their scores/weights into ``w`` itself
    (position ``nz <= j``: already read), so the loops after it see only non-zero
    components (_send).
    """
    cdef Py_ssize_t j, nz = 0
    cdef double uq, k, e
    cdef int user = ext != NULL
    # SPEC 3.2: kappa[p, j] = A^x[p, q] * u[q] = (c[p] * A[p, q]) * u[q]; only non-zero
    # components take part (zero inputs are skipped before any multiplication).
    for j in range(n):
        if gy != 0.0:
            acc_g[cols[j]] += gy * w[j]            # SPEC 2: g_u += (A^x)^T g_h
        uq = u[cols[j]]
        if uq != 0.0:
            k = (c * w[j]) * uq
            if k != 0.0:
                scratch[nz] = k
                where[nz] = cols[j]
                if user:
                    w[nz] = ext[entry0 + j]
                nz += 1
    if nz == 0:                       # SPEC 3.6: uniform over the unscaled row
        e = b / n
        for j in range(n):
            acc[cols[j]] += e
        fallback[p] = fabs(b)
        return 0
    return _send(p, nz, scratch, where, w, b, rule, temperature, bias_x, h, acc, fallback)


cdef inline void _spread(float64_t* acc, double e, int64_t cg, int64_t n_sp,
                         int64_t col_c, int64_t stride_c, const int64_t* off) noexcept nogil:
    """SPEC 3.6 for a window row with no non-zero component: ``e`` (its beta over its
    ``cg * n_sp`` structural non-zeros) to each of them."""
    cdef int64_t cc, t
    for cc in range(cg):
        for t in range(n_sp):
            acc[col_c + cc * stride_c + off[t]] += e


cdef int64_t _window_spots(const Source* s, Py_ssize_t p, int64_t* off,
                           int64_t* kid) noexcept nogil:
    """Row ``p``'s kernel positions, in _emit's order: column offset ``off[t]`` (from
    the row's channel column) and kernel index ``kid[t]``; returns their number."""
    cdef WindowRow wr
    cdef int64_t j0, j1, j2, n = 0
    _window_at(s, p, &wr)
    for j0 in range(wr.count[0]):
        for j1 in range(wr.count[1]):
            for j2 in range(wr.count[2]):
                off[n] = (wr.pos[0][j0] * s.stride[0] + wr.pos[1][j1] * s.stride[1]
                          + wr.pos[2][j2] * s.stride[2])
                kid[n] = (wr.koff[0][j0] * s.kdim[1] + wr.koff[1][j1]) * s.kdim[2] \
                    + wr.koff[2][j2]
                n += 1
    return n


cdef enum:
    WINDOW_SPOTS = 64     # kernel positions a row lists in a flat table (else nested loops)


cdef inline int _window_row(const Source* s, Py_ssize_t p, const float64_t* u, double c,
                            const float64_t* bias_x, const float64_t* h, double b,
                            int rule, double temperature, float64_t* scratch,
                            int64_t* where, float64_t* acc, float64_t* fallback, double gy,
                            float64_t* acc_g) noexcept nogil:
    """_emit and _row in one for a node whose only input is a window matrix (built-in
    rules): the row's entries are generated and used in the same loop, never stored;
    only its non-zero components are compacted. The row's kernel positions (column
    offset, kernel index) are listed once, then every input channel runs over them:
    the same entries in the same order as _emit, hence the same bits as _emit then
    _row. Returns _row's result (the caller has already handled a row with no
    structural non-zero)."""
    cdef WindowRow wr
    cdef int64_t m, g, cc, col_c, col, n_sp, t, n
    cdef int64_t off[WINDOW_SPOTS]
    cdef int64_t kid[WINDOW_SPOTS]
    cdef const float64_t* wb
    cdef double rs, wv, uq, k, e
    cdef Py_ssize_t nz = 0
    _window_at(s, p, &wr)
    m, g = wr.m, wr.g
    n_sp = wr.count[0] * wr.count[1] * wr.count[2]
    n = s.cg * n_sp
    if n == 0:
        return 0
    if n_sp > WINDOW_SPOTS:           # a large kernel: the general path
        return -2
    _window_spots(s, p, off, kid)
    rs = s.row_scale[p] if s.row_scale != NULL else 1.0
    for cc in range(s.cg):
        col_c = s.col_offset + s.base + (g * s.cg + cc) * s.stride_c
        wb = s.data + (m * s.cg + cc) * s.k_prod
        for t in range(n_sp):
            col = col_c + off[t]
            wv = wb[kid[t]] * rs
            if gy != 0.0:
                acc_g[col] += gy * wv          # SPEC 2: g_u += (A^x)^T g_h
            if b != 0.0:
                uq = u[col]
                if uq != 0.0:
                    k = (c * wv) * uq          # SPEC 3.2: kappa
                    if k != 0.0:
                        scratch[nz] = k
                        where[nz] = col
                        nz += 1
    if b == 0.0:
        return 0
    if nz == 0:                       # SPEC 3.6: uniform over the unscaled row
        _spread(acc, b / n, s.cg, n_sp, s.col_offset + s.base + g * s.cg * s.stride_c,
                s.stride_c, off)
        fallback[p] = fabs(b)
        return 0
    return _send(p, nz, scratch, where, NULL, b, rule, temperature, bias_x, h, acc, fallback)


cpdef int rows_reverse_memview(NodeRows rows, const int64_t[::1] entry_start,
                               const float64_t[::1] u, const float64_t[::1] slope,
                               const float64_t[::1] bias_x, const float64_t[::1] h,
                               const float64_t[::1] g, const float64_t[::1] beta,
                               const float64_t[::1] ext, int rule, double temperature,
                               float64_t[:, ::1] acc_g, float64_t[:, ::1] acc_b,
                               int64_t[:, ::1] cols, float64_t[:, ::1] w,
                               float64_t[:, ::1] scratch, int64_t[:, ::1] where,
                               uint8_t[::1] used_g, uint8_t[::1] used_b,
                               float64_t[::1] fallback, float64_t[:, ::1] vec_f,
                               int64_t[:, ::1] vec_i, int n_threads):
    """The reverse pass of one node: gradient and BBp messages of every row, summed per
    block (SPEC 2 and 3.2-3.6), from one emission of each row.

    Input:
      rows              -- the node's row sources (inputs stacked), n_rows x n_cols
      entry_start[n_rows + 1]
                        -- node-wide index of each row's first entry (for ext);
                           checked against the rows in O(n_rows), except where the
                           vectorised pass is taken (it does not read it)
      u[n_cols]         -- the node's (stacked) input values
      slope[n_rows]     -- activation slopes c (1 without activation)
      bias_x[n_rows]    -- the node's local bias b^x = c * b + d
      h[n_rows]         -- the node's output values
      g[n_rows] or g[0] -- df/dh of the node; g[0]: no gradient messages
      beta[n_rows]      -- the node's total bias attribution beta_n (received + own)
      ext[entry_start[n_rows]] or ext[0]
                        -- user scores (RULE_SCORES) or weights (RULE_WEIGHTS), by
                           node-wide entry; read only at non-zero components
      rule, temperature -- as for BBp (RULE_*, T in [0, inf])
      n_threads >= 1    -- at most min(n_threads, K) threads run (K blocks)
    Workspace and output (must be preallocated):
      acc_g[K, n_cols]  -- block k's gradient messages sum_p c[p] g[p] A[p, q]
                           (written only if used_g[k])
      acc_b[K, n_cols]  -- block k's BBp messages alpha[p, q] * beta[p] (written only
                           if used_b[k])
      cols[K, >= max row], w[K, >= max row], scratch[K, >= max row],
      where[K, >= max row]
                        -- per-block scratch rows
      used_g[K], used_b[K]
      fallback[n_rows]  -- |beta[p]| if row p took a fallback of SPEC 3.6, else 0;
                           NaN where the row produced non-finite messages. Rows with
                           no structural non-zero send nothing: the caller spreads
                           their beta over every column (bbp_reduce_memview).
      vec_f[threads, nf], vec_i[threads, ni]
                        -- per-thread scratch of the vectorised pass, (nf, ni) =
                           rows.vector_workspace() (read only if the pass is taken)

    Block k holds visits [k * n_rows // K, (k + 1) * n_rows // K) of the rows' order
    (rows.interleave: row after row, or interleaved runs); K is the caller's
    choice and must not depend on n_threads: it fixes the order of every sum, so the
    results are bitwise identical for any thread count. A window node with a
    transposed kernel (rows.vector_workspace() not (0, 0)) and a built-in rule takes the
    vectorised pass instead (_window_reverse): block k then holds tiles
    [k * W // K, (k + 1) * W // K) of its W tiles of rows. A row is emitted once if it
    has a gradient (c[p] g[p] != 0) or beta (beta[p] != 0) to send, else skipped.
    Complexity O(nnz + n_rows + K * n_cols), at most one exp per non-zero component.
    Returns STATUS_OK, STATUS_NONFINITE, or STATUS_SHAPE / STATUS_RULE /
    STATUS_TEMPERATURE / STATUS_THREADS (nothing written). Runs without the GIL.
    """
    cdef int status
    with nogil:
        status = _rows_reverse(rows.src, rows.n_src, rows.n_rows, rows.n_cols,
                               rows.interleave, entry_start, u, slope, bias_x, h, g, beta, ext, rule,
                               temperature, acc_g, acc_b, cols, w, scratch, where,
                               used_g, used_b, fallback, n_threads)
        if status == STATUS_VECTOR:
            status = _window_reverse(&rows.src[0], rows.n_rows, rows.n_cols, u, slope,
                                     bias_x, h, g, beta, rule, temperature, acc_g, acc_b,
                                     cols, scratch, where, used_g, used_b, fallback,
                                     vec_f, vec_i, n_threads)
    return status


cdef inline float64_t* _block_acc(float64_t* acc, uint8_t* used,
                                  Py_ssize_t n_cols) noexcept nogil:
    """A block's accumulator row, zeroed the first time the block uses it."""
    if used[0] == 0:
        memset(acc, 0, n_cols * sizeof(float64_t))
        used[0] = 1
    return acc


cdef int _rows_reverse(const Source* srcs, int n_src, int64_t n_rows, int64_t n_cols,
                       int64_t interleave, const int64_t[::1] entry_start, const float64_t[::1] u,
                       const float64_t[::1] slope, const float64_t[::1] bias_x,
                       const float64_t[::1] h, const float64_t[::1] g,
                       const float64_t[::1] beta, const float64_t[::1] ext, int rule,
                       double temperature, float64_t[:, ::1] acc_g,
                       float64_t[:, ::1] acc_b, int64_t[:, ::1] cols,
                       float64_t[:, ::1] w, float64_t[:, ::1] scratch,
                       int64_t[:, ::1] where, uint8_t[::1] used_g, uint8_t[::1] used_b,
                       float64_t[::1] fallback, int n_threads) noexcept nogil:
    """rows_reverse_memview without the GIL."""
    cdef Py_ssize_t n_blocks = acc_b.shape[0]
    cdef Py_ssize_t kb, i, p, lo, hi, r, n, j, longest = 0
    cdef int64_t run = n_rows // interleave if interleave > 0 else 0
    cdef int bad = 0
    cdef int threads
    cdef int grad = g.shape[0] > 0
    cdef int direct, vector, a
    cdef int64_t most
    cdef double gy, b
    cdef const float64_t* ext_ptr = NULL
    cdef float64_t* ag
    cdef float64_t* ab
    if (u.shape[0] != n_cols or slope.shape[0] != n_rows or bias_x.shape[0] != n_rows
            or h.shape[0] != n_rows or beta.shape[0] != n_rows
            or fallback.shape[0] != n_rows or (grad and g.shape[0] != n_rows)
            or entry_start.shape[0] != n_rows + 1 or n_blocks < 1
            or acc_b.shape[1] != n_cols or acc_g.shape[0] != n_blocks
            or acc_g.shape[1] != n_cols or cols.shape[0] != n_blocks
            or w.shape[0] != n_blocks or scratch.shape[0] != n_blocks
            or where.shape[0] != n_blocks or used_g.shape[0] != n_blocks
            or used_b.shape[0] != n_blocks):
        return STATUS_SHAPE
    # The vectorised pass (one window input with a transposed kernel, a built-in rule)
    # never reads entry_start: its longest row, cg times the product of the per-axis
    # maximum counts, comes from the window's tables (O(output extent), not O(n_rows)).
    vector = (n_src == 1 and srcs[0].kind == SRC_WINDOW and REFBBP_VECTOR != 0
              and srcs[0].kernel_t != NULL and srcs[0].row_scale == NULL
              and RULE_SIGN <= rule <= RULE_DEVIATION)
    if vector:
        longest = srcs[0].cg
        for a in range(WINDOW_AXES):
            most = 0
            for r in range(srcs[0].odim[a]):
                if srcs[0].scount[a][r] > most:
                    most = srcs[0].scount[a][r]
            longest *= most
    else:
        if not _check_entry_start(srcs, n_src, n_rows, entry_start):
            return STATUS_SHAPE
        for r in range(n_rows):
            if entry_start[r + 1] - entry_start[r] > longest:
                longest = entry_start[r + 1] - entry_start[r]
    if (cols.shape[1] < longest or w.shape[1] < longest or scratch.shape[1] < longest
            or where.shape[1] < longest or (longest > 0 and n_cols == 0)):
        return STATUS_SHAPE
    if rule < RULE_SIGN or rule > RULE_WEIGHTS:
        return STATUS_RULE
    if rule >= RULE_SCORES:
        if ext.shape[0] != entry_start[n_rows]:
            return STATUS_RULE
        if ext.shape[0] > 0:
            ext_ptr = &ext[0]
    if not (temperature >= 0.0):
        return STATUS_TEMPERATURE
    if n_threads < 1:
        return STATUS_THREADS
    threads = n_threads if n_threads < n_blocks else <int>n_blocks
    # One window input and a built-in rule: generate and use each row in one loop, or
    # (with a transposed kernel) take the vectorised pass.
    direct = n_src == 1 and srcs[0].kind == SRC_WINDOW and rule <= RULE_DEVIATION
    if vector:
        return STATUS_VECTOR
    for kb in prange(n_blocks, schedule='static', chunksize=1, num_threads=threads):
        lo = kb * n_rows // n_blocks
        hi = (kb + 1) * n_rows // n_blocks
        used_g[kb] = 0
        used_b[kb] = 0
        for i in range(lo, hi):
            p = i if interleave == 0 else (i % interleave) * run + i // interleave
            fallback[p] = 0.0
            b = beta[p]
            gy = slope[p] * g[p] if grad else 0.0
            if b == 0.0 and gy == 0.0:       # nothing to send: skip the row
                continue
            if entry_start[p + 1] == entry_start[p]:
                if b != 0.0:                 # SPEC 3.6, no structural non-zero: the
                    fallback[p] = fabs(b)    # caller spreads it over every input
                continue
            # SPEC 2: g_u += (A^x)^T g_h into ag; BBp messages into ab
            ag = _block_acc(&acc_g[kb, 0], &used_g[kb], n_cols) if gy != 0.0 else NULL
            ab = _block_acc(&acc_b[kb, 0], &used_b[kb], n_cols) if b != 0.0 else NULL
            if direct:                       # one window input: rows never stored
                r = _window_row(&srcs[0], p, &u[0], slope[p], &bias_x[0], &h[0], b, rule,
                                temperature, &scratch[kb, 0], &where[kb, 0], ab,
                                &fallback[0], gy, ag)
                if r != -2:                  # -2: a kernel too large for the flat table
                    bad += r
                    continue
            n = _emit(srcs, n_src, p, &cols[kb, 0], &w[kb, 0])
            if b != 0.0:                     # the gradient goes in _row's first loop
                bad += _row(p, n, &cols[kb, 0], &w[kb, 0], entry_start[p], &u[0],
                            slope[p], &bias_x[0], &h[0], b, ext_ptr, rule, temperature,
                            &scratch[kb, 0], &where[kb, 0], ab, &fallback[0], gy, ag)
            else:
                for j in range(n):
                    ag[cols[kb, j]] += gy * w[kb, j]
    return STATUS_NONFINITE if bad else STATUS_OK


cdef int _window_reverse(const Source* s, int64_t n_rows, int64_t n_cols,
                         const float64_t[::1] u, const float64_t[::1] slope,
                         const float64_t[::1] bias_x, const float64_t[::1] h,
                         const float64_t[::1] g, const float64_t[::1] beta, int rule,
                         double temperature, float64_t[:, ::1] acc_g,
                         float64_t[:, ::1] acc_b, int64_t[:, ::1] cols,
                         float64_t[:, ::1] scratch, int64_t[:, ::1] where,
                         uint8_t[::1] used_g, uint8_t[::1] used_b,
                         float64_t[::1] fallback, float64_t[:, ::1] vec_f,
                         int64_t[:, ::1] vec_i, int n_threads) noexcept nogil:
    """The reverse pass of a node whose only input is a window matrix with a transposed
    kernel, for a built-in rule (arguments as rows_reverse_memview, already checked).

    The rows are taken in tiles: up to REFBBP_TILE output channels of one group at one
    output position, which share their window (refbbp_window_tile computes their
    messages four rows at a time). Tiles are ordered by position, then group, then
    channel; block k holds tiles [k * W // K, (k + 1) * W // K) of the W tiles. A row
    with beta and no non-zero component spreads its beta uniformly over its window here
    (SPEC 3.6), as _window_row does.
    """
    cdef Py_ssize_t n_blocks = acc_b.shape[0]
    cdef int64_t n_out = s.n_out
    cdef int64_t n_groups = (n_rows // n_out) // s.m_per_group
    cdef int64_t n_tiles = (s.mgp + REFBBP_TILE - 1) // REFBBP_TILE
    cdef int64_t n_work = n_out * n_groups * n_tiles
    cdef int64_t nf = s.cg * s.k_prod * REFBBP_TILE + 6 * REFBBP_TILE
    cdef int64_t ni = 2 * REFBBP_TILE + 2 * s.k_prod
    cdef int grad = g.shape[0] > 0
    cdef int deviation = rule == RULE_DEVIATION
    cdef int threads = n_threads if n_threads < n_blocks else <int>n_blocks
    cdef int bad = 0
    cdef Py_ssize_t kb, item, lo, hi
    cdef int64_t o, last_o, gi, tile, m0, m1, width, n4, nw4, i, m, p, n_sp, col_c, tid
    cdef int any_g, any_b
    cdef double b, gy
    cdef float64_t* fbuf
    cdef int64_t* ibuf
    cdef float64_t* lc
    cdef float64_t* lb
    cdef float64_t* gyf
    cdef float64_t* lsc
    cdef float64_t* lratio
    cdef float64_t* ebuf
    cdef int64_t* lnz
    cdef int64_t* lane_m
    cdef int64_t* off
    cdef int64_t* kid
    cdef float64_t* ag
    cdef float64_t* ab
    if (vec_f.shape[0] < threads or vec_i.shape[0] < threads or vec_f.shape[1] < nf
            or vec_i.shape[1] < ni or s.mgp < 1):
        return STATUS_SHAPE       # (cols, where, scratch: a row each, checked by the caller)
    # dynamic: the blocks' work varies with their live rows; a block sums the same
    # numbers in the same order whichever thread runs it
    for kb in prange(n_blocks, schedule='dynamic', chunksize=1, num_threads=threads):
        tid = refbbp_omp_thread_num()
        fbuf = &vec_f[tid, 0]
        ibuf = &vec_i[tid, 0]
        lc = fbuf
        lb = fbuf + REFBBP_TILE
        gyf = fbuf + 2 * REFBBP_TILE
        lsc = fbuf + 3 * REFBBP_TILE
        lratio = fbuf + 4 * REFBBP_TILE
        ebuf = fbuf + 6 * REFBBP_TILE
        lnz = ibuf
        lane_m = ibuf + REFBBP_TILE
        off = lane_m + REFBBP_TILE
        kid = off + s.k_prod
        lo = kb * n_work // n_blocks
        hi = (kb + 1) * n_work // n_blocks
        used_g[kb] = 0
        used_b[kb] = 0
        last_o = -1
        n_sp = 0
        for item in range(lo, hi):
            o = item // (n_groups * n_tiles)
            gi = (item // n_tiles) % n_groups
            tile = item % n_tiles
            if o != last_o:               # the window of position o (row o: m = 0)
                n_sp = _window_spots(s, o, off, kid)
                last_o = o
            # the tile's rows that have something to send through their components
            # (c != 0), packed into lanes; the rest at most spread beta (SPEC 3.6)
            m0 = tile * REFBBP_TILE
            m1 = m0 + REFBBP_TILE
            if m1 > s.mgp:
                m1 = s.mgp
            nw4 = (m1 - m0) // 4
            if m1 > s.m_per_group:
                m1 = s.m_per_group
            width = 0
            any_g = 0
            any_b = 0
            col_c = s.col_offset + s.base + gi * s.cg * s.stride_c
            for m in range(m0, m1):
                p = (gi * s.m_per_group + m) * n_out + o
                fallback[p] = 0.0
                b = beta[p]
                gy = slope[p] * g[p] if grad else 0.0
                gyf[m - m0] = 0.0
                if slope[p] == 0.0 or (b == 0.0 and gy == 0.0):
                    if b != 0.0 and n_sp > 0:     # no non-zero component: SPEC 3.6
                        _spread(_block_acc(&acc_b[kb, 0], &used_b[kb], n_cols),
                                b / (s.cg * n_sp), s.cg, n_sp, col_c, s.stride_c, off)
                        fallback[p] = fabs(b)
                    elif b != 0.0:                # no structural non-zero: the caller
                        fallback[p] = fabs(b)
                    continue
                lane_m[width] = m - m0
                lc[width] = slope[p]
                lb[width] = b
                gyf[m - m0] = gy
                if rule == RULE_SIGN:
                    lsc[width] = -1.0 if bias_x[p] > 0.0 else (1.0 if bias_x[p] < 0.0
                                                                 else 0.0)
                else:
                    lsc[width] = h[p]
                any_g = any_g or gy != 0.0
                any_b = any_b or b != 0.0
                width = width + 1
            if width == 0 or n_sp == 0:
                if n_sp == 0:
                    for i in range(width):
                        if lb[i] != 0.0:          # no structural non-zero: the caller
                            fallback[(gi * s.m_per_group + m0 + lane_m[i]) * n_out + o] \
                                = fabs(lb[i])
                continue
            for i in range(m1 - m0, 4 * nw4):     # channels past the group's last
                gyf[i] = 0.0
            n4 = (width + 3) // 4
            for i in range(width, 4 * n4):        # padding lanes send nothing
                lane_m[i] = i
                lc[i] = 0.0
                lb[i] = 0.0
                lsc[i] = 0.0
            ag = _block_acc(&acc_g[kb, 0], &used_g[kb], n_cols) if any_g else NULL
            ab = _block_acc(&acc_b[kb, 0], &used_b[kb], n_cols) if any_b else NULL
            refbbp_window_tile(n4, s.kernel_t + gi * s.cg * s.k_prod * s.mgp + m0, nw4,
                               s.cg, s.k_prod, s.mgp, n_sp, off, kid, col_c, s.stride_c,
                               &u[0], gyf, lane_m, width == m1 - m0, lc, lb, lsc,
                               deviation, temperature, &cols[kb, 0], &where[kb, 0],
                               &scratch[kb, 0], ebuf, ag, ab, lnz, lratio)
            if not any_b:
                continue
            for i in range(width):
                b = lb[i]
                if b == 0.0:
                    continue
                p = (gi * s.m_per_group + m0 + lane_m[i]) * n_out + o
                if lnz[i] == 0:                   # SPEC 3.6: uniform over the row
                    _spread(ab, b / (s.cg * n_sp), s.cg, n_sp, col_c, s.stride_c, off)
                    fallback[p] = fabs(b)
                elif not isfinite(lratio[i]):
                    fallback[p] = NAN             # marks the row for the caller
                    bad += 1
    return STATUS_NONFINITE if bad else STATUS_OK


cpdef int rows_forward_memview(NodeRows rows, const float64_t[::1] u,
                               const float64_t[::1] bias, float64_t[::1] y,
                               int64_t[:, ::1] cols, float64_t[:, ::1] w, int n_threads):
    """The forward pass of one node: ``y[p] = bias[p] + sum_j A[p, j] u[j]`` (the sum of
    each input added in turn, as ``y += A_i u_i``).

    Input: rows (n_rows x n_cols), u[n_cols], bias[n_rows]; workspace cols[K, >= max
    row], w[K, >= max row] (K blocks of rows, any K >= 1: each row's sum is computed
    by one thread in a fixed order, so the bits never depend on K or the threads).
    Output (preallocated): y[n_rows]. Complexity O(nnz). Returns STATUS_OK,
    STATUS_SHAPE or STATUS_THREADS. Runs without the GIL.
    """
    cdef int status
    with nogil:
        status = _rows_forward(rows.src, rows.n_src, rows.n_rows, rows.n_cols, u, bias, y,
                               cols, w, n_threads)
    return status


cdef int _rows_forward(const Source* srcs, int n_src, int64_t n_rows, int64_t n_cols,
                       const float64_t[::1] u, const float64_t[::1] bias,
                       float64_t[::1] y, int64_t[:, ::1] cols, float64_t[:, ::1] w,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t n_blocks = cols.shape[0]
    cdef Py_ssize_t kb, p, lo, hi, j, n, longest = 0
    cdef int si, threads
    cdef double acc, part
    if (u.shape[0] != n_cols or bias.shape[0] != n_rows or y.shape[0] != n_rows
            or n_blocks < 1 or w.shape[0] != n_blocks):
        return STATUS_SHAPE
    for p in range(n_rows):
        n = _row_length(srcs, n_src, p)
        if n > longest:
            longest = n
    if cols.shape[1] < longest or w.shape[1] < longest or (longest > 0 and n_cols == 0):
        return STATUS_SHAPE
    if n_threads < 1:
        return STATUS_THREADS
    threads = n_threads if n_threads < n_blocks else <int>n_blocks
    for kb in prange(n_blocks, schedule='static', chunksize=1, num_threads=threads):
        lo = kb * n_rows // n_blocks
        hi = (kb + 1) * n_rows // n_blocks
        for p in range(lo, hi):
            acc = bias[p]
            for si in range(n_src):
                n = _emit(&srcs[si], 1, p, &cols[kb, 0], &w[kb, 0])
                part = 0.0
                for j in range(n):
                    part = part + w[kb, j] * u[cols[kb, j]]
                acc = acc + part
            y[p] = acc
    return STATUS_OK


# -------------------------------------------------------------------- pass 2
cpdef int bbp_reduce_memview(const float64_t[:, ::1] acc, const uint8_t[::1] used,
                             double spread, float64_t[::1] out, int n_threads):
    """Pass 2 of one BBp node: what every input element receives (SPEC 3.5).

    Input:
      acc[K, n_cols], used[K]
                        -- the block sums of rows_reverse_memview (acc[k] is read only
                           if used[k])
      spread            -- added to every element: the beta of rows with no
                           structural non-zero divided by n_cols (SPEC 3.6)
      n_threads >= 1    -- at most one thread per chunk of REDUCE_CHUNK columns runs
    Output (must be preallocated; every entry is written):
      out[n_cols]       -- out[q] = spread + acc[0, q] + acc[1, q] + ... (used blocks,
                           in block order)

    Parallel over elements (prange, static schedule); each writes only out[q].
    Complexity O(K * n_cols) time, no extra memory.
    Returns STATUS_OK, or STATUS_SHAPE or STATUS_THREADS (nothing written). Runs
    without the GIL.
    """
    cdef int status
    with nogil:
        status = _bbp_reduce(acc, used, spread, out, n_threads)
    return status


cdef int _bbp_reduce(const float64_t[:, ::1] acc, const uint8_t[::1] used,
                     double spread, float64_t[::1] out, int n_threads) noexcept nogil:
    """bbp_reduce_memview without the GIL.

    Columns are taken in chunks; within a chunk, blocks outer and columns inner, so
    every pass reads one accumulator row sequentially. Each out[q] still receives
    spread, then acc[0, q], acc[1, q], ... in block order: the same additions in the
    same order as a column-by-column loop.
    """
    cdef Py_ssize_t n_cols = out.shape[0]
    cdef Py_ssize_t n_blocks = acc.shape[0]
    cdef Py_ssize_t n_chunks = (n_cols + REDUCE_CHUNK - 1) // REDUCE_CHUNK
    cdef Py_ssize_t ch, q, lo, hi, kb
    cdef int threads
    cdef float64_t* op
    cdef const float64_t* ap
    if acc.shape[1] != n_cols or used.shape[0] != n_blocks:
        return STATUS_SHAPE
    if n_threads < 1:
        return STATUS_THREADS
    if n_cols == 0:
        return STATUS_OK
    threads = n_threads if n_threads < n_chunks else <int>n_chunks
    op = &out[0]
    for ch in prange(n_chunks, schedule='static', chunksize=1, num_threads=threads):
        lo = ch * REDUCE_CHUNK
        hi = lo + REDUCE_CHUNK
        if hi > n_cols:
            hi = n_cols
        for q in range(lo, hi):
            op[q] = spread
        for kb in range(n_blocks):
            if used[kb]:
                ap = &acc[kb, 0]
                for q in range(lo, hi):
                    op[q] = op[q] + ap[q]
    return STATUS_OK
