"""The Cython kernels of refbbp/_core.pyx on CSR row sources, called through their
``*_memview`` entry points and the wrapper ``kernels.reverse_node`` (STYLE 7, 12),
against a replicated reference in dense-matrix form (STYLE 11).

The replicated reference (:func:`dense_bbp_node`) follows SPEC 3.2-3.6 with whole
matrices: components ``K = diag(c) A * u``, a score matrix, a masked row softmax, the
message matrix ``alpha * beta[:, None]`` and its column sums. It shares no code with the
kernel nor with refbbp/bbp/reference.py.

Here a node is one scipy CSR matrix made into a one-source ``_core.NodeRows``
(:func:`structure_of`): the BBp messages of ``rows_reverse_memview`` against the
reference for every rule and temperature, int32 against int64 indices and 1 against
several threads (bitwise), the block accumulators of the entry point alone, its status
table, the reduction, the CSR checker and the wrapper's validation. The other row
sources (dense, window, several inputs), the gradient messages and the forward pass
are tested in tests/bbp/test_bbp_row_sources.py, with the same reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from refbbp import _core
from refbbp.bbp.kernels import STATUS_MESSAGES, check_n_threads, reverse_node
from refbbp.bbp.structure import NodeStructure, n_blocks

RULES = {"sign": _core.RULE_SIGN, "deviation": _core.RULE_DEVIATION,
         "scores": _core.RULE_SCORES, "weights": _core.RULE_WEIGHTS}
INDEX_TYPES = [np.int32, np.int64]
TEMPERATURES = [0.0, 0.1, 1.0, 10.0, np.inf]
AGREE = 1e-12   # kernel vs replicated reference, relative to the row's |beta|


# ------------------------------------------------------------------ test data
def random_node(rng, n_rows=40, n_cols=30, density=0.3, empty_rows=2, zero_input=0.3,
                dead_rows=0.2):
    """A random CSR node with explicit zero entries, empty rows, zero inputs, rows
    with slope 0 (their components vanish), rows with beta 0, and user scores/weights."""
    a = sp.random(n_rows, n_cols, density=density, random_state=rng, format="csr",
                  data_rvs=lambda n: rng.normal(size=n))
    a.data[rng.random(a.nnz) < 0.1] = 0.0             # explicit zeros stay structural
    a = a.tolil()
    for r in rng.choice(n_rows, empty_rows, replace=False):
        a.rows[r], a.data[r] = [], []
    a = a.tocsr()
    a.sort_indices()
    u = rng.normal(size=n_cols)
    u[rng.random(n_cols) < zero_input] = 0.0
    slope = rng.choice([1.0, 0.5, -0.7], n_rows)
    slope[rng.random(n_rows) < dead_rows] = 0.0
    bias_x = rng.normal(size=n_rows)
    bias_x[rng.random(n_rows) < 0.2] = 0.0
    beta = rng.normal(size=n_rows)
    beta[rng.random(n_rows) < 0.2] = 0.0
    h = rng.normal(size=n_rows)
    counts = np.diff(a.indptr)
    scores = rng.normal(size=a.nnz) * 3
    # Weights summing to 1 over the non-zero components of each row (some negative).
    weights = np.zeros(a.nnz)
    kappa = np.repeat(slope, counts) * a.data * u[a.indices]
    for p in range(n_rows):
        lo, hi = a.indptr[p], a.indptr[p + 1]
        nz = np.flatnonzero(kappa[lo:hi]) + lo
        if nz.size:
            w = rng.normal(size=nz.size)
            weights[nz] = w - (w.sum() - 1.0) / nz.size
    return dict(a=a, u=u, slope=slope, bias_x=bias_x, h=h, beta=beta,
                scores=scores, weights=weights)


def csr_rows(a, index_type=np.int32):
    """A one-source NodeRows reading the CSR matrix ``a`` (indices of ``index_type``)."""
    rows = _core.NodeRows(a.shape[0], a.shape[1], 1)
    rows.add_csr(np.ascontiguousarray(a.data, np.float64), a.indices.astype(index_type),
                 a.indptr.astype(index_type), 0)
    return rows


def structure_of(a, blocks=None, index_type=np.int32):
    """A NodeStructure for a CSR matrix (one input), with indices of ``index_type``."""
    counts = np.diff(a.indptr)
    k = n_blocks(*a.shape, a.nnz) if blocks is None else blocks
    return NodeStructure(csr_rows(a, index_type), a.indptr.astype(np.int64),
                         np.array([0, a.shape[1]], np.int64), int(counts.max(initial=0)), k,
                         np.flatnonzero(counts == 0))


def dense_bbp_node(a, u, slope, bias_x, h, beta, rule, temperature, ext=None):
    """SPEC 3.2-3.6 for one node in dense-matrix form: (received, fallback)."""
    n_rows, n_cols = a.shape
    A = a.toarray()
    S = np.zeros((n_rows, n_cols), bool)                     # structural non-zeros
    S[np.repeat(np.arange(n_rows), np.diff(a.indptr)), a.indices] = True
    K = (slope[:, None] * A) * u[None, :]                    # SPEC 3.2: components
    E = K != 0                                               # e = |sign(kappa)|
    n_p = E.sum(1)
    E_ext = np.zeros((n_rows, n_cols))
    if ext is not None:
        E_ext[np.repeat(np.arange(n_rows), np.diff(a.indptr)), a.indices] = ext
    if rule == "sign":                                       # SPEC 3.3
        s = -np.sign(bias_x)[:, None] * K
    elif rule == "deviation":
        s = np.abs(h[:, None] / np.maximum(n_p, 1)[:, None] - K)
    else:
        s = E_ext
    if rule == "weights":
        alpha = np.where(E, E_ext, 0.0)
    else:                                                    # SPEC 3.4: masked softmax
        m = np.where(E, s, -np.inf).max(1, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0.0)[:, None]
        if temperature == np.inf:
            e = E.astype(float)
        elif temperature == 0:
            e = (E & (s == m)).astype(float)
        else:
            e = np.where(E, np.exp(np.where(E, s - m, 0.0) / temperature), 0.0)
        alpha = e / np.maximum(e.sum(1, keepdims=True), np.finfo(float).tiny)
    M = alpha * beta[:, None]                                # SPEC 3.5: messages
    none = (n_p == 0) & (beta != 0)                          # SPEC 3.6
    struct_rows = none & S.any(1)
    M[struct_rows] = S[struct_rows] * (beta[struct_rows] / S[struct_rows].sum(1))[:, None]
    empty = none & ~S.any(1)
    received = M.sum(0) + beta[empty].sum() / n_cols
    fallback = np.where(none, np.abs(beta), 0.0)
    return received, fallback


def run_kernel(node, rule, temperature, n_threads=1, blocks=None, index_type=np.int32):
    a = node["a"]
    """reverse_node without a gradient: (received, fallback)."""
    ext = {"scores": node["scores"], "weights": node["weights"]}.get(rule)
    st = structure_of(a, blocks, index_type)
    grad, received, fallback = reverse_node(
        st, st.rows, node["u"], node["slope"], node["bias_x"], node["h"], None, node["beta"],
        rule_code=RULES[rule], temperature=temperature, n_threads=n_threads, ext=ext)
    assert grad is None
    return received, fallback


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("blocks", [1, 3, 40], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("temperature", TEMPERATURES, ids=lambda t: f"T={t}")
@pytest.mark.parametrize("rule", list(RULES))
def test_kernel_matches_dense_reference(rng, rule, temperature, blocks):
    node = random_node(rng)
    received, fallback = run_kernel(node, rule, temperature, blocks=blocks)
    ext = {"scores": node["scores"], "weights": node["weights"]}.get(rule)
    want, want_fb = dense_bbp_node(node["a"], node["u"], node["slope"], node["bias_x"],
                                   node["h"], node["beta"], rule, temperature, ext)
    assert received.dtype == np.float64 and fallback.dtype == np.float64
    scale = np.abs(node["beta"]).sum() * (1 + np.abs(node["weights"]).max())
    assert_allclose(received, want, rtol=0, atol=AGREE * scale)
    assert_array_equal(fallback, want_fb)
    # Completeness of the node: everything beta sent arrived somewhere.
    assert abs(received.sum() - node["beta"].sum()) <= 1e-12 * scale


@pytest.mark.parametrize("index_type", INDEX_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("rule", list(RULES))
def test_kernel_index_widths_bitwise(rng, rule, index_type):
    """int32 and int64 indices (the fused index_t of the kernel) give the same bits,
    on one block and on several."""
    node = random_node(rng, n_rows=300, n_cols=80, density=0.1, empty_rows=5)
    for blocks in (1, 7):
        want = run_kernel(node, rule, 1.0, n_threads=2, blocks=blocks)
        got = run_kernel(node, rule, 1.0, n_threads=2, blocks=blocks, index_type=index_type)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


@pytest.mark.parametrize("rule", list(RULES))
def test_kernel_threads_bitwise(rng, rule):
    node = random_node(rng, n_rows=3000, n_cols=500, density=0.05, empty_rows=20)
    assert n_blocks(*node["a"].shape, node["a"].nnz) > 2
    one = run_kernel(node, rule, 1.0, n_threads=1)
    for n_threads in (2, 3, 7):
        other = run_kernel(node, rule, 1.0, n_threads=n_threads)
        assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])


def reverse_workspace(rows, entry_start, u, slope, bias_x, h, beta, rule=_core.RULE_SIGN,
                      temperature=1.0, ext=None, blocks=1, n_threads=1, g=None):
    """Call ``rows_reverse_memview`` on fresh workspace (accumulators NaN, flags 7):
    returns (status, acc_g, acc_b, used_g, used_b, fallback)."""
    n_cols = rows.n_cols
    longest = max(1, int(np.diff(entry_start).max(initial=0)))
    acc_g = np.full((blocks, n_cols), np.nan)
    acc_b = np.full((blocks, n_cols), np.nan)
    cols = np.empty((blocks, longest), np.int64)
    w = np.empty((blocks, longest))
    scratch = np.empty((blocks, longest))
    where = np.empty((blocks, longest), np.int64)
    used_g = np.full(blocks, 7, np.uint8)
    used_b = np.full(blocks, 7, np.uint8)
    fb = np.full(rows.n_rows, np.nan)
    n_float, n_int = rows.vector_workspace()
    status = _core.rows_reverse_memview(
        rows, entry_start, u, slope, bias_x, h, np.empty(0) if g is None else g, beta,
        np.empty(0) if ext is None else ext, rule, temperature, acc_g, acc_b, cols, w,
        scratch, where, used_g, used_b, fb, np.empty((n_threads, n_float)),
        np.empty((n_threads, n_int), np.int64), n_threads)
    return status, acc_g, acc_b, used_g, used_b, fb


def rows_memview(a, u, slope, bias_x, h, beta, rule=_core.RULE_SIGN, temperature=1.0,
                 ext=None, blocks=1, n_threads=1):
    """The reverse pass of the CSR matrix ``a`` alone, without gradient, on fresh
    workspace; returns (status, acc_b, used_b, fallback)."""
    status, _, acc_b, _, used_b, fb = reverse_workspace(
        csr_rows(a), a.indptr.astype(np.int64), u, slope, bias_x, h, beta, rule,
        temperature, ext, blocks, n_threads)
    return status, acc_b, used_b, fb


def test_rows_memview_blocks_hold_their_rows_messages(rng):
    """Pass 1 alone: block k's accumulator holds the messages of its rows; summed over
    the columns they give its rows' beta; blocks without sending rows are not used."""
    node = random_node(rng, n_rows=60, empty_rows=0)
    a, beta = node["a"], node["beta"]
    beta[:20] = 0.0                                           # block 0 sends nothing
    status, acc, used, fb = rows_memview(a, node["u"], node["slope"], node["bias_x"],
                                         node["h"], beta, blocks=3, n_threads=2)
    assert status == _core.STATUS_OK and not np.isnan(fb).any()
    assert list(used) == [0, 1, 1]
    for k in (1, 2):
        assert_allclose(acc[k].sum(), beta[20 * k:20 * (k + 1)].sum(), rtol=1e-13)


