"""The linear region ``R(x)`` and exact Integrated Gradients (SPEC section 7).

1. A hand-worked two-neuron ReLU network: known segments, binding constraints and IG.
2. Random MLPs (ReLU, LeakyReLU, PRelu, Clip) and CNNs with MaxPool: just inside the
   segment the pattern is unchanged and ``f = w . x' + b^x``; just outside it changed.
3. Exact IG: completeness to 1e-9 x scale, agreement with a 10^5-step Riemann sum to
   the Riemann error, and ``gradient * (x - baseline)`` on a linear network.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbbp
from tests.helpers import make_model, make_node
from tests.strategies import cnns, mlps, seeds

EXACT = 1e-9


def load(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", refbbp.ImportNotice)
        return refbbp.load(model)


def two_neuron():
    """``f(x) = relu(x1) + 2 relu(x2 - 1)``: node 1 is Gemm+Relu, node 2 the head."""
    nodes = [make_node("Gemm", ["x", "W1", "b1"], ["g1"], transB=1),
             make_node("Relu", ["g1"], ["h1"]),
             make_node("Gemm", ["h1", "W2", "b2"], ["logits"], transB=1)]
    inits = {"W1": np.eye(2), "b1": np.array([0.0, -1.0]),
             "W2": np.array([[1.0, 2.0]]), "b2": np.zeros(1)}
    return load(make_model(nodes, {"x": (2,)}, ["logits"], inits))


def relu_node(net):
    return next(k for k, n in enumerate(net.nodes) if n.activation is not None)


# ------------------------------------------------------------------ 1. hand-worked
def test_two_neuron_segments():
    net = two_neuron()
    k = relu_node(net)
    r = refbbp.region(net, np.array([1.0, 2.0]))
    np.testing.assert_array_equal(r.w, [1.0, 2.0])
    assert r.bias_x == -2.0
    seg = r.segment(np.array([-1.0, 0.0]))       # z1 = 1 - t reaches 0 at t = 1
    assert seg.t_hi == 1.0 and seg.t_lo == -np.inf and seg.lo is None
    assert seg.hi == refbbp.network.Boundary(k, 0, "breakpoint", 0.0)
    seg = r.segment(np.array([1.0, 1.0]))        # both z reach 0 at t = -1: the first binds
    assert seg.t_lo == -1.0 and seg.t_hi == np.inf
    assert seg.lo == refbbp.network.Boundary(k, 0, "breakpoint", 0.0)
    seg = r.segment(np.array([0.0, -4.0]))       # z2 = 1 - 4t
    assert seg.t_hi == 0.25 and seg.hi.element == 1
    seg = r.segment(np.zeros(2))
    assert (seg.t_lo, seg.t_hi) == (-np.inf, np.inf)
    assert r.contains([0.5, 1.5]) and not r.contains([0.5, 0.5])
    assert not r.contains([0.0, 2.0])            # z1 = 0: the left (inactive) piece


def test_two_neuron_at_a_breakpoint():
    """At z1 = 0 (ReLU's left piece), the region is z1 <= 0: t_hi = 0 moving up."""
    net = two_neuron()
    r = refbbp.region(net, np.array([0.0, 2.0]))
    seg = r.segment(np.array([1.0, 0.0]))
    assert seg.t_hi == 0.0 and seg.t_lo == -np.inf
    seg = r.segment(np.array([-1.0, 0.0]))
    assert seg.t_hi == np.inf and seg.t_lo == 0.0


def test_two_neuron_integrated_gradients():
    net = two_neuron()
    # path t (1, 2): z1 = t (inactive only at t = 0), z2 = 2t - 1 (active after 1/2)
    ig = refbbp.integrated_gradients(net, np.array([1.0, 2.0]))
    np.testing.assert_allclose(ig.attributions, [1.0, 2.0], rtol=0, atol=1e-12)
    assert ig.n_pieces == 2
    np.testing.assert_allclose(ig.breaks, [0.0, 0.5, 1.0], atol=1e-12)
    assert ig.value == 3.0 and ig.baseline_value == 0.0
    assert ig.completeness_error <= 1e-15
    ig = refbbp.integrated_gradients(net, np.array([1.0, 2.0]), baseline=np.array([3.0, 0.0]))
    # x1 from 3 to 1 (active throughout), x2 from 0 to 2 (active after t = 1/2)
    np.testing.assert_allclose(ig.attributions, [-2.0, 2.0], atol=1e-12)


def test_one_input_only():
    net = two_neuron()
    with pytest.raises(refbbp.InputShapeError, match="one input"):
        refbbp.region(net, np.ones((3, 2)))
    with pytest.raises(refbbp.InputShapeError, match="one input"):
        refbbp.integrated_gradients(net, np.ones((3, 2)))
    with pytest.raises(refbbp.InputShapeError):
        refbbp.region(net, np.ones(2)).segment(np.ones(3))


def test_max_pieces_guard():
    net = two_neuron()
    with pytest.raises(RuntimeError, match="max_pieces"):
        refbbp.integrated_gradients(net, np.array([1.0, 2.0]), max_pieces=1)


# ------------------------------------------------------------- 2. random segments
def _scale(lin):
    x, w = lin.trace.values[0], lin.grads[0]
    s = np.abs(w * x).sum() + abs(float(lin.value))
    for t in lin.node_bias_terms():
        s += np.abs(t).sum()
    return s


def assert_in_region(net, r, x2):
    """``x2`` has the pattern of ``r`` and ``f(x2) = w . x2 + b^x`` to 1e-9 x scale."""
    assert r.contains(x2)
    lin = refbbp.linearize(net, x2, r.linear.target)
    f_frozen = float(np.sum(r.w * x2)) + r.bias_x
    assert abs(float(lin.value) - f_frozen) <= EXACT * max(_scale(lin), _scale(r.linear))


def check_segments(net, x, rng, n_dirs=4):
    r = refbbp.region(net, x)
    for _ in range(n_dirs):
        d = rng.normal(size=x.shape)
        seg = r.segment(d)
        assert seg.t_lo <= 0.0 <= seg.t_hi
        for t_edge, b in ((seg.t_hi, seg.hi), (seg.t_lo, seg.lo)):
            assert (b is None) == (not np.isfinite(t_edge))
            if not np.isfinite(t_edge) or t_edge == 0.0:
                continue
            inside = x + 0.999 * t_edge * d
            assert_in_region(net, r, inside)
            assert not r.contains(x + 1.001 * t_edge * d), (t_edge, b)


@settings(max_examples=25, deadline=None)
@given(mlps(), seeds)
def test_segment_mlp(example, seed):
    model, x = example
    check_segments(load(model), x, np.random.default_rng(seed))


@settings(max_examples=15, deadline=None)
@given(cnns(blocks=("conv", "maxpool")), seeds)
def test_segment_cnn_maxpool(example, seed):
    model, x = example
    check_segments(load(model), x, np.random.default_rng(seed), n_dirs=2)


def test_segment_cnn_builder():
    from tests.models import build_cnn

    rng = np.random.default_rng(5)
    model, xs = build_cnn(rng)
    net = load(model)
    kinds = set()
    for x in xs:
        check_segments(net, x, rng, n_dirs=6)
        r = refbbp.region(net, x)
        for _ in range(10):
            seg = r.segment(rng.normal(size=x.shape))
            kinds |= {b.kind for b in (seg.lo, seg.hi) if b is not None}
    assert kinds == {"breakpoint", "max candidate"}


def test_segment_max_candidate_boundary():
    """Along a direction whose segment ends at a max node, the max selects another
    candidate just past it."""
    from tests.models import build_cnn

    rng = np.random.default_rng(7)
    model, xs = build_cnn(rng)
    net = load(model)
    r = refbbp.region(net, xs[0])
    found = 0
    for _ in range(50):
        d = rng.normal(size=xs[0].shape)
        seg = r.segment(d)
        if seg.hi is None or seg.hi.kind != "max candidate":
            continue
        found += 1
        b = seg.hi
        assert net.nodes[b.node].kind == "max" and b.value in net.nodes[b.node].window[b.element]
        past = net.trace(xs[0] + 1.001 * seg.t_hi * d)
        assert past.selected[b.node][0, b.element] != r.trace.selected[b.node][0, b.element]
    assert found


# ------------------------------------------------------------------ 3. exact IG
def riemann(net, x, x0, v, breaks, n=100_000, chunk=5000):
    """Midpoint Riemann sum of the gradient along the path (``n`` steps, issue 12's
    10^5), and its error bound.

    The integrand ``w(t) * (x - x0)`` is constant on each piece ``[t_k, t_{k+1}]`` of the
    exact walk; a cell of width ``1/n`` that contains jumps is off by at most the sum of
    their sizes over ``n`` (the Riemann sum may miss a piece thinner than a cell
    altogether, so the jumps are taken from the exact pieces, read at their midpoints)."""
    d = (x - x0).ravel()

    def terms(t):
        pts = x0[None] + t.reshape((-1,) + (1,) * x.ndim) * (x - x0)[None]
        return refbbp.linearize(net, pts, v).w.reshape(len(t), -1) * d

    total = np.zeros(x.size)
    for start in range(0, n, chunk):          # the gradients a chunk of steps at a time
        total += terms((np.arange(start, min(n, start + chunk)) + 0.5) / n).sum(0)
    piece_terms = terms((breaks[1:] + breaks[:-1]) / 2)
    jumps = np.abs(np.diff(piece_terms, axis=0)).sum(0)
    bound = jumps / n + 1e-12 * np.abs(piece_terms).max(0)
    return (total / n).reshape(x.shape), bound.reshape(x.shape)


def check_ig(net, x, rng):
    x0 = rng.normal(size=x.shape) * rng.choice([0.0, 1.0])
    ig = refbbp.integrated_gradients(net, x, baseline=x0)
    assert ig.completeness_error <= EXACT, ig.completeness_error
    f = float(ig.target @ net.forward(x)), float(ig.target @ net.forward(x0))
    assert (ig.value, ig.baseline_value) == f
    ref, bound = riemann(net, x, x0, ig.target, ig.breaks)
    assert np.all(np.abs(ig.attributions - ref).ravel() <= bound.ravel() + 1e-12), \
        (ig.attributions, ref, bound)
    return ig


@settings(max_examples=20, deadline=None)
@given(mlps(), seeds)
def test_ig_mlp(example, seed):
    model, x = example
    check_ig(load(model), x, np.random.default_rng(seed))


@settings(max_examples=8, deadline=None)
@given(cnns(blocks=("conv", "maxpool")), seeds)
def test_ig_cnn_maxpool(example, seed):
    model, x = example
    check_ig(load(model), x, np.random.default_rng(seed))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_ig_many_regions(name):
    from tests.models import BUILDERS

    rng = np.random.default_rng(3)
    model, xs = BUILDERS[name](rng)
    net = load(model)
    ig = check_ig(net, 3 * xs[0], rng)
    assert ig.n_pieces >= 2


@given(st.integers(1, 6), st.integers(1, 4), seeds)
@settings(max_examples=20, deadline=None)
def test_ig_linear_network(n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    nodes = [make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1)]
    inits = {"W": rng.normal(size=(n_out, n_in)), "b": rng.normal(size=n_out)}
    net = load(make_model(nodes, {"x": (n_in,)}, ["logits"], inits))
    x, x0 = rng.normal(size=n_in), rng.normal(size=n_in)
    ig = refbbp.integrated_gradients(net, x, baseline=x0)
    w = refbbp.linearize(net, x).w
    assert ig.n_pieces == 1
    np.testing.assert_allclose(ig.attributions, w * (x - x0), rtol=1e-14, atol=1e-15)
    assert ig.completeness_error <= EXACT



def test_ig_thin_piece():
    """A piece much thinner than a Riemann cell (hypothesis found one in a CNN): the exact
    walk finds it, and the Riemann bound taken from the exact pieces covers it."""
    net = two_neuron()
    e = 4e-7
    x, x0 = np.array([1.0, 2.0 + e]), np.array([-1.0, 0.0])
    ig = refbbp.integrated_gradients(net, x, baseline=x0)
    # z2 = -1 + (2 + e) t turns on at 1 / (2 + e), just before z1 = -1 + 2 t at 1/2
    assert ig.n_pieces == 3
    np.testing.assert_allclose(ig.breaks, [0.0, 1 / (2 + e), 0.5, 1.0], rtol=1e-15)
    np.testing.assert_allclose(ig.attributions, [1.0, 2.0 + 2 * e], rtol=1e-14)
    ref, bound = riemann(net, x, x0, ig.target, ig.breaks)
    assert np.all(np.abs(ig.attributions - ref) <= bound + 1e-12)


# ------------------------------------------------------------------ 4. radius
def test_two_neuron_radius():
    """At (1, 2): z1 = x1 = 1 and z2 = x2 - 1 = 1, both 1 from their breakpoint 0 along
    a unit normal, so both radii are 1; the first constraint binds."""
    net = two_neuron()
    k = relu_node(net)
    r = refbbp.region(net, np.array([1.0, 2.0]))
    for norm in ("l2", "linf"):
        rad = r.radius(norm)
        assert rad.value == 1.0 and rad.slack == 1.0 and rad.normal_norm == 1.0
        assert rad.binding == refbbp.network.Boundary(k, 0, "breakpoint", 0.0)
        np.testing.assert_array_equal(rad.direction, [-1.0, 0.0])
        assert r.radius(norm, method="bound").value <= rad.value
    r = refbbp.region(net, np.array([3.0, 1.5]))   # z2 = 0.5 binds
    assert r.radius("l2").value == 0.5 and r.radius("l2").binding.element == 1


def test_radius_scaled_normal():
    """``f = relu(3 x1 - 4 x2)`` at (1, 0): slack 3, normal (3, -4): L2 radius 3 / 5,
    L-infinity radius 3 / 7, and the bound equals them (one layer)."""
    nodes = [make_node("Gemm", ["x", "W1", "b1"], ["g1"], transB=1),
             make_node("Relu", ["g1"], ["logits"])]
    net = load(make_model(nodes, {"x": (2,)}, ["logits"],
                          {"W1": np.array([[3.0, -4.0]]), "b1": np.zeros(1)}))
    r = refbbp.region(net, np.array([1.0, 0.0]))
    assert r.radius("l2").value == pytest.approx(0.6, rel=1e-15)
    assert r.radius("linf").value == pytest.approx(3 / 7, rel=1e-15)
    np.testing.assert_allclose(r.radius("l2").direction, [-0.6, 0.8], rtol=1e-15)
    np.testing.assert_array_equal(r.radius("linf").direction, [-1.0, 1.0])
    for norm in ("l2", "linf"):
        exact, bound = r.radius(norm), r.radius(norm, method="bound")
        assert bound.value <= exact.value
        assert bound.value == pytest.approx(exact.value, rel=1e-11)


def maxpool_net():
    """MaxPool 2x2 over a 1x2x2 image, then a Gemm summing the single output."""
    nodes = [make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2]),
             make_node("Flatten", ["p"], ["f"]),
             make_node("Gemm", ["f", "W", "b"], ["logits"], transB=1)]
    return load(make_model(nodes, {"x": (1, 2, 2)}, ["logits"],
                           {"W": np.ones((1, 1)), "b": np.zeros(1)}))


