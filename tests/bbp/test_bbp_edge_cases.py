"""Named edge cases of BBp (SPEC section 3): zero inputs, saturated activations, rows
without components, negative slopes, extreme magnitudes, multi-input nodes, batches,
user rules and thread counts."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import refbbp

from . import bbp_models as M
from .test_bbp_properties import assert_backends_agree, assert_complete, check_model

RULES = ["sign", "deviation"]


# --------------------------------------------------------------- fallbacks
@pytest.mark.parametrize("rule", RULES)
def test_all_zero_input_mlp(rng, rule):
    """x = 0: the first layer's rows have no non-zero component, so their beta spreads
    uniformly over their (dense) receptive field: every input gets b^x / n."""
    net = M.load(M.mlp(rng))
    att = check_model(net, np.zeros(6), rule, 1.0)
    assert_allclose(att.beta, np.full(6, att.bias_x / 6), rtol=1e-13)
    assert att.fallback[1] > 0 and att.fallback_total == att.fallback.sum()
    assert_allclose(att.fallback[1], np.abs(att.node_beta[1]).sum(), rtol=1e-14)


@pytest.mark.parametrize("rule", RULES)
def test_all_zero_input_cnn(rng, rule):
    """x = 0 through conv, BN, ReLU and MaxPool: fallbacks at the first conv (and at max
    rows whose selected input is 0), completeness everywhere."""
    net = M.load(M.cnn_bn_maxpool(rng))
    att = check_model(net, np.zeros((2, 6, 6)), rule, 1.0)
    assert att.fallback[1] > 0
    assert att.fallback_total > 0


@pytest.mark.parametrize("rule", RULES)
def test_saturated_clip(rng, rule):
    """Saturated Clip rows (c = 0, b^x = d = lo or hi) have no non-zero component: their
    beta (own bias g * d included) takes the receptive-field fallback, and the mass
    reported is exactly theirs."""
    net = M.load(M.saturating_clip(rng, None, lo=-0.3, hi=0.3))
    for _ in range(100):                              # an input with both kinds of rows
        x = rng.normal(size=5) * 0.5
        saturated = net.trace(x).pieces[1][0] != 1
        if saturated.any() and (~saturated).any():
            break
    assert saturated.any() and (~saturated).any()
    att = refbbp.bbp(net, x, rule=rule, return_layers=True)
    layer = att.layers[1]
    assert np.any(layer.own[saturated] != 0)        # the offsets d carry bias
    assert_allclose(att.fallback[1], np.abs(layer.beta[saturated]).sum(), rtol=1e-14)
    assert_complete(att)
    assert_backends_agree(att, refbbp.bbp(net, x, rule=rule, backend="numpy"))


@pytest.mark.parametrize("fill", [0.5, 2.0])
def test_row_without_structural_nonzero(rng, fill):
    """Pad(constant) before MaxPool: the importer's copy node has padded rows with no
    structural non-zero and bias ``fill``. Their beta spreads over every element of the
    node's input (SPEC 3.6) and is reported."""
    net = M.load(M.empty_row_pad(rng, fill=fill))
    # An input for which a pad wins, whatever the seed: move a random x along the conv's
    # first row a_0 until its pre-activation is -1, so ReLU(conv)[0, 0, 0] = 0. The first
    # MaxPool window reads the 6x6 padded map at rows and columns 0-1: three pads of value
    # fill > 0 and that 0, so it selects a pad (padding element 0 also comes first).
    conv = net.nodes[1]
    assert conv.kind == "affine" and conv.inputs == [0]
    a0 = conv.weights[0].toarray()[0]
    assert np.any(a0 != 0)
    x = rng.normal(size=16)
    x -= (a0 @ x + conv.bias[0] + 1.0) * a0 / (a0 @ a0)
    x = x.reshape(1, 4, 4)
    gather = next(k for k, n in enumerate(net.nodes) if n.name.endswith("/gather"))
    pool = next(k for k, n in enumerate(net.nodes) if n.kind == "max")
    assert net.trace(x).pre[1][0, 0] == pytest.approx(-1.0)
    assert net.trace(x).selected[pool][0, 0] == net.nodes[pool].window[0, 0] == 0
    att = refbbp.bbp(net, x, return_layers=True)
    a = net.nodes[gather].weights[0]
    empty = np.diff(a.indptr) == 0
    beta = att.layers[gather].beta
    assert empty.any() and np.any(beta[empty] != 0)
    assert att.fallback[gather] >= np.abs(beta[empty]).sum() * (1 - 1e-14)
    assert_complete(att)
    assert_backends_agree(att, refbbp.bbp(net, x, backend="numpy"))