def test_reduce_memview_sums_used_blocks_in_order():
    acc = np.array([[1.0, 2.0], [np.nan, np.nan], [10.0, 20.0]])
    used = np.array([1, 0, 1], np.uint8)
    out = np.empty(2)
    assert _core.bbp_reduce_memview(acc, used, 0.5, out, 2) == _core.STATUS_OK
    assert_array_equal(out, [11.5, 22.5])


def test_rows_memview_huge_scores_stable():
    """Huge scores: the row maximum is subtracted, nothing overflows (SPEC 3.4)."""
    a = sp.csr_array(np.array([[1e300, -1e300, 1e-300, 3.0]]))
    for rule, t in [(_core.RULE_SIGN, 1.0), (_core.RULE_SIGN, 1e-300),
                    (_core.RULE_DEVIATION, 1.0), (_core.RULE_SIGN, 1e300)]:
        status, acc, used, fb = rows_memview(a, np.ones(4), np.ones(1), np.array([-1.0]),
                                             np.array([7.0]), np.array([2.0]), rule, t)
        assert status == _core.STATUS_OK and np.all(np.isfinite(acc))
        assert_allclose(acc.sum(), 2.0, rtol=1e-15)


def test_rows_memview_nonfinite_flags_row():
    """A component that overflows to inf with a zero bias (score 0 * inf) is reported,
    not turned into a silent NaN: STATUS_NONFINITE and NaN in fallback at that row."""
    a = sp.csr_array(np.array([[1.0, 1.0], [1e200, 1.0]]))
    status, acc, used, fb = rows_memview(a, np.array([1e200, 1.0]), np.ones(2), np.zeros(2),
                                         np.ones(2), np.ones(2), n_threads=2)
    assert status == _core.STATUS_NONFINITE
    assert np.isnan(fb[1]) and fb[0] == 0