def test_maxpool_radius():
    """The region of a 2x2 max is ``x_sel >= x_q`` for the three others: slack
    ``x_sel - x_q`` over the normal ``e_sel - e_q`` (L2 norm sqrt 2, L1 norm 2)."""
    net = maxpool_net()
    x = np.array([[[4.0, 1.0], [3.0, 0.0]]])
    r = refbbp.region(net, x)
    rad = r.radius("l2")
    assert rad.value == pytest.approx(1 / np.sqrt(2), rel=1e-15)
    assert rad.binding.kind == "max candidate" and rad.binding.value == 2
    assert r.radius("linf").value == 0.5
    assert rad.n_constraints == 3
    bound = r.radius("linf", method="bound").value      # one layer: equal up to the slack
    assert bound <= 0.5 and bound == pytest.approx(0.5, rel=1e-11)
    assert r.contains(x + 0.499 * r.radius("linf").direction)
    assert not r.contains(x + 0.501 * r.radius("linf").direction)


def test_radius_zero_at_a_tie():
    """A max tie between candidates with different gradients puts ``x`` on the boundary
    of ``R(x)``: the radius is 0 (the bundled digits often have such ties after their
    first max-pool, from runs of saturated pixels)."""
    net = maxpool_net()
    x = np.array([[[2.0, 2.0], [1.0, 0.0]]])
    r = refbbp.region(net, x)
    rad = r.radius("l2")
    assert rad.value == 0.0 and rad.slack == 0.0 and rad.binding.value == 1
    assert not r.contains(x + 1e-9 * rad.direction)


