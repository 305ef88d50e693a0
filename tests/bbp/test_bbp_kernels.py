"""The Cython kernels of refbbp/_core.pyx, called through their ``*_memview`` entry
points (STYLE 7, 12), against a replicated reference in dense-matrix form (STYLE 11).

The replicated reference (:func:`dense_bbp_node`) follows SPEC 3.2-3.6 with whole
matrices: components ``K = diag(c) A * u``, a score matrix, a masked row softmax, the
message matrix ``alpha * beta[:, None]`` and its column sums. It shares no code with the
kernel nor with refbbp/_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from refbbp import _core
from refbbp.bbp.kernels import distribute_node
from refbbp.bbp.structure import NodeStructure

RULES = {"sign": 0, "deviation": 1, "scores": 2, "weights": 3}
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


def structure_of(a):
    """A NodeStructure for a CSR matrix (one input)."""
    tindptr = np.empty(a.shape[1] + 1, np.int32)
    tperm = np.empty(a.nnz, np.int32)
    assert _core.csr_transpose_memview(a.indptr, a.indices, tindptr, tperm) == 0
    counts = np.diff(a.indptr)
    return NodeStructure(a.data, a.indices, a.indptr, np.array([0, a.shape[1]]), tindptr,
                         tperm, np.flatnonzero(counts == 0))


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


def run_kernel(node, rule, temperature, n_threads=1):
    a = node["a"]
    ext = {"scores": node["scores"], "weights": node["weights"]}.get(rule)
    return distribute_node(structure_of(a), a.data, node["u"], node["slope"],
                           node["bias_x"], node["h"], node["beta"], rule_code=RULES[rule],
                           temperature=temperature, n_threads=n_threads,
                           msg=np.empty(a.nnz), ext=ext)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("temperature", TEMPERATURES, ids=lambda t: f"T={t}")
@pytest.mark.parametrize("rule", list(RULES))
def test_kernel_matches_dense_reference(rng, rule, temperature):
    node = random_node(rng)
    received, fallback = run_kernel(node, rule, temperature)
    ext = {"scores": node["scores"], "weights": node["weights"]}.get(rule)
    want, want_fb = dense_bbp_node(node["a"], node["u"], node["slope"], node["bias_x"],
                                   node["h"], node["beta"], rule, temperature, ext)
    assert received.dtype == np.float64 and fallback.dtype == np.float64
    scale = np.abs(node["beta"]).sum() * (1 + np.abs(node["weights"]).max())
    assert_allclose(received, want, rtol=0, atol=AGREE * scale)
    assert_array_equal(fallback, want_fb)
    # Completeness of the node: everything beta sent arrived somewhere.
    assert abs(received.sum() - node["beta"].sum()) <= 1e-12 * scale


@pytest.mark.parametrize("rule", list(RULES))
def test_kernel_threads_bitwise(rng, rule):
    node = random_node(rng, n_rows=3000, n_cols=500, density=0.05, empty_rows=20)
    one = run_kernel(node, rule, 1.0, n_threads=1)
    two = run_kernel(node, rule, 1.0, n_threads=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_rows_memview_messages_sum_to_beta(rng):
    """Pass 1 alone: every row's messages sum to its beta, zero-input entries get 0."""
    node = random_node(rng, empty_rows=0)
    a = node["a"]
    msg = np.full(a.nnz, np.nan)
    fb = np.full(a.shape[0], np.nan)
    status = _core.bbp_rows_memview(a.data, a.indices, a.indptr, node["u"], node["slope"],
                                    node["bias_x"], node["h"], node["beta"], np.empty(0),
                                    0, 1.0, msg, fb, 1)
    assert status == _core.STATUS_OK
    assert not np.isnan(msg).any() and not np.isnan(fb).any()
    sums = np.add.reduceat(msg, a.indptr[:-1])
    assert_allclose(sums, node["beta"], rtol=1e-13, atol=1e-300)
    kappa = np.repeat(node["slope"], np.diff(a.indptr)) * a.data * node["u"][a.indices]
    no_fb = np.repeat(fb == 0, np.diff(a.indptr))
    assert np.all(msg[no_fb & (kappa == 0)] == 0)


