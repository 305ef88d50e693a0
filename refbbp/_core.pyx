# cython: language_level=3
"""Cython kernels of refbbp: bias backpropagation over CSR rows (SPEC section 3).

The NumPy reference of the same computation is ``refbbp/_reference.py``; the two must
agree (tests/bbp). Inputs are validated in Python before they get here (see
``refbbp/bbp/kernels.py``): the ``*_memview`` entry points only re-check array sizes and
return a status code; nothing inside a ``nogil`` section raises or touches a Python
object. Status codes (``STATUS_*`` below) are turned into messages by
``refbbp.bbp.kernels.status_message``.

One node of BBp is two passes over its local matrix, stored as CSR with the node's
inputs stacked horizontally (all components of a row in one place):

1. ``bbp_rows_memview`` -- parallel over rows: the components ``kappa``, their scores,
   the softmax (each exponential computed once) and the messages
   ``alpha[p, j] * beta[p]``, written into ``msg``, aligned with the CSR entries.
   Every row writes only its own slice ``msg[indptr[p]:indptr[p+1]]`` and
   ``fallback[p]``: no two threads write the same memory.
2. ``bbp_gather_memview`` -- parallel over input elements (columns): element ``q`` sums
   the messages of its column through the transpose structure (``tindptr``, ``tperm``
   from ``csr_transpose_memview``) in increasing row order, a fixed order whatever the
   number of threads. Every column writes only ``out[q]``.

So results are bitwise identical for any thread count: each number is computed by one
thread, by the same sequence of floating-point operations.
"""

from cython.parallel cimport prange
from libc.math cimport exp, fabs, isfinite, INFINITY
from libc.stdint cimport int32_t, int64_t

cimport openmp

# ---------------------------------------------------------------- typedefs, codes
ctypedef double float64_t
ctypedef int32_t index_t

# Rules (refbbp.bbp.kernels.RULE_CODES maps names to these).
cdef enum:
    RULE_SIGN = 0        # s = -sign(b^x[p]) * kappa               (paper eq. 14)
    RULE_DEVIATION = 1   # s = |h[p] / n_p - kappa|                 (paper eq. 16)
    RULE_SCORES = 2      # s = ext[j], scores given by the caller
    RULE_WEIGHTS = 3     # alpha = ext[j], weights given by the caller (no softmax)

# Status codes (negative: bad arguments, positive: numerical trouble in some rows).
# cpdef: also visible from Python as refbbp._core.STATUS_OK, ...
cpdef enum:
    STATUS_OK = 0
    STATUS_SHAPE = -1        # array sizes inconsistent with each other
    STATUS_RULE = -2         # unknown rule code, or ext missing for a user rule
    STATUS_TEMPERATURE = -3  # temperature NaN or negative
    STATUS_THREADS = -4      # n_threads < 1
    STATUS_NONFINITE = 1     # some rows produced non-finite messages (fallback[p] = NaN)


def max_threads():
    """Threads OpenMP would use by default (``omp_get_max_threads``)."""
    return openmp.omp_get_max_threads()


cpdef int check_csr_memview(const int32_t[::1] indptr, const int32_t[::1] indices,
                            int64_t n_cols) noexcept nogil:
    """Status of a CSR structure: 0 valid, 1 indptr does not start at 0, 2 indptr
    decreases, 3 a column index is out of [0, n_cols), 4 indptr[-1] != len(indices)."""
    cdef Py_ssize_t r, j
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    if n_rows < 0 or indptr[0] != 0:
        return 1
    for r in range(n_rows):
        if indptr[r + 1] < indptr[r]:
            return 2
    if indptr[n_rows] != indices.shape[0]:
        return 4
    for j in range(indices.shape[0]):
        if indices[j] < 0 or indices[j] >= n_cols:
            return 3
    return 0


