# cython: language_level=3
"""Cython kernels of refbbp: bias backpropagation over CSR rows (SPEC section 3).

The NumPy reference of the same computation is ``refbbp/bbp/reference.py``; the two must
agree (tests/bbp). Inputs are validated in Python before they get here (see
``refbbp/bbp/kernels.py``): the ``cpdef *_memview`` entry points take typed memoryviews,
release the GIL and call a ``cdef ... noexcept nogil`` implementation that only
re-checks array sizes and returns a status code; nothing inside a ``nogil`` section
raises or touches a Python object. Every entry point returns a code of the one status
table below (``STATUS_*``); ``refbbp.bbp.kernels.STATUS_MESSAGES`` gives each its
message.

Index arrays (``indices``, ``indptr`` and the ``where`` scratch rows) are of the fused
type ``index_t``: int32 or int64, the same for all of them in one call (a layer with
more than 2**31 - 1 entries or columns needs int64; the results are the same bits for
either width).

OpenMP is optional: without it (a compiler with no ``-fopenmp``) the ``prange`` loops
compile to serial loops, ``max_threads()`` is 1 and ``openmp_enabled()`` False.

One node of BBp is two passes over its local matrix, stored as CSR with the node's
inputs stacked horizontally (all components of a row in one place):

1. ``bbp_rows_memview`` -- the rows are cut into ``K`` contiguous blocks; ``K`` depends
   only on the node's shape (chosen by the caller), never on the number of threads.
   Blocks run in parallel; within a block, rows run in increasing order, and each row
   computes its non-zero components, scores and softmax (each exponential once, in a
   small per-block scratch row) and adds its messages ``alpha[p, j] * beta[p]`` into the
   block's own dense accumulator over the input elements, ``acc[k, :]``.
2. ``bbp_reduce_memview`` -- parallel over input elements: ``out[q] = spread +
   acc[0, q] + acc[1, q] + ...`` in block order.

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
from libc.string cimport memcmp, memset

# OpenMP behind a guard (no ``cimport openmp``, which needs omp.h): with -fopenmp the
# compiler defines _OPENMP and these call the runtime; without it they report 1 thread.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int refbbp_omp_enabled(void) { return 1; }
    static int refbbp_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int refbbp_omp_enabled(void) { return 0; }
    static int refbbp_omp_max_threads(void) { return 1; }
    #endif
    """
    int refbbp_omp_enabled() noexcept nogil
    int refbbp_omp_max_threads() noexcept nogil

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

# -------------------------------------------------------------------- pass 1
cdef inline int _row(Py_ssize_t p, const float64_t* data, const index_t* indices,
                     const index_t* indptr, const float64_t* u, const float64_t* slope,
                     const float64_t* bias_x, const float64_t* h, const float64_t* beta,
                     const float64_t* ext, int rule, double temperature,
                     float64_t* scratch, index_t* where, float64_t* acc,
                     float64_t* fallback) noexcept nogil:
    """Add the messages of row ``p`` (beta[p] != 0, at least one structural non-zero)
    into ``acc``; returns 1 if they are not finite (and sets fallback[p] = NaN), else 0.

    The row's non-zero components are compacted into ``scratch`` (their values: first
    kappa, then the unnormalised softmax terms) and ``where`` (their CSR positions), so
    the loops after the first one see only non-zero components, and each exponential
    is computed once.
    """
    cdef Py_ssize_t start = indptr[p]
    cdef Py_ssize_t end = indptr[p + 1]
    cdef Py_ssize_t j
    cdef Py_ssize_t i, nz = 0
    cdef double b = beta[p]
    cdef double c, uq, k, s, m, e, total, sgn, target, ratio
    # SPEC 3.2: kappa[p, j] = A^x[p, q] * u[q] = (c[p] * A[p, q]) * u[q]; only non-zero
    # components take part (zero inputs are skipped before any multiplication).
    c = slope[p]
    for j in range(start, end):
        uq = u[indices[j]]
        if uq != 0.0:
            k = (c * data[j]) * uq
            if k != 0.0:
                scratch[nz] = k
                where[nz] = j
                nz += 1
    if nz == 0:                       # SPEC 3.6: uniform over the unscaled row
        e = b / (end - start)
        for j in range(start, end):
            acc[indices[j]] += e
        fallback[p] = fabs(b)
        return 0
    if rule == RULE_WEIGHTS:          # SPEC 3.3 user weights: alpha given, no softmax
        for i in range(nz):
            acc[indices[where[i]]] += ext[where[i]] * b
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
            scratch[i] = ext[where[i]]
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
        acc[indices[where[i]]] += scratch[i] * ratio
    return 0