def test_rows_memview_huge_scores_stable():
    """Huge scores: the row maximum is subtracted, nothing overflows (SPEC 3.4)."""
    a = sp.csr_array(np.array([[1e300, -1e300, 1e-300, 3.0]]))
    msg, fb = np.empty(4), np.empty(1)
    for rule, t in [(0, 1.0), (0, 1e-300), (1, 1.0), (0, 1e300)]:
        status = _core.bbp_rows_memview(a.data, a.indices, a.indptr, np.ones(4), np.ones(1),
                                        np.array([-1.0]), np.array([7.0]), np.array([2.0]),
                                        np.empty(0), rule, t, msg, fb, 1)
        assert status == 0 and np.all(np.isfinite(msg))
        assert_allclose(msg.sum(), 2.0, rtol=1e-15)


def test_rows_memview_nonfinite_flags_row():
    """A component that overflows to inf with a zero bias (score 0 * inf) is reported,
    not turned into a silent NaN: status 1 and NaN in fallback at that row."""
    a = sp.csr_array(np.array([[1.0, 1.0], [1e200, 1.0]]))
    u = np.array([1e200, 1.0])
    msg, fb = np.empty(a.nnz), np.empty(2)
    status = _core.bbp_rows_memview(a.data, a.indices, a.indptr, u, np.ones(2), np.zeros(2),
                                    np.ones(2), np.ones(2), np.empty(0), 0, 1.0, msg, fb, 2)
    assert status == _core.STATUS_NONFINITE
    assert np.isnan(fb[1]) and fb[0] == 0


def _args(**over):
    a = sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]]))
    args = dict(data=a.data, indices=a.indices, indptr=a.indptr, u=np.ones(2),
                slope=np.ones(2), bias_x=np.ones(2), h=np.ones(2), beta=np.ones(2),
                ext=np.empty(0), rule=0, temperature=1.0, msg=np.empty(a.nnz),
                fallback=np.empty(2), n_threads=1)
    args.update(over)
    return args


@pytest.mark.parametrize("over, status", [
    ({}, _core.STATUS_OK),
    ({"data": np.ones(2)}, _core.STATUS_SHAPE),             # data shorter than indices
    ({"msg": np.empty(2)}, _core.STATUS_SHAPE),             # output too short
    ({"beta": np.ones(3)}, _core.STATUS_SHAPE),             # one beta per row
    ({"fallback": np.empty(1)}, _core.STATUS_SHAPE),        # one fallback per row
    ({"rule": 4}, _core.STATUS_RULE),                       # unknown rule code
    ({"rule": -1}, _core.STATUS_RULE),
    ({"rule": 2}, _core.STATUS_RULE),                       # user scores missing
    ({"temperature": -1.0}, _core.STATUS_TEMPERATURE),      # negative T
    ({"temperature": np.nan}, _core.STATUS_TEMPERATURE),    # NaN T
    ({"n_threads": 0}, _core.STATUS_THREADS),               # no threads
], ids=["ok", "data", "msg", "beta", "fallback", "rule4", "rule-1", "no-ext", "T<0",
        "T=nan", "threads"])
def test_rows_memview_status(over, status):
    assert _core.bbp_rows_memview(**_args(**over)) == status


@pytest.mark.parametrize("over, status", [
    ({}, _core.STATUS_OK),
    ({"msg": np.empty(2)}, _core.STATUS_SHAPE),             # one message per entry
    ({"u": np.ones(3)}, _core.STATUS_SHAPE),                # one value per column
    ({"out": np.empty(1)}, _core.STATUS_SHAPE),             # one output per column
    ({"n_threads": 0}, _core.STATUS_THREADS),
], ids=["ok", "msg", "u", "out", "threads"])
def test_gather_memview_status(over, status):
    a = sp.csr_array(np.array([[1.0, 2.0], [0.0, 3.0]]))
    st = structure_of(a)
    args = dict(tindptr=st.tindptr, tperm=st.tperm, msg=np.ones(a.nnz), u=np.ones(2),
                skip_zero_inputs=False, spread=0.0, out=np.empty(2), n_threads=1)
    args.update(over)
    assert _core.bbp_gather_memview(**args) == status