# ------------------------------------------------------------------- transpose
cpdef int csr_transpose_memview(const int32_t[::1] indptr, const int32_t[::1] indices,
                                int32_t[::1] tindptr, int32_t[::1] tperm) noexcept nogil:
    """The transpose structure of a CSR matrix, as a permutation of its entries.

    Input:
      indptr[n_rows + 1], indices[nnz]  -- a valid CSR structure (check_csr_memview),
                                           columns in [0, n_cols)
    Output (must be preallocated):
      tindptr[n_cols + 1]  -- row pointer of CSR(A^T)
      tperm[nnz]           -- tperm[t] = position in (indices, data) of the entry that
                              is at position t of CSR(A^T)

    Within a column, entries are listed in increasing row order (a counting sort is
    stable), which fixes the order in which bbp_gather_memview sums messages.
    Serial. Complexity O(nnz + n_rows + n_cols) time, no extra memory.
    Returns STATUS_OK, or STATUS_SHAPE if the sizes disagree.
    """
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    cdef Py_ssize_t n_cols = tindptr.shape[0] - 1
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef Py_ssize_t r, j, q
    cdef int32_t pos
    if n_rows < 0 or n_cols < 0 or tperm.shape[0] != nnz or indptr[n_rows] != nnz:
        return STATUS_SHAPE
    for q in range(n_cols + 1):
        tindptr[q] = 0
    for j in range(nnz):
        tindptr[indices[j] + 1] += 1
    for q in range(n_cols):
        tindptr[q + 1] += tindptr[q]
    # tindptr[q] now is the next free slot of column q; shift back afterwards.
    for r in range(n_rows):
        for j in range(indptr[r], indptr[r + 1]):
            q = indices[j]
            pos = tindptr[q]
            tperm[pos] = <int32_t>j
            tindptr[q] = pos + 1
    for q in range(n_cols, 0, -1):
        tindptr[q] = tindptr[q - 1]
    tindptr[0] = 0
    return STATUS_OK


# -------------------------------------------------------------------- pass 1
cdef inline double _score(int rule, double kappa, double sgn, double target,
                          const float64_t* ext, Py_ssize_t j) noexcept nogil:
    """Score of one non-zero component (SPEC 3.3)."""
    if rule == RULE_SIGN:
        return sgn * kappa
    if rule == RULE_DEVIATION:
        return fabs(target - kappa)
    return ext[j]


cdef inline int _row(Py_ssize_t p, const float64_t* data, const index_t* indices,
                     const index_t* indptr, const float64_t* u, const float64_t* slope,
                     const float64_t* bias_x, const float64_t* h, const float64_t* beta,
                     const float64_t* ext, int rule, double temperature,
                     float64_t* msg, float64_t* fallback) noexcept nogil:
    """Messages of row ``p`` into ``msg[indptr[p]:indptr[p+1]]``; 1 if non-finite.

    ``msg`` holds, in turn, the components kappa, the unnormalised softmax terms and
    the messages: one slice of memory, each exponential computed once.
    """
    cdef index_t start = indptr[p]
    cdef index_t end = indptr[p + 1]
    cdef index_t j
    cdef double b = beta[p]
    cdef double c, uq, k, s, m, e, total, sgn, target, ratio
    cdef Py_ssize_t nz = 0
    fallback[p] = 0.0
    if b == 0.0:                      # nothing to distribute: skip the row
        for j in range(start, end):
            msg[j] = 0.0
        return 0
    if start == end:                  # SPEC 3.6, no structural non-zero: the caller
        fallback[p] = fabs(b)         # spreads beta over every input element
        return 0
    # SPEC 3.2: kappa[p, j] = A^x[p, q] * u[q] = (c[p] * A[p, q]) * u[q]; zero inputs skipped.
    c = slope[p]
    for j in range(start, end):
        uq = u[indices[j]]
        if uq == 0.0:
            msg[j] = 0.0
        else:
            k = (c * data[j]) * uq
            msg[j] = k
            if k != 0.0:
                nz += 1
    if nz == 0:                       # SPEC 3.6: uniform over the unscaled row
        e = b / (end - start)
        for j in range(start, end):
            msg[j] = e
        fallback[p] = fabs(b)
        return 0
    if rule == RULE_WEIGHTS:          # SPEC 3.3 user weights: alpha given, no softmax
        for j in range(start, end):
            if msg[j] != 0.0:
                msg[j] = ext[j] * b
        return 0
    # SPEC 3.3: scores; SPEC 3.4: softmax(s / T) with the row maximum subtracted.
    sgn = 0.0
    if bias_x[p] > 0.0:
        sgn = -1.0
    elif bias_x[p] < 0.0:
        sgn = 1.0
    target = h[p] / nz
    m = -INFINITY
    for j in range(start, end):
        if msg[j] != 0.0:
            s = _score(rule, msg[j], sgn, target, ext, j)
            if s > m:
                m = s
    total = 0.0
    for j in range(start, end):
        if msg[j] != 0.0:
            s = _score(rule, msg[j], sgn, target, ext, j)
            if s == m or temperature == INFINITY:
                e = 1.0               # exp(0), and T = inf: uniform
            elif temperature == 0.0:
                e = 0.0               # T = 0: only the maximum-score components
            else:
                e = exp((s - m) / temperature)
            msg[j] = e
            total += e
    # SPEC 3.5: messages alpha * beta = e * (beta / total).
    ratio = b / total
    if not isfinite(ratio):
        fallback[p] = ratio - ratio   # NaN marks the row for the caller
        return 1
    for j in range(start, end):
        msg[j] = msg[j] * ratio
    return 0


