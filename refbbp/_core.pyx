# cython: language_level=3
"""Cython kernels of refbbp. Inputs are validated in Python before they get here
(see refbbp/bbp); kernels return status codes and never raise inside nogil code."""

from libc.stdint cimport int32_t, int64_t

cpdef int check_csr_memview(const int32_t[::1] indptr, const int32_t[::1] indices,
                            int64_t n_cols) noexcept nogil:
    """Status of a CSR structure: 0 valid, 1 indptr does not start at 0, 2 indptr
    decreases, 3 a column index is out of [0, n_cols), 4 indptr[-1] != len(indices)."""
    cdef Py_ssize_t r, j
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1
    if indptr[0] != 0:
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