def _args(**over):
    """Arguments of rows_reverse_memview for the CSR matrix [[1, 2], [0, 3]] (rows of 2
    and 1 entries), in 2 blocks, with workspace rows of exactly the longest row."""
    a = sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]]))
    args = dict(rows=csr_rows(a), entry_start=a.indptr.astype(np.int64), u=np.ones(2),
                slope=np.ones(2), bias_x=np.ones(2), h=np.ones(2), g=np.empty(0),
                beta=np.ones(2), ext=np.empty(0), rule=_core.RULE_SIGN, temperature=1.0,
                acc_g=np.empty((2, 2)), acc_b=np.empty((2, 2)),
                cols=np.empty((2, 2), np.int64), w=np.empty((2, 2)),
                scratch=np.empty((2, 2)), where=np.empty((2, 2), np.int64),
                used_g=np.empty(2, np.uint8), used_b=np.empty(2, np.uint8),
                fallback=np.empty(2), vec_f=np.empty((1, 0)),
                vec_i=np.empty((1, 0), np.int64), n_threads=1)
    args.update(over)
    return args


# CSR structures (indptr start, decreasing indptr, nnz, data shorter than indices) no
# longer reach this entry point: check_csr_memview (tested below) checks them before a
# NodeRows is built. What it checks is the shapes of everything else.
@pytest.mark.parametrize("over, status", [
    ({}, _core.STATUS_OK),
    ({"g": np.ones(2)}, _core.STATUS_OK),                   # with gradient messages
    ({"entry_start": np.array([0, 2], np.int64)}, _core.STATUS_SHAPE),  # one per row + 1
    ({"u": np.ones(3)}, _core.STATUS_SHAPE),                # one input per column
    ({"beta": np.ones(3)}, _core.STATUS_SHAPE),             # one beta per row
    ({"slope": np.ones(1)}, _core.STATUS_SHAPE),            # one slope per row
    ({"fallback": np.empty(1)}, _core.STATUS_SHAPE),        # one fallback per row
    ({"g": np.ones(3)}, _core.STATUS_SHAPE),                # g: one per row, or none
    ({"g": np.ones(1)}, _core.STATUS_SHAPE),                # (1 is neither)
    ({"acc_b": np.empty((2, 3))}, _core.STATUS_SHAPE),      # one accumulator per column
    ({"acc_b": np.empty((0, 2))}, _core.STATUS_SHAPE),      # no block at all
    ({"acc_g": np.empty((1, 2))}, _core.STATUS_SHAPE),      # acc_g: the blocks of acc_b
    ({"acc_g": np.empty((2, 3))}, _core.STATUS_SHAPE),      # acc_g: one per column
    ({"scratch": np.empty((1, 2))}, _core.STATUS_SHAPE),    # one scratch row per block
    ({"cols": np.empty((3, 2), np.int64)}, _core.STATUS_SHAPE),  # one cols row per block
    # Workspace rows shorter than the longest row (2 entries, read from entry_start):
    ({"scratch": np.empty((2, 1))}, _core.STATUS_SHAPE),    # scratch
    ({"cols": np.empty((2, 1), np.int64)}, _core.STATUS_SHAPE),  # cols
    ({"w": np.empty((2, 1))}, _core.STATUS_SHAPE),          # w
    ({"where": np.empty((2, 1), np.int64)}, _core.STATUS_SHAPE),  # where
    ({"used_g": np.empty(3, np.uint8)}, _core.STATUS_SHAPE),  # one flag per block
    ({"used_b": np.empty(1, np.uint8)}, _core.STATUS_SHAPE),  # one flag per block
    ({"rule": 4}, _core.STATUS_RULE),                       # unknown rule code
    ({"rule": -1}, _core.STATUS_RULE),
    ({"rule": _core.RULE_SCORES}, _core.STATUS_RULE),       # user scores missing
    ({"rule": _core.RULE_SCORES, "ext": np.ones(2)}, _core.STATUS_RULE),  # 2 != 3 entries
    ({"rule": _core.RULE_WEIGHTS, "ext": np.ones(4)}, _core.STATUS_RULE),  # 4 != 3
    ({"rule": _core.RULE_SCORES, "ext": np.ones(3)}, _core.STATUS_OK),    # one per entry
    ({"temperature": -1.0}, _core.STATUS_TEMPERATURE),      # negative T
    ({"temperature": np.nan}, _core.STATUS_TEMPERATURE),    # NaN T
    ({"n_threads": 0}, _core.STATUS_THREADS),               # no threads
    ({"n_threads": 10**6}, _core.STATUS_OK),                # capped at the 2 blocks
], ids=["ok", "ok-grad", "entry-start", "u", "beta", "slope", "fallback", "g-long",
        "g-short", "acc-cols", "acc-blocks", "acc-g-blocks", "acc-g-cols",
        "scratch-blocks", "cols-blocks", "scratch-short", "cols-short", "w-short",
        "where-short", "used-g", "used-b", "rule4", "rule-1", "no-ext", "ext-short",
        "ext-long", "ext-ok", "T<0", "T=nan", "threads", "threads-huge"])