cpdef int bbp_rows_memview(const float64_t[::1] data, const int32_t[::1] indices,
                           const int32_t[::1] indptr, const float64_t[::1] u,
                           const float64_t[::1] slope, const float64_t[::1] bias_x,
                           const float64_t[::1] h, const float64_t[::1] beta,
                           const float64_t[::1] ext, int rule, double temperature,
                           float64_t[::1] msg, float64_t[::1] fallback,
                           int n_threads) noexcept nogil:
    """Pass 1 of one BBp node: the messages of every row (SPEC 3.2-3.6).

    Input:
      data[nnz], indices[nnz], indptr[n_rows + 1]
                        -- the unscaled local matrix A (node inputs stacked
                           horizontally), a valid CSR structure over n_cols columns
      u[n_cols]         -- the node's (stacked) input values
      slope[n_rows]     -- activation slopes c (1 without activation)
      bias_x[n_rows]    -- the node's local bias b^x = c * b + d
      h[n_rows]         -- the node's output values
      beta[n_rows]      -- the node's total bias attribution beta_n (received + own)
      ext[nnz] or ext[0]-- user scores (rule 2) or weights (rule 3), aligned with the
                           CSR entries; read only at non-zero components
      rule              -- 0 sign, 1 deviation, 2 scores in ext, 3 weights in ext
      temperature       -- T in [0, inf]; 0 hard maximum, inf uniform
      n_threads >= 1
    Output (must be preallocated; every entry is written):
      msg[nnz]          -- msg[j] = alpha[p, j] * beta[p] for entry j of row p
      fallback[n_rows]  -- |beta[p]| if row p took a fallback of SPEC 3.6, else 0;
                           NaN where the row produced non-finite messages. Rows with
                           no structural non-zero write no message: the caller spreads
                           their beta over every column.

    Rows with beta[p] == 0 are skipped (their messages are 0), and so are components
    whose input is 0. Parallel over rows (prange, static schedule); each row writes
    only its own slice of msg and fallback[p].
    Complexity O(nnz + n_rows) time, at most one exp per non-zero component,
    no extra memory.
    Returns STATUS_OK, STATUS_NONFINITE if some row's messages are not finite, or a
    negative code for bad arguments (nothing written).
    """
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    cdef Py_ssize_t nnz = indices.shape[0]
    cdef Py_ssize_t p
    cdef int bad = 0
    cdef const float64_t* ext_ptr = NULL
    if (n_rows < 0 or data.shape[0] != nnz or msg.shape[0] != nnz
            or slope.shape[0] != n_rows or bias_x.shape[0] != n_rows
            or h.shape[0] != n_rows or beta.shape[0] != n_rows
            or fallback.shape[0] != n_rows or indptr[n_rows] != nnz):
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
    if nnz == 0 and n_rows == 0:
        return STATUS_OK
    if ext.shape[0] > 0:
        ext_ptr = &ext[0]
    # Pointers: &a[0] is invalid for empty arrays, so guard the ones that may be empty.
    cdef const float64_t* data_ptr = &data[0] if nnz > 0 else NULL
    cdef const index_t* ind_ptr = &indices[0] if nnz > 0 else NULL
    cdef float64_t* msg_ptr = &msg[0] if nnz > 0 else NULL
    cdef const float64_t* u_ptr = &u[0] if u.shape[0] > 0 else NULL
    if nnz > 0 and u.shape[0] == 0:
        return STATUS_SHAPE
    for p in prange(n_rows, schedule='static', chunksize=64, num_threads=n_threads):
        bad += _row(p, data_ptr, ind_ptr, &indptr[0], u_ptr, &slope[0], &bias_x[0],
                    &h[0], &beta[0], ext_ptr, rule, temperature, msg_ptr, &fallback[0])
    return STATUS_NONFINITE if bad else STATUS_OK