def test_radius_nothing_binds():
    net = maxpool_net()
    nodes = [make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1)]
    net = load(make_model(nodes, {"x": (3,)}, ["logits"],
                          {"W": np.ones((2, 3)), "b": np.zeros(2)}))
    rad = refbbp.region(net, np.ones(3)).radius()
    assert rad.value == np.inf and rad.binding is None and rad.n_constraints == 0


def test_radius_arguments():
    net = two_neuron()
    r = refbbp.region(net, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="norm"):
        r.radius("l1")
    with pytest.raises(ValueError, match="method"):
        r.radius(method="lp")
    with pytest.raises(refbbp.MemoryBudgetError, match="max_bytes"):
        r.radius(max_bytes=8)


def brute_force_radius(net, trace, q):
    """``min slack / ||a||_q`` with every normal from its own reverse pass (one per
    constraint), independent of the forward-mode chunks."""
    from refbbp.network.linearize import reverse

    best = np.inf
    for k in range(1, len(net.nodes)):
        node = net.nodes[k]
        grads0 = [np.zeros_like(v) for v in trace.values]
        if node.kind == "max":
            src = node.inputs[0]
            sel = trace.selected[k][0]
            u = trace.values[src][0]
            for e in range(node.size):
                for q_idx in node.window[e]:
                    if q_idx < 0 or q_idx == sel[e]:
                        continue
                    g = [a.copy() for a in grads0]
                    g[src][0, sel[e]] += 1.0
                    g[src][0, q_idx] -= 1.0
                    a = reverse(net, trace, None, grads=g, top=src)[0][0]
                    n = np.linalg.norm(a, ord=q)
                    if n > 0:
                        best = min(best, (u[sel[e]] - u[q_idx]) / n)
        elif trace.pieces[k] is not None:
            breaks = node.activation.breaks
            for e in range(node.size):
                g = [a.copy() for a in grads0]
                row = np.zeros(node.size)
                row[e] = 1.0
                for i, a_csr in zip(node.inputs, node.to_csr()):
                    g[i][0] += a_csr.T @ row
                a = reverse(net, trace, None, grads=g, top=k - 1)[0][0]
                n = np.linalg.norm(a, ord=q)
                z, p = trace.pre[k][0, e], trace.pieces[k][0, e]
                edges = np.concatenate([[-np.inf], breaks[e], [np.inf]])
                slack = min(z - edges[p], edges[p + 1] - z)
                if n > 0:
                    best = min(best, slack / n)
    return best


