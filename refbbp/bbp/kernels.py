"""Thin validated Python wrappers around the Cython kernels of ``refbbp/_core.pyx``.

Everything is checked here, before the kernels run without the GIL (STYLE 5-8): array
dtypes (float64; int32 or int64 indices, the same for ``indices`` and ``indptr``),
C-contiguity, sizes, the rule code (``_core.RULE_*``), the temperature and the thread
count (:func:`check_n_threads`). The row sources themselves were checked when the
node's :class:`~refbbp.bbp.structure.NodeStructure` was built, and cannot change after
(read-only arrays the structure owns). Every kernel entry point returns a code of one
table, ``_core.STATUS_*``; :data:`STATUS_MESSAGES` gives each its message.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _core

__all__ = ["INDEX_DTYPES", "STATUS_MESSAGES", "Workspace", "available_cpus",
           "check_n_threads", "reverse_node", "status_message"]

#: The message of every kernel status code (``refbbp._core.STATUS_*``, one table for
#: every entry point; a test checks that none is missing).
STATUS_MESSAGES = {
    _core.STATUS_OK: "ok",
    _core.STATUS_SHAPE: "array sizes are inconsistent",
    _core.STATUS_RULE: "unknown rule code, or the user scores/weights are missing",
    _core.STATUS_TEMPERATURE: "temperature is NaN or negative",
    _core.STATUS_THREADS: "n_threads must be at least 1",
    _core.STATUS_CSR_INDPTR_START: "indptr does not start at 0",
    _core.STATUS_CSR_INDPTR_DECREASES: "indptr decreases",
    _core.STATUS_CSR_INDEX_RANGE: "a column index is outside [0, n_cols)",
    _core.STATUS_CSR_NNZ: "indptr[-1] differs from the number of entries",
    _core.STATUS_NONFINITE: "some rows produced non-finite messages",
}

#: Index types the kernels take for ``indices``/``indptr`` (one per call).
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


#: Nodes with fewer stored entries than this run on one thread: below it, starting the
#: threads costs more than it saves. The result is the same bits either way.
PARALLEL_MIN_NNZ = 32768
#: Likewise for the reduction of the block accumulators (K * n_cols values).
PARALLEL_MIN_REDUCE = 1 << 16


def status_message(status):
    """The message of a kernel status code (:data:`STATUS_MESSAGES`)."""
    return STATUS_MESSAGES.get(status, f"unknown status {status}")


def available_cpus():
    """CPUs this process may run on: its affinity mask where the OS has one
    (``os.sched_getaffinity``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_n_threads(n_threads):
    """Validate ``n_threads`` and return the number of threads the kernel will use.

    ``None`` means OpenMP's default (``omp_get_max_threads``, which follows
    ``OMP_NUM_THREADS``). Any request is capped at the CPUs the process may use
    (:func:`available_cpus`), and at 1 when the kernel was built without OpenMP: more
    threads than CPUs only compete for them (and a huge count makes OpenMP fail).
    Capping is safe because the kernel gives bitwise identical results for any number
    of threads.

    Raises
    ------
    TypeError
        ``n_threads`` is not None or an int (bools refused).
    ValueError
        ``n_threads`` < 1.
    """
    if n_threads is None:
        n_threads = int(_core.max_threads())
    elif isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be None or a positive int, got "
                        f"{type(n_threads).__name__}")
    elif n_threads < 1:
        raise ValueError(f"n_threads must be None or a positive int, got {n_threads}")
    cap = available_cpus() if _core.openmp_enabled() else 1
    return max(1, min(int(n_threads), cap))


def _f64(name, a, n):
    if not (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1
            and a.flags.c_contiguous):
        raise TypeError(f"{name}: expected a C-contiguous float64 vector, got "
                        f"{type(a).__name__} {getattr(a, 'dtype', '')} "
                        f"{getattr(a, 'shape', '')}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values, got {a.shape[0]}")
    return a


class Workspace:
    """Reusable memory for the reverse pass's per-block accumulators and scratch rows
    (one allocation per ``bbp`` call, shared by its nodes and inputs)."""

    def __init__(self):
        self._f = np.empty(0)
        self._i = np.empty(0, np.int64)
        self._vf = np.empty(0)
        self._vi = np.empty(0, np.int64)

    def vector(self, threads, n_float, n_int):
        """Per-thread scratch of the vectorised window pass: ``(threads, n_float)``
        float64 and ``(threads, n_int)`` int64."""
        if self._vf.size < threads * n_float:
            self._vf = np.empty(threads * n_float)
        if self._vi.size < threads * n_int:
            self._vi = np.empty(threads * n_int, np.int64)
        return (self._vf[:threads * n_float].reshape(threads, n_float),
                self._vi[:threads * n_int].reshape(threads, n_int))

    def get(self, n_blocks, n_cols, max_row):
        """``acc_g``, ``acc_b`` (n_blocks, n_cols); ``w``, ``scratch`` (n_blocks,
        max_row) float64; ``cols``, ``where`` (n_blocks, max_row) int64; ``used_g``,
        ``used_b`` (n_blocks,) uint8, fresh."""
        max_row = max(max_row, 1)
        acc = n_blocks * n_cols
        row = n_blocks * max_row
        need = 2 * acc + 2 * row
        if self._f.size < need:
            self._f = np.empty(need)
        if self._i.size < 2 * row:
            self._i = np.empty(2 * row, np.int64)
        f, i = self._f, self._i
        return (f[:acc].reshape(n_blocks, n_cols), f[acc:2 * acc].reshape(n_blocks, n_cols),
                f[2 * acc:2 * acc + row].reshape(n_blocks, max_row),
                f[2 * acc + row:need].reshape(n_blocks, max_row),
                i[:row].reshape(n_blocks, max_row), i[row:2 * row].reshape(n_blocks, max_row),
                np.empty(n_blocks, np.uint8), np.empty(n_blocks, np.uint8))