# -------------------------------------------------------------------- pass 2
cpdef int bbp_gather_memview(const int32_t[::1] tindptr, const int32_t[::1] tperm,
                             const float64_t[::1] msg, const float64_t[::1] u,
                             bint skip_zero_inputs, double spread,
                             float64_t[::1] out, int n_threads) noexcept nogil:
    """Pass 2 of one BBp node: what every input element receives (SPEC 3.5).

    Input:
      tindptr[n_cols + 1], tperm[nnz]
                        -- transpose structure from csr_transpose_memview
      msg[nnz]          -- messages from bbp_rows_memview
      u[n_cols]         -- the node's (stacked) input values
      skip_zero_inputs  -- if true, elements with u[q] == 0 receive only ``spread``
                           (valid when no row of the node took a fallback: then
                           components with a zero input carry no message)
      spread            -- added to every element: the beta of rows with no
                           structural non-zero divided by n_cols (SPEC 3.6)
      n_threads >= 1
    Output (must be preallocated; every entry is written):
      out[n_cols]       -- out[q] = spread + sum of the messages of column q, summed
                           in increasing row order

    Parallel over columns (prange, static schedule); each column writes only out[q].
    Complexity O(nnz + n_cols) time (random reads of msg through tperm), no extra
    memory.
    Returns STATUS_OK or a negative code for bad arguments (nothing written).
    """
    cdef Py_ssize_t n_cols = tindptr.shape[0] - 1
    cdef Py_ssize_t nnz = tperm.shape[0]
    cdef Py_ssize_t q
    cdef int32_t t
    cdef double acc
    if (n_cols < 0 or msg.shape[0] != nnz or u.shape[0] != n_cols
            or out.shape[0] != n_cols or tindptr[n_cols] != nnz):
        return STATUS_SHAPE
    if n_threads < 1:
        return STATUS_THREADS
    if n_cols == 0:
        return STATUS_OK
    cdef const int32_t* tip = &tindptr[0]
    cdef const int32_t* tpp = &tperm[0] if nnz > 0 else NULL
    cdef const float64_t* mp = &msg[0] if nnz > 0 else NULL
    cdef const float64_t* up = &u[0]
    cdef float64_t* op = &out[0]
    for q in prange(n_cols, schedule='static', chunksize=256, num_threads=n_threads):
        acc = spread
        if not (skip_zero_inputs and up[q] == 0.0):
            for t in range(tip[q], tip[q + 1]):
                acc = acc + mp[tpp[t]]
        op[q] = acc
    return STATUS_OK