def test_gather_memview_column_sums(rng):
    """Pass 2 alone: out = column sums of the message matrix, plus spread; zero-input
    columns skipped on request."""
    node = random_node(rng, empty_rows=0)
    a, u = node["a"], node["u"]
    st = structure_of(a)
    msg = rng.normal(size=a.nnz)
    out = np.empty(a.shape[1])
    assert _core.bbp_gather_memview(st.tindptr, st.tperm, msg, u, False, 0.25, out, 2) == 0
    want = sp.csr_array((msg, a.indices, a.indptr), shape=a.shape).sum(0) + 0.25
    assert_allclose(out, want, rtol=1e-14)
    assert _core.bbp_gather_memview(st.tindptr, st.tperm, msg, u, True, 0.25, out, 2) == 0
    assert np.all(out[u == 0] == 0.25)
    assert_allclose(out[u != 0], want[u != 0], rtol=1e-14)


def test_transpose_memview_matches_scipy(rng):
    a = random_node(rng, n_rows=50, n_cols=37)["a"]
    st = structure_of(a)
    at = a.T.tocsr()
    assert_array_equal(st.tindptr, at.indptr)
    # Column by column, in increasing row order: the entries of A^T row by row.
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    assert_array_equal(rows[st.tperm], at.indices)
    assert_array_equal(a.data[st.tperm], at.data)


def test_transpose_memview_status():
    ind, ptr = np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32)
    assert _core.csr_transpose_memview(ptr, ind, np.empty(3, np.int32),
                                       np.empty(1, np.int32)) == _core.STATUS_SHAPE


@pytest.mark.parametrize("indptr, indices, n_cols, status", [
    ([0, 1, 2], [0, 1], 2, 0),          # valid
    ([1, 1, 2], [0, 1], 2, 1),          # indptr does not start at 0
    ([0, 2, 1], [0, 1], 2, 2),          # indptr decreases
    ([0, 1, 2], [0, 2], 2, 3),          # column out of range
    ([0, 1, 2], [0, -1], 2, 3),         # negative column
    ([0, 1, 3], [0, 1], 2, 4),          # indptr[-1] != nnz
])
def test_check_csr_memview(indptr, indices, n_cols, status):
    assert _core.check_csr_memview(np.array(indptr, np.int32), np.array(indices, np.int32),
                                   n_cols) == status


@pytest.mark.parametrize("bad, error", [
    ({"u": np.ones(30, np.float32)}, TypeError),            # float32 values
    ({"beta": np.ones((40, 1))}, TypeError),                # not a vector
    ({"h": np.ones(80)[::2]}, TypeError),                   # not contiguous
    ({"slope": np.ones(39)}, ValueError),                   # one slope per row
    ({"msg": np.empty(3)}, ValueError),                     # workspace too small
    ({"rule_code": 7}, ValueError),                         # unknown rule
    ({"temperature": -1.0}, ValueError),                    # negative temperature
    ({"n_threads": 0}, ValueError),                         # no threads
], ids=["f32", "2d", "strided", "slope", "msg", "rule", "T", "threads"])
def test_distribute_node_validates(rng, bad, error):
    """The Python wrapper checks dtype, contiguity and sizes before the kernel runs."""
    node = random_node(rng)
    a = node["a"]
    args = dict(st=structure_of(a), data=a.data, u=node["u"], slope=node["slope"],
                bias_x=node["bias_x"], h=node["h"], beta=node["beta"], rule_code=0,
                temperature=1.0, n_threads=1, msg=np.empty(a.nnz))
    args.update(bad)
    with pytest.raises(error):
        distribute_node(**args)
