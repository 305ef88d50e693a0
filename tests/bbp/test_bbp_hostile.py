"""Hostile arguments to refbbp.bbp and its results: user rules returning huge, complex or
odd values, nonsense thread counts, inputs that are not arrays of real numbers, and the
cost of ``Attribution.completeness()`` on long networks (issue 10)."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest

import refbbp
from refbbp.bbp.kernels import available_cpus
from refbbp.bbp.propagate import _check_finite_beta

from . import bbp_models as M


@pytest.fixture(scope="module")
def net():
    return M.load(M.two_layer_dense())


X = np.array([1.0, 2.0])


def _cancelling(layout):
    """Weights (1e308, -1e308, 1, 0, ...) on rows with 3+ components; rows with fewer
    get weights summing to 1 too."""
    out = np.zeros(layout.kappa.size)
    for p in range(layout.size):
        lo, hi = layout.indptr[p], layout.indptr[p + 1]
        if hi - lo >= 3:
            out[lo:lo + 3] = [1e308, -1e308, 1.0]
        elif hi - lo == 2:
            out[lo:hi] = [1e308, 1.0 - 1e308]
        elif hi - lo == 1:
            out[lo] = 1.0
    return out


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_rule_huge_cancelling_weights_refused_naming_node_and_row(net, backend):
    """A weights rule returning (1e308, -1e308, 1) per row passed the sum-to-1 check (its
    tolerance scaled with sum |alpha| = inf) and gave NaN attributions with no error.
    Now the overflow is refused, naming the node and the row."""
    rule = refbbp.weights_rule(_cancelling)
    with pytest.raises(ValueError, match=r"rule '_cancelling' at node \d+ \('Gemm_\d+'\) "
                                         r"returned weights too large .* at row 0"):
        refbbp.bbp(net, X, rule=rule, backend=backend)


def test_rule_weights_summing_to_inf_refused(net):
    """Weights (1e308, 1e308) sum to inf, and ``|inf - 1| <= 1e-9 * inf`` held: they were
    accepted. Now refused as an overflow."""
    def twice_huge(layout):
        return np.full(layout.kappa.size, 1e308)

    with pytest.raises(ValueError, match="too large for float64"):
        refbbp.bbp(net, X, rule=refbbp.weights_rule(twice_huge))


def test_beta_overflow_after_accumulation_refused_naming_the_node(net):
    """Finite messages can still add up to inf at a node; the result is refused (naming
    node and element) instead of returning inf/NaN attributions."""
    node_beta = [np.zeros((1, node.size)) for node in net.nodes]
    node_beta[1][0, 1] = np.inf
    want = f"node 1 ({net.nodes[1].name!r}): bias attribution overflowed float64 at element 1"
    with pytest.raises(FloatingPointError, match=re.escape(want)):
        _check_finite_beta(net, node_beta)
    node_beta[1][0, 1] = 1.0
    _check_finite_beta(net, node_beta)        # finite: accepted


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_rule_complex_scores_refused(net, backend):
    """Complex scores were cast to float64 with a ComplexWarning, silently dropping the
    imaginary part. Now refused with a TypeError naming the dtype."""
    def complex_scores(layout):
        return layout.kappa + 1j

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match=r"returned dtype complex128, expected an array "
                                            r"of real scores"):
            refbbp.bbp(net, X, rule=complex_scores, backend=backend)


@pytest.mark.parametrize("bad", [
    lambda layout: np.array(["a"] * layout.kappa.size),             # strings
    lambda layout: np.array([object()] * layout.kappa.size),        # objects
    lambda layout: None,                                            # nothing
])
def test_rule_non_numeric_scores_refused(net, bad):
    """Scores that are not real numbers are refused with a TypeError naming the rule."""
    with pytest.raises(TypeError, match="rule '.*' at node"):
        refbbp.bbp(net, X, rule=bad)


@pytest.mark.parametrize("kind", [np.int64, np.int8, bool])
def test_rule_integer_and_bool_scores_accepted_as_floats(net, kind):
    """Integer and bool scores are real numbers: accepted, and the same as the float
    scores of the same values."""
    def scores(layout):
        return (layout.kappa > 0).astype(kind)

    def float_scores(layout):
        return (layout.kappa > 0).astype(np.float64)

    got = refbbp.bbp(net, X, rule=scores)
    want = refbbp.bbp(net, X, rule=float_scores)
    np.testing.assert_array_equal(got.beta, want.beta)
    assert got.completeness().ok()


def test_rule_wrong_shape_still_refused(net):
    """A rule returning one value too few is refused (already so; kept)."""
    with pytest.raises(ValueError, match="returned an array of shape"):
        refbbp.bbp(net, X, rule=lambda layout: layout.kappa[:-1])


@pytest.mark.parametrize("n_threads, error", [
    (True, TypeError), (np.bool_(True), TypeError), (2.0, TypeError), ("2", TypeError),
    (-1, ValueError), (0, ValueError), (np.int64(-3), ValueError),
])
def test_n_threads_nonsense_refused_naming_n_threads(net, n_threads, error):
    """bools, floats, strings and counts < 1 are refused, naming n_threads."""
    with pytest.raises(error, match="n_threads"):
        refbbp.bbp(net, X, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", [np.int64(1), np.int32(2), np.uint8(1), 10**30])
def test_n_threads_numpy_ints_accepted_and_huge_capped(net, n_threads):
    """NumPy integers are accepted; a huge count is capped at the CPUs available."""
    att = refbbp.bbp(net, X, n_threads=n_threads)
    assert 1 <= att.n_threads <= available_cpus()
    assert att.completeness().ok()


@pytest.mark.parametrize("x, words", [
    (np.array([1, "a"], dtype=object), ["x:", "numeric", "object"]),
    (np.array([1 + 1j, 2]), ["x:", "numeric", "complex128"]),
    (np.array(["1", "2"]), ["x:", "numeric", "<U1"]),
    ([[1.0, 2.0], [3.0]], ["x:", "not an array of numbers"]),        # ragged
    ([np.nan, 1.0], ["x:", "NaN or infinite", "1 of 2"]),
    ([1.0, np.inf], ["x:", "NaN or infinite"]),
    (np.zeros(3), ["x:", "input of shape (3,) does not fit"]),
    (np.zeros((0, 2)), ["x:", "empty batch"]),
    (None, ["x:", "numeric"]),
])
def test_bbp_bad_x_names_x(net, x, words):
    """x of object, complex or string dtype, ragged lists, NaN/Inf and wrong shapes give
    InputShapeError naming x (ragged lists used to raise numpy's own ValueError)."""
    with pytest.raises(refbbp.InputShapeError) as exc:
        refbbp.bbp(net, x)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


# ------------------------------------------------------------ completeness is linear
def _chain(n):
    """A chain of n Gemm+Relu layers on 4 features (every node a cut)."""
    rng = np.random.default_rng(0)
    g = M.Graph((4,))
    t = "x"
    for _ in range(n):
        t = g.gemm(t, np.eye(4) + 0.01 * rng.normal(size=(4, 4)), 0.01 * rng.normal(size=4))
        t = g.op("Relu", [t])
    return M.load(g.model(t))


def _profiled_calls(func):
    """Number of Python and C function calls (generator resumptions included) that
    ``func()`` makes: a count of steps, independent of the machine's speed."""
    calls = 0

    def prof(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(prof)
    try:
        func()
    finally:
        sys.setprofile(None)
    return calls


def test_completeness_is_linear_in_the_node_count():
    """completeness() summed, for every cut node k, the mass of every node after k: a
    3,000-node chain took 2.9 s, a 10,000-node one over 20 s. Now one suffix sum: the
    number of calls it makes grows in proportion to the nodes (x4 nodes -> about x4
    calls; the quadratic version made about x16)."""
    atts = {}
    for n in (100, 400):
        net = _chain(n)
        assert len(net.cut_nodes()) == len(net.nodes)       # every node is a cut
        atts[n] = refbbp.bbp(net, np.ones(4))
        assert atts[n].completeness().ok()
    small = _profiled_calls(atts[100].completeness)
    large = _profiled_calls(atts[400].completeness)
    assert large <= 5 * small, (small, large)