def reverse_node(st, rows, u, slope, bias_x, h, g, beta, *, rule_code, temperature,
                 n_threads, workspace=None, ext=None, where="node"):
    """The reverse pass of one node for one input: what each stacked input element
    receives as gradient (SPEC 2) and as bias attribution (SPEC 3.2-3.6), from one pass
    over the node's rows.

    Parameters
    ----------
    st : NodeStructure
    rows : refbbp._core.NodeRows
        ``st.rows``, or a max node's ``st.max_rows(selected)``.
    u : ndarray of float64, shape (n_cols,)
        Stacked input values.
    slope, bias_x, h, beta : ndarray of float64, shape (n_rows,)
        Activation slopes ``c``, local bias ``b^x``, output values, ``beta_n``.
    g : ndarray of float64, shape (n_rows,), or None
        ``df/dh_n``; None: no gradient messages.
    rule_code : int
        ``_core.RULE_SIGN``, ``_core.RULE_DEVIATION``, ``_core.RULE_SCORES`` (scores
        in ``ext``) or ``_core.RULE_WEIGHTS`` (weights in ``ext``).
    temperature : float
        In [0, inf].
    n_threads : int or None
        Validated and capped by :func:`check_n_threads`.
    workspace : Workspace, optional
        Memory to reuse across calls.
    ext : ndarray of float64, shape (nnz,), optional
        User scores or weights by node-wide entry (``st.entry_start``).
    where : str
        Names the node in error messages.

    Returns
    -------
    grad : ndarray, shape (n_cols,) or None
        ``sum_p c[p] g[p] A[p, q]``, per stacked input element (None without ``g``).
    received : ndarray, shape (n_cols,)
        ``sum_p alpha[p, q] * beta[p]`` plus the fallbacks, per stacked input element.
    fallback : ndarray, shape (n_rows,)
        ``|beta[p]|`` for rows that took a fallback of SPEC 3.6, else 0.
    """
    n_rows, n_cols, nnz = st.n_rows, st.n_cols, st.nnz
    if not isinstance(rows, _core.NodeRows) or (rows.n_rows, rows.n_cols) != (n_rows, n_cols):
        raise TypeError(f"{where}: rows must be the structure's NodeRows")
    _f64("u", u, n_cols)
    for name, a in (("slope", slope), ("bias_x", bias_x), ("h", h), ("beta", beta)):
        _f64(name, a, n_rows)
    g = np.empty(0) if g is None else _f64("g", g, n_rows)
    if rule_code in (_core.RULE_SCORES, _core.RULE_WEIGHTS):
        _f64("ext", ext, nnz)
    elif rule_code in (_core.RULE_SIGN, _core.RULE_DEVIATION):
        ext = np.empty(0)
    else:
        raise ValueError(f"rule code {rule_code!r} is not one of _core.RULE_SIGN, "
                         f"RULE_DEVIATION, RULE_SCORES, RULE_WEIGHTS")
    if not temperature >= 0:
        raise ValueError(f"temperature must be in [0, inf], got {temperature}")
    n_threads = check_n_threads(n_threads)
    # Never more threads than blocks: the rest would only wait (the bits are the same).
    row_threads = 1 if nnz < PARALLEL_MIN_NNZ else min(n_threads, st.n_blocks)
    reduce_threads = 1 if st.n_blocks * n_cols < PARALLEL_MIN_REDUCE else n_threads
    if n_cols == 0 and np.any(beta):
        raise ValueError(f"{where} has no inputs to pass its bias attribution to")
    workspace = workspace or Workspace()
    acc_g, acc_b, w, scratch, cols, where_, used_g, used_b = workspace.get(
        st.n_blocks, n_cols, st.max_row)
    # scratch of the vectorised window pass, if the rows take it (built-in rules only)
    n_float, n_int = rows.vector_workspace() if rule_code <= _core.RULE_DEVIATION else (0, 0)
    vec_f, vec_i = workspace.vector(row_threads, n_float, n_int)
    fallback = np.empty(n_rows)
    status = _core.rows_reverse_memview(rows, st.entry_start, u, slope, bias_x, h, g, beta,
                                        ext, rule_code, temperature, acc_g, acc_b, cols, w,
                                        scratch, where_, used_g, used_b, fallback, vec_f,
                                        vec_i, row_threads)
    if status == _core.STATUS_NONFINITE:
        p = int(np.flatnonzero(np.isnan(fallback))[0])
        raise FloatingPointError(
            f"{where}, row {p}: the scores gave non-finite messages (beta {beta[p]!r}); "
            f"components or scores overflow float64")
    if status != _core.STATUS_OK:
        raise ValueError(f"{where}: rows_reverse_memview failed: {status_message(status)}")
    grad = None
    if g.size:
        grad = np.empty(n_cols)
        status = _core.bbp_reduce_memview(acc_g, used_g, 0.0, grad, reduce_threads)
        if status != _core.STATUS_OK:
            raise ValueError(f"{where}: bbp_reduce_memview failed: {status_message(status)}")
    spread = 0.0
    if st.empty_rows.size:
        spread = float(np.sum(beta[st.empty_rows])) / n_cols
    received = np.empty(n_cols)
    status = _core.bbp_reduce_memview(acc_b, used_b, spread, received, reduce_threads)
    if status != _core.STATUS_OK:
        raise ValueError(f"{where}: bbp_reduce_memview failed: {status_message(status)}")
    return grad, received, fallback