@pytest.mark.parametrize("rule", RULES)
def test_max_row_with_zero_selected_input(rule):
    """MaxPool on the input, x = 0: the Gemm's rows have no non-zero component, so the
    max node receives beta by fallback; its rows select a 0, have no non-zero component
    either, and fall back over their windows: beta is uniform, b^x / 4 everywhere."""
    net = M.load(M.maxpool_head())
    att = check_model(net, np.zeros((1, 2, 2)), rule, 1.0)
    k = next(k for k, n in enumerate(net.nodes) if n.kind == "max")
    assert att.fallback[k] > 0 and att.fallback[k + 1] > 0
    assert_allclose(att.beta, np.full((1, 2, 2), att.bias_x / 4), rtol=1e-14)


# ------------------------------------------------------------ activations
@pytest.mark.parametrize("rule", RULES)
def test_prelu_negative_slope(rng, rule):
    """PRelu with negative slopes: rows on the negative piece have c < 0, so their
    components ``c * A u`` and local bias ``c * b`` change sign; completeness holds and
    the backends agree."""
    net = M.load(M.prelu_negative(rng))
    for _ in range(100):                              # an input on a negative piece
        x = rng.normal(size=5)
        if np.any(net.trace(x).slopes_offsets(1)[0] < 0):
            break
    att = check_model(net, x, rule, 1.0)
    c, _ = att.linear.trace.slopes_offsets(1)
    assert np.any(c < 0)


# ------------------------------------------------------------- magnitudes
@pytest.mark.parametrize("temperature", [0.0, 1.0, np.inf])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("scale", [1e30, 1e-30], ids=["1e+30", "1e-30"])
def test_extreme_weight_magnitudes(scale, rule, temperature):
    """Weights and biases of magnitude 1e+-30: scores of 1e30 (or 1e-30) stay stable:
    no overflow, no NaN, completeness and agreement hold."""
    rng = np.random.default_rng(7)
    net = M.load(M.scaled_mlp(rng, scale))
    x = rng.normal(size=5)
    att = check_model(net, x, rule, temperature)
    assert np.all(np.isfinite(att.beta))
    assert abs(att.value) > 0


# ---------------------------------------------------------------- graphs
@pytest.mark.parametrize("rule", RULES)
def test_residual_graph(rng, rule):
    """Residual Add (a node with two inputs): completeness at the cut nodes only (the
    nodes inside the block are not cuts)."""
    net = M.load(M.residual(rng))
    att = check_model(net, rng.normal(size=(2, 5, 5)), rule, 1.0)
    cuts = net.cut_nodes()
    add = next(k for k, n in enumerate(net.nodes) if len(n.inputs) == 2)
    assert add in cuts and (add - 1) not in cuts
    assert set(att.completeness().cuts) == set(cuts)