cpdef int bbp_rows_memview(const float64_t[::1] data, const index_t[::1] indices,
                           const index_t[::1] indptr, const float64_t[::1] u,
                           const float64_t[::1] slope, const float64_t[::1] bias_x,
                           const float64_t[::1] h, const float64_t[::1] beta,
                           const float64_t[::1] ext, int rule, double temperature,
                           float64_t[:, ::1] acc, float64_t[:, ::1] scratch,
                           index_t[:, ::1] where, uint8_t[::1] used,
                           float64_t[::1] fallback, int n_threads):
    """Pass 1 of one BBp node: every row's messages, summed per block (SPEC 3.2-3.6).

    Input:
      data[nnz], indices[nnz], indptr[n_rows + 1]
                        -- the unscaled local matrix A (node inputs stacked
                           horizontally), a valid CSR structure over n_cols columns;
                           indices, indptr (and where) int32 or int64, one type.
                           indptr is re-checked here (O(n_rows)); the column indices
                           are not (O(nnz)): check them once with check_csr_memview
      u[n_cols]         -- the node's (stacked) input values
      slope[n_rows]     -- activation slopes c (1 without activation)
      bias_x[n_rows]    -- the node's local bias b^x = c * b + d
      h[n_rows]         -- the node's output values
      beta[n_rows]      -- the node's total bias attribution beta_n (received + own)
      ext[nnz] or ext[0]-- user scores (RULE_SCORES) or weights (RULE_WEIGHTS),
                           aligned with the CSR entries; read only at non-zero
                           components
      rule              -- RULE_SIGN, RULE_DEVIATION, RULE_SCORES (s = ext) or
                           RULE_WEIGHTS (alpha = ext)
      temperature       -- T in [0, inf]; 0 hard maximum, inf uniform
      n_threads >= 1    -- at most min(n_threads, K) threads run (K blocks)
    Workspace and output (must be preallocated):
      acc[K, n_cols]    -- block k = rows [k * n_rows // K, (k + 1) * n_rows // K):
                           acc[k, q] = sum over its rows p (increasing) of the
                           messages alpha[p, (q)] * beta[p]. Written only if used[k].
      scratch[K, >= max row length], where[K, >= max row length]
                        -- one scratch row per block (component values, positions)
      used[K]           -- 1 if block k has a row that sent something, else 0
      fallback[n_rows]  -- |beta[p]| if row p took a fallback of SPEC 3.6, else 0;
                           NaN where the row produced non-finite messages. Rows with
                           no structural non-zero send nothing here: the caller
                           spreads their beta over every column (bbp_reduce_memview).

    K (= acc.shape[0]) is the caller's choice and must not depend on n_threads: it
    fixes the order of every sum. Rows with beta[p] == 0 are skipped (nothing read
    beyond beta[p]), and so are components whose input is 0 (no multiplication, no
    score, no exp). Parallel over blocks (prange, static schedule); a block writes
    only acc[k], scratch[k], where[k], used[k] and fallback over its rows.
    Complexity O(nnz + n_rows + K * n_cols) time, at most one exp per non-zero
    component, no memory beyond the arguments.
    Returns STATUS_OK, STATUS_NONFINITE if some row's messages are not finite, or a
    negative code (nothing written): STATUS_SHAPE, STATUS_CSR_INDPTR_START,
    STATUS_CSR_INDPTR_DECREASES, STATUS_CSR_NNZ, STATUS_RULE, STATUS_TEMPERATURE,
    STATUS_THREADS. Runs without the GIL.
    """
    cdef int status
    with nogil:
        status = _bbp_rows(data, indices, indptr, u, slope, bias_x, h, beta, ext, rule,
                           temperature, acc, scratch, where, used, fallback, n_threads)
    return status


