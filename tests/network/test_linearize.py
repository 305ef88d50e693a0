"""Properties of the core on random models (SPEC section 2), in float64.

Models come from ``tests/strategies.py`` (MLPs, CNNs and residual graphs with Relu,
LeakyRelu, PRelu and saturating Clip). For each:

1. the float64 forward pass agrees with onnxruntime's float32 one to float32 accuracy;
2. the local linear model is exact: ``w . x + b^x == f(x)``;
3. it is the function itself near ``x``: ``f(x + eps d) - f(x) == eps w . d`` for a step
   that stays inside the linear region, computed from the exact pre-activation margins
   (and the region ends where the margins say it does);
4. the local bias of every class at once (the frozen network at 0) equals the per-class
   bias of the reverse pass;
5. a batch gives what one input at a time gives.

The shrunk failures found by these properties are pinned at the end as named
regression tests (``test_regression_*``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import refbbp
from tests.strategies import Sketch, models, run_ort, seeds

EXACT = 1e-9          # SPEC section 2: |w . x + b^x - f(x)| <= 1e-9 * scale
ORT_RTOL, ORT_ATOL = 1e-4, 1e-5   # SPEC section 2, atol relative to the output scale
BATCH_RTOL = 1e-12    # batch vs one at a time: the same sums, possibly in another order


def load(model):
    """refbbp.load without the notice about a dropped final Softmax."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", refbbp.ImportNotice)
        return refbbp.load(model)


def exactness_scale(lm):
    """Per input: the sum of absolute values of the terms of ``w . x + b^x`` and ``f``
    (SPEC section 2's scale), shape (batch,)."""
    x, w = lm.trace.values[0], lm.grads[0]
    terms = np.abs(w * x).sum(1) + np.abs(np.atleast_1d(lm.value))
    for t in lm.node_bias_terms():
        terms += np.abs(t).sum(1)
    return terms


def same_pattern(t1, t2, row1=0, row2=0):
    """Whether two traces have the same activation pattern (pieces and max selections)."""
    for a, b in zip(t1.pieces + t1.selected, t2.pieces + t2.selected):
        if (a is None) != (b is None):
            return False
        if a is not None and not np.array_equal(a[row1], b[row2]):
            return False
    return True


def linear_region(net, trace, d):
    """How far along ``d`` the activation pattern of ``trace`` holds.

    For every activated element the distance ``gap`` of its pre-activation ``y`` to the
    breakpoint it moves towards, over its rate ``|dy/dt|``; for every max-pool window
    the gap between the selected value and each candidate that gains on it, over the
    rate it gains. ``dy/dt`` comes exactly from the frozen-pattern forward pass without
    biases (:meth:`refbbp.Network.frozen_values`).

    Returns
    -------
    t : float
        The smallest ``gap / rate`` (``inf`` if nothing constrains the step).
    gap, magnitude : float
        For the constraint that binds: its gap, and the magnitude of the values it
        compares (to judge whether the gap is above rounding).
    """
    pre_d, val_d = net.frozen_values(trace, d, bias=False)
    best = (np.inf, np.inf, 0.0)
    for k, node in enumerate(net.nodes):
        if node.kind == "max":
            u, du = trace.values[node.inputs[0]][0], val_d[node.inputs[0]][0]
            sel = trace.selected[k][0]
            cand = np.where(node.window >= 0, node.window, sel[:, None])
            gap = u[sel][:, None] - u[cand]
            rate = du[cand] - du[sel][:, None]
            magnitude = np.abs(u).max()
        elif node.activation is not None and node.activation.breaks.shape[1]:
            y, dy = trace.pre[k][0], pre_d[k][0]
            piece = trace.pieces[k][0].astype(np.int64)
            br = node.activation.breaks
            rows, nb = np.arange(node.size), br.shape[1]
            upper = np.where(piece < nb, br[rows, np.minimum(piece, nb - 1)], np.inf)
            lower = np.where(piece > 0, br[rows, np.maximum(piece - 1, 0)], -np.inf)
            gap = np.where(dy > 0, upper - y, y - lower)
            rate = np.abs(dy)
            magnitude = np.abs(y).max() + np.abs(br).max()
        else:
            continue
        moving = (rate > 0) & np.isfinite(gap)
        if not moving.any():
            continue
        limits = gap[moving] / rate[moving]
        j = np.argmin(limits)
        if limits[j] < best[0]:
            best = (float(limits[j]), float(gap[moving][j]), float(magnitude))
    return best