def test_concat_softmax_over_union_of_inputs(rng):
    """After a Concat the consumer node reads two nodes; with T = inf each row splits its
    beta uniformly over the non-zero components of *both* inputs together."""
    net = M.load(M.concat(rng))
    x = rng.normal(size=(2, 4, 4))
    att = refbbp.bbp(net, x, rule="sign", temperature=np.inf, return_layers=True)
    assert_complete(att)
    k = next(k for k, n in enumerate(net.nodes) if len(n.inputs) == 2)
    node, trace = net.nodes[k], att.linear.trace
    c = trace.slopes_offsets(k)[0][0]
    K = [c[:, None] * w.toarray() * trace.values[i][0][None, :]
         for i, w in zip(node.inputs, node.weights)]
    n_p = sum((Ki != 0).sum(1) for Ki in K)
    share = np.divide(att.layers[k].beta, n_p, out=np.zeros(node.size), where=n_p > 0)
    for i, Ki in zip(node.inputs, K):
        assert net.consumers()[i] == [k]
        assert_allclose(att.layers[i].beta_in, (Ki != 0).T @ share, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------- batches
@pytest.mark.parametrize("rule", RULES)
def test_batch_equals_one_by_one(rng, rule):
    net = M.load(M.cnn_bn_maxpool(rng))
    xs = rng.normal(size=(3, 2, 6, 6))
    xs[1] = 0.0                                       # one input with fallbacks
    batch = refbbp.bbp(net, xs, target=[0, 1, 2], rule=rule, return_layers=True)
    assert batch.beta.shape == xs.shape and batch.fallback.shape == (3, len(net.nodes))
    assert batch.bias_x.shape == (3,) and batch.fallback_total.shape == (3,)
    for i in range(3):
        one = refbbp.bbp(net, xs[i], target=i, rule=rule, return_layers=True)
        assert_allclose(batch.beta[i], one.beta, rtol=1e-12, atol=1e-14)
        assert_allclose(batch.fallback[i], one.fallback, rtol=1e-12, atol=1e-14)
        assert_allclose(batch.layers[1].beta_in[i], one.layers[1].beta_in, rtol=1e-12,
                        atol=1e-14)
    assert batch.completeness().ok()


# -------------------------------------------------------------- user rules
@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("name", RULES)
def test_builtin_rules_as_callables(rng, name, backend):
    """sign_scores / deviation_scores passed as callables give the built-in rules' bits."""
    net = M.load(M.concat(rng))
    x = rng.normal(size=(2, 4, 4))
    func = {"sign": refbbp.sign_scores, "deviation": refbbp.deviation_scores}[name]
    a = refbbp.bbp(net, x, rule=name, temperature=0.5, backend=backend)
    b = refbbp.bbp(net, x, rule=func, temperature=0.5, backend=backend)
    assert np.array_equal(a.beta, b.beta)


def test_user_scores_rule(rng):
    """A user scores rule (the magnitude of the components) goes through the softmax
    with the temperature; backends agree and completeness holds."""
    net = M.load(M.cnn_bn_maxpool(rng))
    x = rng.normal(size=(2, 6, 6))
    seen = []

    def magnitude(layout):
        seen.append((layout.index, layout.kappa.size, layout.size))
        assert np.all(layout.kappa != 0)
        assert np.array_equal(layout.kappa, layout.weight * layout.value)
        return np.abs(layout.kappa)

    for t in (0.0, 1.0, np.inf):
        a = refbbp.bbp(net, x, rule=magnitude, temperature=t)
        b = refbbp.bbp(net, x, rule=magnitude, temperature=t, backend="numpy")
        assert_complete(a)
        assert_backends_agree(a, b)
    assert {k for k, _, _ in seen} >= {1, 2, 3}       # called once per node, max included
    if True:
        u = refbbp.bbp(net, x, rule=lambda lay: np.zeros(lay.kappa.size), temperature=1.0)
        v = refbbp.bbp(net, x, rule="sign", temperature=np.inf)
        assert_allclose(u.beta, v.beta, rtol=1e-13, atol=1e-15)  # equal scores: uniform


def test_user_weights_rule_with_negative_weights(rng):
    """Weights summing to 1 per row, some negative (paper section 4.2), are used as
    they are: completeness holds, backends agree."""
    @refbbp.weights_rule
    def tilted(layout):
        n = layout.counts[layout.row]
        mean = layout.row_sum(layout.kappa)[layout.row] / n
        return 1.0 / n + 0.8 * (layout.kappa - mean) / (np.abs(layout.kappa).max() + 1)

    net = M.load(M.residual(rng))
    x = rng.normal(size=(2, 5, 5))
    a = refbbp.bbp(net, x, rule=tilted, return_layers=True)
    b = refbbp.bbp(net, x, rule=tilted, backend="numpy")
    assert_complete(a)
    assert_backends_agree(a, b)


def test_uniform_weights_rule_equals_infinite_temperature(rng):
    @refbbp.weights_rule
    def uniform(layout):
        return 1.0 / layout.counts[layout.row]

    net = M.load(M.cnn_bn_maxpool(rng))
    x = rng.normal(size=(2, 6, 6))
    a = refbbp.bbp(net, x, rule=uniform)
    b = refbbp.bbp(net, x, rule="deviation", temperature=np.inf)
    assert_allclose(a.beta, b.beta, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_bad_weights_rule_names_node_and_row(rng, backend):
    @refbbp.weights_rule
    def bad(layout):
        w = 1.0 / layout.counts[layout.row]
        if layout.index == 1:
            w = w.copy()
            first = layout.indptr[np.flatnonzero(layout.counts)[1]]   # 2nd row with comps
            w[first] += 0.5
        return w

    net = M.load(M.mlp(rng))
    x = rng.normal(size=6) + 3
    att = refbbp.bbp(net, x, rule="sign", return_layers=True)
    rows = np.flatnonzero(att.layers[1].h)  # active ReLU rows have components
    with pytest.raises(ValueError, match=rf"node 1 .*row {rows[1]} sums to 1\.5"):
        refbbp.bbp(net, x, rule=bad, backend=backend)


@pytest.mark.parametrize("out, error, match", [
    (lambda lay: np.zeros(lay.kappa.size + 1), ValueError, "shape"),    # wrong length
    (lambda lay: np.full(lay.kappa.size, np.nan), ValueError, "non-finite"),
    (lambda lay: np.full(lay.kappa.size, np.inf), ValueError, "non-finite"),
    (lambda lay: "scores", ValueError, "shape|expected"),               # not numbers
    (lambda lay: None, ValueError, "shape"),                            # nothing
], ids=["length", "nan", "inf", "string", "none"])
def test_bad_scores_rule(rng, out, error, match):
    net = M.load(M.mlp(rng))
    with pytest.raises((error, TypeError), match=match):
        refbbp.bbp(net, rng.normal(size=6), rule=out)


# ----------------------------------------------------------------- threads
@pytest.mark.parametrize("rule", RULES + ["callable"])
def test_threads_bitwise_identical(rule):
    """1 and 2 threads give the same bits (each number is computed by one thread by the
    same operations), on a model whose nodes span many row chunks."""
    rng = np.random.default_rng(11)
    net = M.load(M.cnn_bn_maxpool(rng, c_in=3, hw=16))
    x = rng.normal(size=(2, 3, 16, 16))
    r = refbbp.sign_scores if rule == "callable" else rule
    one = refbbp.bbp(net, x, rule=r, n_threads=1, return_layers=True)
    two = refbbp.bbp(net, x, rule=r, n_threads=2, return_layers=True)
    assert np.array_equal(one.beta, two.beta)
    assert np.array_equal(one.fallback, two.fallback)
    for la, lb in zip(one.layers, two.layers):
        assert np.array_equal(la.beta_in, lb.beta_in)


def test_user_rule_called_alike_by_both_backends(rng):
    """Both backends call a rule once per node with beta to distribute, output first,
    with the same layouts (same components in the same order)."""
    net = M.load(M.concat(rng))
    x = rng.normal(size=(2, 4, 4))
    calls = {}
    for backend in ("cython", "numpy"):
        seen = calls[backend] = []

        def record(layout, seen=seen):
            seen.append((layout.index, layout.indptr.copy(), layout.kappa.copy(),
                         layout.input.copy(), layout.column.copy()))
            return layout.kappa

        refbbp.bbp(net, x, rule=record, backend=backend)
    assert [c[0] for c in calls["cython"]] == [c[0] for c in calls["numpy"]]
    assert calls["cython"][0][0] == net.output
    for a, b in zip(calls["cython"], calls["numpy"]):
        for u, v in zip(a[1:], b[1:]):
            assert np.array_equal(u, v)