def test_rows_memview_status(over, status):
    args = _args(**over)
    before = {k: v.copy() for k, v in args.items() if k in ("acc_b", "acc_g", "fallback")}
    assert _core.rows_reverse_memview(**args) == status
    if status < 0:                                          # nothing written
        for k, v in before.items():
            assert np.array_equal(args[k], v, equal_nan=True)


@pytest.mark.parametrize("over, status", [
    ({}, _core.STATUS_OK),
    ({"acc": np.zeros((2, 3))}, _core.STATUS_SHAPE),        # one value per element
    ({"used": np.ones(3, np.uint8)}, _core.STATUS_SHAPE),   # one flag per block
    ({"n_threads": 0}, _core.STATUS_THREADS),
    ({"n_threads": 10**6}, _core.STATUS_OK),                # capped at the 1 chunk
], ids=["ok", "acc", "used", "threads", "threads-huge"])
def test_reduce_memview_status(over, status):
    args = dict(acc=np.zeros((2, 2)), used=np.ones(2, np.uint8), spread=0.0,
                out=np.empty(2), n_threads=1)
    args.update(over)
    assert _core.bbp_reduce_memview(**args) == status


@pytest.mark.parametrize("index_type", INDEX_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("indptr, indices, n_cols, status", [
    ([0, 1, 2], [0, 1], 2, _core.STATUS_OK),                      # valid
    ([0], [], 0, _core.STATUS_OK),                                # no rows at all
    ([], [], 2, _core.STATUS_CSR_INDPTR_START),                   # no indptr at all
    ([1, 1, 2], [0, 1], 2, _core.STATUS_CSR_INDPTR_START),        # not starting at 0
    ([0, 2, 1], [0, 1], 2, _core.STATUS_CSR_INDPTR_DECREASES),    # indptr decreases
    ([0, 1, 2], [0, 2], 2, _core.STATUS_CSR_INDEX_RANGE),         # column out of range
    ([0, 1, 2], [0, -1], 2, _core.STATUS_CSR_INDEX_RANGE),        # negative column
    ([0, 1, 3], [0, 1], 2, _core.STATUS_CSR_NNZ),                 # indptr[-1] != nnz
])
def test_check_csr_memview(indptr, indices, n_cols, status, index_type):
    assert _core.check_csr_memview(np.array(indptr, index_type),
                                   np.array(indices, index_type), n_cols) == status


def test_check_csr_memview_int64_beyond_int32():
    """int64 indices past 2**31 are checked as they are (no truncation to int32)."""
    big = 2**31 + 5
    indptr, indices = np.array([0, 1], np.int64), np.array([big], np.int64)
    assert _core.check_csr_memview(indptr, indices, big + 1) == _core.STATUS_OK
    assert _core.check_csr_memview(indptr, indices, big) == _core.STATUS_CSR_INDEX_RANGE


def test_check_csr_memview_refuses_mixed_index_types():
    """indices and indptr are one fused type: int32 with int64 has no kernel."""
    with pytest.raises(ValueError, match="dtype mismatch"):
        _core.check_csr_memview(np.array([0, 1], np.int64), np.array([0], np.int32), 1)


def test_one_status_table():
    """Every kernel status has a distinct value and a message (kernels.STATUS_MESSAGES),
    and the rule codes are distinct."""
    names = [n for n in dir(_core) if n.startswith("STATUS_")]
    values = [getattr(_core, n) for n in names]
    assert len(set(values)) == len(values)
    assert set(values) == set(STATUS_MESSAGES)
    assert {"STATUS_CSR_INDPTR_START", "STATUS_CSR_INDPTR_DECREASES",
            "STATUS_CSR_INDEX_RANGE", "STATUS_CSR_NNZ", "STATUS_NONFINITE"} <= set(names)
    rules = [getattr(_core, n) for n in dir(_core) if n.startswith("RULE_")]
    assert sorted(rules) == [_core.RULE_SIGN, _core.RULE_DEVIATION, _core.RULE_SCORES,
                             _core.RULE_WEIGHTS] and len(set(rules)) == 4


def test_same_bytes_memview():
    a = np.arange(6, dtype=np.float64)
    b = a.copy()
    as_bytes = lambda x: x.reshape(-1).view(np.uint8)  # noqa: E731
    assert _core.same_bytes_memview(as_bytes(a), as_bytes(b))
    b[5] = np.nextafter(b[5], 10)
    assert not _core.same_bytes_memview(as_bytes(a), as_bytes(b))
    assert not _core.same_bytes_memview(as_bytes(a), as_bytes(a[:5]))
    assert _core.same_bytes_memview(as_bytes(a[:0]), as_bytes(b[:0]))


def test_openmp_guard():
    """max_threads() works with or without OpenMP (1 without)."""
    assert isinstance(_core.openmp_enabled(), bool)
    assert _core.max_threads() >= 1
    if not _core.openmp_enabled():
        assert _core.max_threads() == 1


@pytest.mark.parametrize("n_threads", [1, 2, 3, 7, 10**6, np.int64(40000), None])
def test_check_n_threads_caps_at_available_cpus(n_threads):
    from refbbp.bbp.kernels import available_cpus
    got = check_n_threads(n_threads)
    cap = available_cpus() if _core.openmp_enabled() else 1
    assert isinstance(got, int) and 1 <= got <= cap
    if n_threads is not None:
        assert got == min(int(n_threads), cap)


@pytest.mark.parametrize("bad, error, match", [
    (0, ValueError, "positive int"),           # no threads
    (-3, ValueError, "positive int"),
    (2.0, TypeError, "got float"),             # not an int
    ("4", TypeError, "got str"),
    (True, TypeError, "got bool"),             # bools are not counts
])
def test_check_n_threads_refuses(bad, error, match):
    with pytest.raises(error, match=match):
        check_n_threads(bad)


@pytest.mark.parametrize("bad, error", [
    ({"u": np.ones(30, np.float32)}, TypeError),            # float32 values
    ({"beta": np.ones((40, 1))}, TypeError),                # not a vector
    ({"h": np.ones(80)[::2]}, TypeError),                   # not contiguous
    ({"slope": np.ones(39)}, ValueError),                   # one slope per row
    ({"g": np.ones(41)}, ValueError),                       # one gradient per row
    ({"g": np.ones(40, np.float32)}, TypeError),
    ({"rule_code": 7}, ValueError),                         # unknown rule
    ({"rule_code": _core.RULE_SCORES}, TypeError),          # user scores missing
    ({"rule_code": _core.RULE_WEIGHTS, "ext": np.ones(3)}, ValueError),  # one per entry
    ({"temperature": -1.0}, ValueError),                    # negative temperature
    ({"n_threads": 0}, ValueError),                         # no threads
    ({"rows": "other"}, TypeError),                         # another node's rows
], ids=["f32", "2d", "strided", "slope", "g", "g-f32", "rule", "no-ext", "ext-short", "T",
        "threads", "rows"])
def test_reverse_node_validates(rng, bad, error):
    """The Python wrapper checks dtype, contiguity and sizes before the kernel runs."""
    node = random_node(rng)
    a = node["a"]
    st = structure_of(a)
    bad = dict(bad)                      # the table is shared by the seeds
    if bad.get("rows") == "other":       # rows of another shape than the structure's
        bad["rows"] = csr_rows(a[:, :29])
    args = dict(st=st, rows=st.rows, u=node["u"], slope=node["slope"],
                bias_x=node["bias_x"], h=node["h"], g=None, beta=node["beta"],
                rule_code=_core.RULE_SIGN, temperature=1.0, n_threads=1)
    args.update(bad)
    with pytest.raises(error):
        reverse_node(**args)


@pytest.mark.parametrize("indices, indptr", [
    (np.int16, np.int16),                                   # not an index type
    (np.int32, np.int64),                                   # indices int32, indptr int64
    (np.int64, np.int32),
], ids=["int16", "mixed-32-64", "mixed-64-32"])
def test_add_csr_refuses_other_index_types(indices, indptr):
    """A CSR source takes int32 or int64 indices and indptr, one type for both."""
    a = sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]]))
    rows = _core.NodeRows(2, 2, 1)
    with pytest.raises(ValueError, match="dtype mismatch"):
        rows.add_csr(a.data, a.indices.astype(indices), a.indptr.astype(indptr), 0)