def check_radius(net, x, rng, n_random=8):
    r = refbbp.region(net, x)
    for norm, q in (("l2", 2), ("linf", 1)):
        rad = r.radius(norm)
        bound = r.radius(norm, method="bound")
        assert bound.value <= rad.value, (norm, bound, rad)
        ref = brute_force_radius(net, r.trace, q)
        assert rad.value == pytest.approx(ref, rel=1e-12, abs=0), (norm, rad, ref)
        if not 0 < rad.value < np.inf:
            continue
        assert r.contains(x + 0.999 * rad.value * rad.direction)
        assert not r.contains(x + 1.001 * rad.value * rad.direction)
        for _ in range(n_random):
            d = rng.normal(size=x.shape)
            d = d / np.linalg.norm(d) if norm == "l2" else np.sign(d)
            assert_in_region(net, r, x + 0.999 * rad.value * d)


@settings(max_examples=20, deadline=None)
@given(mlps(), seeds)
def test_radius_mlp(example, seed):
    model, x = example
    check_radius(load(model), x, np.random.default_rng(seed))


@settings(max_examples=8, deadline=None)
@given(cnns(blocks=("conv", "maxpool")), seeds)
def test_radius_cnn_maxpool(example, seed):
    model, x = example
    check_radius(load(model), x, np.random.default_rng(seed), n_random=3)