cdef int _bbp_rows(const float64_t[::1] data, const index_t[::1] indices,
                   const index_t[::1] indptr, const float64_t[::1] u,
                   const float64_t[::1] slope, const float64_t[::1] bias_x,
                   const float64_t[::1] h, const float64_t[::1] beta,
                   const float64_t[::1] ext, int rule, double temperature,
                   float64_t[:, ::1] acc, float64_t[:, ::1] scratch,
                   index_t[:, ::1] where, uint8_t[::1] used,
                   float64_t[::1] fallback, int n_threads) noexcept nogil:
    """bbp_rows_memview without the GIL."""
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef Py_ssize_t n_cols = u.shape[0]
    cdef Py_ssize_t n_blocks = acc.shape[0]
    cdef Py_ssize_t kb, p, lo, hi, r, longest = 0
    cdef int bad = 0
    cdef int threads
    cdef const float64_t* ext_ptr = NULL
    if (n_rows < 0 or data.shape[0] != nnz or slope.shape[0] != n_rows
            or bias_x.shape[0] != n_rows or h.shape[0] != n_rows
            or beta.shape[0] != n_rows or fallback.shape[0] != n_rows
            or acc.shape[1] != n_cols or n_blocks < 1
            or scratch.shape[0] != n_blocks or used.shape[0] != n_blocks
            or where.shape[0] != n_blocks):
        return STATUS_SHAPE
    if indptr[0] != 0:
        return STATUS_CSR_INDPTR_START
    for r in range(n_rows):
        if indptr[r + 1] < indptr[r]:
            return STATUS_CSR_INDPTR_DECREASES
        if indptr[r + 1] - indptr[r] > longest:
            longest = indptr[r + 1] - indptr[r]
    if indptr[n_rows] != nnz:
        return STATUS_CSR_NNZ
    if scratch.shape[1] < longest or where.shape[1] < longest or (nnz > 0 and n_cols == 0):
        return STATUS_SHAPE
    if rule < RULE_SIGN or rule > RULE_WEIGHTS:
        return STATUS_RULE
    if rule >= RULE_SCORES:
        if ext.shape[0] != nnz:
            return STATUS_RULE
    if not (temperature >= 0.0):
        return STATUS_TEMPERATURE
    if n_threads < 1:
        return STATUS_THREADS
    # More threads than blocks would only wait (and a huge count can fail in OpenMP).
    threads = n_threads if n_threads < n_blocks else <int>n_blocks
    if ext.shape[0] > 0:
        ext_ptr = &ext[0]
    # &a[0] is invalid for empty arrays: guard the ones that may be empty.
    cdef const float64_t* data_ptr = &data[0] if nnz > 0 else NULL
    cdef const index_t* ind_ptr = &indices[0] if nnz > 0 else NULL
    cdef const float64_t* u_ptr = &u[0] if n_cols > 0 else NULL
    cdef const float64_t* beta_ptr = &beta[0] if n_rows > 0 else NULL
    cdef float64_t* fb_ptr = &fallback[0] if n_rows > 0 else NULL
    for kb in prange(n_blocks, schedule='static', chunksize=1, num_threads=threads):
        lo = kb * n_rows // n_blocks
        hi = (kb + 1) * n_rows // n_blocks
        used[kb] = 0
        for p in range(lo, hi):
            fb_ptr[p] = 0.0
            if beta_ptr[p] == 0.0:           # nothing to distribute: skip the row
                continue
            if indptr[p] == indptr[p + 1]:   # SPEC 3.6, no structural non-zero: the
                fb_ptr[p] = fabs(beta_ptr[p])  # caller spreads it over every input
                continue
            if used[kb] == 0:
                memset(&acc[kb, 0], 0, n_cols * sizeof(float64_t))
                used[kb] = 1
            bad += _row(p, data_ptr, ind_ptr, &indptr[0], u_ptr, &slope[0], &bias_x[0],
                        &h[0], beta_ptr, ext_ptr, rule, temperature, &scratch[kb, 0],
                        &where[kb, 0], &acc[kb, 0], fb_ptr)
    return STATUS_NONFINITE if bad else STATUS_OK


# -------------------------------------------------------------------- pass 2
cpdef int bbp_reduce_memview(const float64_t[:, ::1] acc, const uint8_t[::1] used,
                             double spread, float64_t[::1] out, int n_threads):
    """Pass 2 of one BBp node: what every input element receives (SPEC 3.5).

    Input:
      acc[K, n_cols], used[K]
                        -- the block sums of bbp_rows_memview (acc[k] is read only
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