# ------------------------------------------------------------------ 1. onnxruntime
@given(example=models())
def test_forward_matches_onnxruntime(example):
    model, x = example
    net = load(model)
    expected = run_ort(model, x, net.output_name).astype(np.float64).ravel()
    got = net.forward(x)
    assert got.dtype == np.float64
    assert_allclose(got, expected, rtol=ORT_RTOL, atol=ORT_ATOL * np.abs(expected).max())


# ------------------------------------------------------------------ 2. exactness
@given(example=models(), target=st.sampled_from([None, "top2", "vector"]), seed=seeds)
def test_local_linear_model_is_exact(example, target, seed):
    model, x = example
    net = load(model)
    if target == "vector":
        target = np.random.default_rng(seed).normal(size=net.n_outputs)
    lm = net.linearize(x, target)
    assert lm.check() <= EXACT
    assert abs(np.sum(lm.w * x) + lm.bias_x - lm.value) <= EXACT * exactness_scale(lm)[0]
    assert lm.w.shape == x.shape


# ------------------------------------------------------------------ 3. locality
@given(example=models(), seed=seeds)
def test_linear_model_holds_in_linear_region(example, seed):
    model, x = example
    net = load(model)
    rng = np.random.default_rng(seed)
    d = rng.normal(size=x.shape)
    v = rng.normal(size=net.n_outputs)
    lm = net.linearize(x, v)
    t, gap, magnitude = linear_region(net, lm.trace, d)
    # An element on (or within rounding of) a breakpoint it moves across: no step.
    assume(gap > 1e-10 * magnitude)
    eps = min(t / 2, 1.0)
    x2 = x + eps * d
    lm2 = net.linearize(x2, v)
    assert same_pattern(lm.trace, lm2.trace), "the step left the linear region"

    # Forward mode (frozen pattern, no bias) and reverse mode (w) agree on w . d ...
    jvp = net.frozen_values(lm.trace, d, bias=False)[1][net.output][0]
    wd = np.sum(lm.w * d)
    assert abs(v @ jvp - wd) <= EXACT * (np.abs(lm.w * d).sum() + np.abs(v * jvp).sum())
    # ... and the network moves by exactly that.
    scale = exactness_scale(lm)[0] + exactness_scale(lm2)[0] + eps * np.abs(lm.w * d).sum()
    assert abs((lm2.value - lm.value) - eps * wd) <= EXACT * scale

    # The region ends where the margins say: just past t the pattern has changed.
    if np.isfinite(t) and gap > 1e-6 * magnitude:
        beyond = net.trace(x + t * (1 + 1e-3) * d)
        assert not same_pattern(lm.trace, beyond), "the linear region is larger than computed"


# ------------------------------------------------------------------ 4. bias_all
@given(example=models())
def test_bias_all_equals_per_class_bias(example):
    model, x = example
    net = load(model)
    bias_all = net.linearize(x).bias_x_all()
    assert bias_all.shape == (net.n_outputs,)
    for k in range(net.n_outputs):
        lm = net.linearize(x, target=k)
        assert abs(lm.bias_x - bias_all[k]) <= EXACT * exactness_scale(lm)[0], k


# ------------------------------------------------------------------ 5. batches
@given(example=models(), n=st.integers(1, 4), spread=st.sampled_from([0.0, 0.1, 1.0]),
       target=st.sampled_from([None, "top2", "ints", "vector"]), seed=seeds)