def test_radius_resnet_chunks():
    """A residual CNN, with a work budget that forces many chunks of directions: the
    same radius and binding constraint as one chunk (the chunks change only the order
    of the sums over directions, and BLAS's blocking)."""
    from tests.models import BUILDERS

    rng = np.random.default_rng(11)
    model, xs = BUILDERS["resnet"](rng)
    net = load(model)
    r = refbbp.region(net, xs[0])
    whole = r.radius("l2")
    small = r.radius("l2", max_bytes=200_000)
    assert small.value == pytest.approx(whole.value, rel=1e-14, abs=0)
    assert small.binding == whole.binding
    assert r.radius("l2", method="bound").value <= whole.value
    check_radius(net, xs[0], rng, n_random=3)


# ------------------------------------------------------------- 5. from a start node
def test_region_and_ig_from_the_normalisation():
    """SPEC 8 for SPEC 7: from the bundled model's input normalisation z = (x - m) / s
    the region is over z, its local model is linearize's from z, and IG over z equals IG
    over x element by element (an elementwise affine map moves gradient and step in
    opposite ratios)."""
    net = load(refbbp.data.model_path())
    x = refbbp.data.load_samples()[0][3]
    r = refbbp.region(net, x, start="after-normalisation")
    lin = refbbp.linearize(net, x, start="after-normalisation")
    assert r.network.start.index == 1 and r.x.shape == lin.w.shape
    np.testing.assert_array_equal(r.w, lin.w)
    assert r.bias_x == float(lin.bias_x)
    x0 = 0.8 * x
    ig_x = refbbp.integrated_gradients(net, x, x0)
    ig_z = refbbp.integrated_gradients(net, x, x0, start="after-normalisation")
    assert ig_z.n_pieces == ig_x.n_pieces and ig_z.completeness_error <= EXACT
    assert ig_z.start.index == 1 and ig_x.start.index == 0
    np.testing.assert_allclose(ig_z.attributions, ig_x.attributions, rtol=1e-9,
                               atol=1e-12 * np.abs(ig_x.attributions).max())
    with pytest.raises(ValueError):
        refbbp.region(net, x, start="no such node")


def test_radius_same_for_every_storage():
    """SPEC 1, storage does not change the numbers: the radius and its bound of a
    residual CNN loaded with window matrices and loaded as explicit CSR agree."""
    from tests.models import BUILDERS

    rng = np.random.default_rng(11)
    model, xs = BUILDERS["resnet"](rng)
    nets = [load(model), refbbp.load(model, storage="csr")]
    for norm in ("l2", "linf"):
        for method in ("exact", "bound"):
            a, b = (refbbp.region(n, xs[0]).radius(norm, method=method) for n in nets)
            assert b.value == pytest.approx(a.value, rel=1e-12, abs=0)
            assert b.binding == a.binding