def test_batch_equals_one_at_a_time(example, n, spread, target, seed):
    model, x = example
    net = load(model)
    rng = np.random.default_rng(seed)
    xs = x + spread * rng.normal(size=(n,) + x.shape)
    if target == "ints":
        target = [int(k) for k in rng.integers(0, net.n_outputs, n)]
        targets = target
    elif target == "vector":
        target = rng.normal(size=net.n_outputs)
        targets = [target] * n
    else:
        targets = [target] * n
    batch = net.linearize(xs, target)
    logits = net.forward(xs)
    assert batch.w.shape == xs.shape and logits.shape == (n, net.n_outputs)
    assert batch.bias_x_all().shape == (n, net.n_outputs)
    for i in range(n):
        one = net.linearize(xs[i], targets[i])
        tol = BATCH_RTOL * exactness_scale(one)[0]
        assert same_pattern(batch.trace, one.trace, row1=i)
        assert_allclose(logits[i], net.forward(xs[i]), rtol=BATCH_RTOL, atol=tol)
        assert_allclose(batch.target[i], one.target, rtol=0, atol=0)
        assert_allclose(batch.w[i], one.w, rtol=BATCH_RTOL, atol=tol)
        assert abs(batch.bias_x[i] - one.bias_x) <= tol
        assert abs(batch.value[i] - one.value) <= tol
        assert_allclose(batch.bias_x_all()[i], one.bias_x_all(), rtol=BATCH_RTOL, atol=tol)


# ------------------------------------------------------------ pinned regressions
@pytest.mark.parametrize("op, attrs", [
    ("AveragePool", {"count_include_pad": 0}),
    ("AveragePool", {"count_include_pad": 1}),
    ("MaxPool", {}),
])
@pytest.mark.parametrize("kernel, strides, pads", [
    ([1, 1], [1, 2], [0, 0, 0, 0]),   # the shrunk example: 4 -> ceil(3 / 2) + 1 = 3 windows
    ([1, 2], [1, 3], [0, 1, 0, 1]),   # 4 + 2 pads -> ceil(4 / 3) + 1 = 3 windows
])
def test_regression_ceil_mode_window_starting_past_the_input(op, attrs, kernel, strides, pads):
    """cnns() drew a pool with ceil_mode=1 whose last window would start past the
    input and its begin padding. onnxruntime (like PyTorch) drops that window, ONNX's
    shape inference does not (so the strategy avoids it: the runtime refuses a graph
    whose static shapes then disagree). refbbp follows the runtime: 2 windows."""
    rng = np.random.default_rng(0x5EED)
    g = Sketch(rng, rng.normal(size=(1, 3, 4)).astype(np.float32))
    g.op(op, ["x"], kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=1, **attrs)
    model, x = g.example()
    expected = run_ort(model, x)
    net = load(model)
    assert expected.shape == (1, 1, 3, 2) and net.nodes[net.output].shape == (1, 1, 3, 2)
    assert_allclose(net.forward(x), expected.ravel(), rtol=ORT_RTOL, atol=ORT_ATOL)


def test_regression_avgpool_valid_ceil_mode_divisor():
    """Found by drawing pools with auto_pad; fixed in refbbp/onnx/pool.py (59b3c7a).
    AveragePool(kernel 2, stride 2, auto_pad VALID, ceil_mode 1, count_include_pad 1)
    on a length-3 axis: windows [0, 1] and [2] (+ one position past the input, which
    is not padding: VALID has none). onnxruntime: [(x0 + x1) / 2, x2]."""
    x = np.array([[0.5, -1.0, 2.0]])  # (C, L)
    g = Sketch(np.random.default_rng(0), x)
    g.op("AveragePool", ["x"], kernel_shape=[2], strides=[2], auto_pad="VALID", ceil_mode=1,
         count_include_pad=1)
    model, x = g.example()
    expected = run_ort(model, x).ravel()
    assert_allclose(expected, [-0.25, 2.0], rtol=1e-7)
    assert_allclose(load(model).forward(x), expected, rtol=ORT_RTOL, atol=ORT_ATOL)
