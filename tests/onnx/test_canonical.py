"""The canonical form of SPEC section 1: one network, many exporters' spellings, one
graph of nodes.

One set of random parameters (drawn by Hypothesis) is written out as ONNX in the
styles different exporters use -- a conv bias inside the Conv or as an Add after it,
a BatchNormalization after the conv (or written out as Sub, Mul/Div, Add), NHWC
Transposes around the conv with the bias added in NHWC, Gemm (with transB, alpha and
beta) or MatMul + Add -- and every spelling must give the same nodes: the same count,
kinds, inputs, shapes and activations, and weights and biases equal to 1e-12 relative
to their largest entry. A per-channel affine op with no matrix op before it (BatchNorm
after a ReLU, an input normalisation before a padded conv, BatchNorm after a residual
Add) stays a diagonal node of its own, however it is written.

The models are float64, so that folding in refbbp and folding here agree to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from onnx import numpy_helper

import refbbp
from tests.strategies import Sketch, seeds

REL = 1e-12  # weights and biases agree to this, relative to the largest entry

CONV_STYLES = ("conv_bias", "conv_add", "conv_bn", "conv_bn_sub_mul_add",
               "conv_bn_sub_div_add", "nhwc")
POST_STYLES = ("none", "bn", "sub_mul_add")
DENSE_STYLES = ("gemm_transb", "gemm", "gemm_alpha_beta", "matmul_add", "add_matmul")
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip")


@st.composite
def parameters(draw):
    """Random parameters of: Conv (M x C x k x k, explicit pads) + BN folded into it ->
    activation -> optional BN (not folded) -> Flatten -> dense -> Relu -> dense."""
    rng = np.random.default_rng(draw(seeds))
    c, m = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    k = draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k - 1)) for _ in range(4)]
    out_hw = (h + pads[0] + pads[2] - k + 1, w + pads[1] + pads[3] - k + 1)
    n_flat = m * out_hw[0] * out_hw[1]
    hidden, n_out = draw(st.integers(1, 6)), draw(st.integers(2, 4))

    def bn(n):
        return {"gamma": rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n),
                "beta": rng.normal(0, 0.3, n), "mean": rng.normal(0, 0.3, n),
                "var": rng.uniform(0.5, 2.0, n), "eps": draw(st.sampled_from([1e-5, 1e-3]))}

    return {
        "x": rng.normal(size=(c, h, w)), "pads": pads, "out_hw": out_hw,
        "W": rng.normal(size=(m, c, k, k)) / k, "b": rng.normal(0, 0.3, m), "bn": bn(m),
        "act": draw(st.sampled_from(ACTIVATIONS)), "slope": rng.uniform(-1, 1, m),
        "post_bn": bn(m),
        "V1": rng.normal(size=(hidden, n_flat)) / np.sqrt(n_flat), "c1": rng.normal(0, .3, hidden),
        "V2": rng.normal(size=(n_out, hidden)), "c2": rng.normal(0, 0.3, n_out),
    }


def bn_scale_shift(p):
    eps = float(np.float32(p["eps"]))  # an ONNX float attribute is float32
    scale = p["gamma"] / np.sqrt(p["var"] + eps)
    return scale, p["beta"] - p["mean"] * scale


def folded_conv(p):
    """The conv's weights and bias with the BatchNorm folded in (zennit's formula)."""
    scale, _ = bn_scale_shift(p["bn"])
    return p["W"] * scale[:, None, None, None], (p["b"] - p["bn"]["mean"]) * scale + p["bn"]["beta"]


def write_bn(g, p, style, channel_shape):
    """BatchNorm as one op or written out (Sub, then Mul by the scale or Div by its
    inverse, then Add)."""
    if style == "bn":
        names = [g.const(p[n], n) for n in ("gamma", "beta", "mean", "var")]
        g.op("BatchNormalization", [g.cur] + names, epsilon=p["eps"])
        return
    scale, _ = bn_scale_shift(p)
    g.op("Sub", [g.cur, g.const(p["mean"].reshape(channel_shape), "mean")])
    if style == "sub_mul_add":
        g.op("Mul", [g.cur, g.const(scale.reshape(channel_shape), "scale")])
    else:
        g.op("Div", [g.cur, g.const((1 / scale).reshape(channel_shape), "inv_scale")])
    g.op("Add", [g.cur, g.const(p["beta"].reshape(channel_shape), "beta")])


def write_activation(g, p, channel_shape):
    if p["act"] == "Relu":
        g.op("Relu", [g.cur])
    elif p["act"] == "LeakyRelu":
        g.op("LeakyRelu", [g.cur], alpha=0.2)
    elif p["act"] == "PRelu":
        g.op("PRelu", [g.cur, g.const(p["slope"].reshape(channel_shape), "slope")])
    else:
        g.op("Clip", [g.cur, g.const(np.array(-0.5), "lo"), g.const(np.array(0.7), "hi")])


def write_dense(g, v, c, style, act=False):
    if style == "gemm_transb":
        g.op("Gemm", [g.cur, g.const(v, "V"), g.const(c, "c")], transB=1)
    elif style == "gemm":
        g.op("Gemm", [g.cur, g.const(v.T.copy(), "V"), g.const(c.reshape(1, -1), "c")])
    elif style == "gemm_alpha_beta":  # alpha * (V / 2) and beta * (2 c): exact in float64
        g.op("Gemm", [g.cur, g.const(v / 2, "V"), g.const(2 * c, "c")], transB=1,
             alpha=2.0, beta=0.5)
    elif style == "matmul_add":
        mm = g.op("MatMul", [g.cur, g.const(v.T.copy(), "V")])
        g.op("Add", [mm, g.const(c, "c")])
    else:
        mm = g.op("MatMul", [g.cur, g.const(v.T.copy(), "V")])
        g.op("Add", [g.const(c, "c"), mm])
    if act:
        g.op("Relu", [g.cur])


def build(p, conv="conv_bias", post="none", dense="gemm_transb", head="flatten"):
    """The network of ``p`` written in the given styles (float64 ONNX model)."""
    g = Sketch(np.random.default_rng(0), p["x"], dtype=np.float64)
    m = p["W"].shape[0]
    attrs = {"kernel_shape": list(p["W"].shape[2:]), "pads": p["pads"]}
    wf, bf = folded_conv(p)
    nchw = (m, 1, 1)
    if conv == "conv_bias":
        g.op("Conv", ["x", g.const(wf, "W"), g.const(bf, "b")], **attrs)
    elif conv == "conv_add":
        g.op("Conv", ["x", g.const(wf, "W")], **attrs)
        g.op("Add", [g.cur, g.const(bf.reshape(1, m, 1, 1), "b")])
    elif conv.startswith("conv_bn"):
        g.op("Conv", ["x", g.const(p["W"], "W"), g.const(p["b"], "b")], **attrs)
        write_bn(g, p["bn"], {"conv_bn": "bn"}.get(conv, conv[len("conv_bn_"):]), nchw)
    elif conv == "nhwc":
        # A TensorFlow-style graph: the network's layout is NHWC, each conv is wrapped
        # in Transposes, the bias is added (and the activation applied) in NHWC.
        t = g.op("Transpose", ["x"], perm=[0, 2, 3, 1])
        g.op("Transpose", [t], perm=[0, 3, 1, 2])
        g.op("Conv", [g.cur, g.const(wf, "W")], **attrs)
        g.op("Transpose", [g.cur], perm=[0, 2, 3, 1])
        g.op("Add", [g.cur, g.const(bf, "b")])
        write_activation(g, p, (m,))
        g.op("Transpose", [g.cur], perm=[0, 3, 1, 2])
    if conv != "nhwc":
        write_activation(g, p, nchw)
    if post != "none":
        write_bn(g, p["post_bn"], post, nchw)
    if head == "flatten":
        g.op("Flatten", [g.cur], axis=1)
    else:
        g.op("Reshape", [g.cur, g.const(np.array([1, -1]), "shape", np.int64)])
    write_dense(g, p["V1"], p["c1"], dense, act=True)
    write_dense(g, p["V2"], p["c2"], dense)
    return g.model()


def dense(a):
    """A weight matrix as a dense array, however it is stored (dense, CSR, window)."""
    return a.toarray() if hasattr(a, "toarray") else np.asarray(a)


def assert_same_network(a, b):
    """Same nodes (count, kind, inputs, shape, activation, max windows) and weights and
    biases equal to REL relative to their largest entry."""
    assert len(a.nodes) == len(b.nodes), (a.summary(), b.summary())
    assert a.output == b.output
    for k, (na, nb) in enumerate(zip(a.nodes, b.nodes)):
        assert (na.kind, na.inputs, na.shape) == (nb.kind, nb.inputs, nb.shape), k
        assert (na.activation is None) == (nb.activation is None), k
        if na.activation is not None:
            assert na.activation.name == nb.activation.name, k
            for field in ("breaks", "slopes", "offsets"):
                assert_allclose(getattr(na.activation, field), getattr(nb.activation, field),
                                rtol=REL, atol=0, err_msg=f"node {k} activation {field}")
        if na.kind == "max":
            assert_array_equal(na.window, nb.window)
        for wa, wb in zip(na.weights, nb.weights):
            wa, wb = dense(wa), dense(wb)
            assert_allclose(wa, wb, rtol=0, atol=REL * np.abs(wa).max(), err_msg=f"node {k}")
        assert_allclose(na.bias, nb.bias, rtol=0, atol=REL * max(np.abs(na.bias).max(), 1e-300),
                        err_msg=f"node {k} bias")


@pytest.mark.parametrize("conv", CONV_STYLES[1:])
@given(p=parameters())
def test_conv_bias_and_batchnorm_styles(p, conv):
    reference = refbbp.load(build(p))
    assert_same_network(refbbp.load(build(p, conv=conv)), reference)
    # Conv (+ BN folded) + activation, dense + Relu, dense: three nodes after the input.
    assert [n.kind for n in reference.nodes] == ["input", "affine", "affine", "affine"]
    wf, bf = folded_conv(p)
    assert_allclose(reference.nodes[1].bias, np.repeat(bf, np.prod(p["out_hw"])), rtol=REL)


@pytest.mark.parametrize("dense_style", DENSE_STYLES[1:])
@given(p=parameters(), head=st.sampled_from(["flatten", "reshape"]))
def test_dense_styles(p, dense_style, head):
    assert_same_network(refbbp.load(build(p, dense=dense_style, head=head)),
                        refbbp.load(build(p)))


@pytest.mark.parametrize("conv", ["conv_bias", "conv_bn", "nhwc"])
@given(p=parameters())
def test_batchnorm_after_activation_is_its_own_node(p, conv):
    """BN after the activation has no matrix op to fold into: a diagonal node with its
    own bias, the same whether written as BatchNormalization or Sub, Mul, Add."""
    net = refbbp.load(build(p, conv=conv, post="bn"))
    assert_same_network(refbbp.load(build(p, conv=conv, post="sub_mul_add")), net)
    assert_same_network(net, refbbp.load(build(p, post="bn")))
    assert len(net.nodes) == 5
    node = net.nodes[2]
    scale, shift = bn_scale_shift(p["post_bn"])
    per_element = np.prod(p["out_hw"])
    assert node.activation is None and node.inputs == [1]
    assert_allclose(dense(node.weights[0]), np.diag(np.repeat(scale, per_element)),
                    rtol=REL, atol=0)
    assert_allclose(node.bias, np.repeat(shift, per_element), rtol=REL, atol=1e-15)


# ------------------------------------------------------------------- no folding
def test_input_normalisation_before_padded_conv_is_its_own_node(rng):
    """Folding (x - mean) / std into a zero-padded conv would be wrong at the borders."""
    x = rng.uniform(0, 1, size=(2, 5, 5))
    g = Sketch(rng, x, dtype=np.float64)
    mean, std = rng.uniform(0.3, 0.6, (2, 1, 1)), rng.uniform(0.2, 0.4, (2, 1, 1))
    g.op("Sub", ["x", g.const(mean, "mean")])
    g.op("Div", [g.cur, g.const(std, "std")])
    g.op("Conv", [g.cur, g.const(rng.normal(size=(3, 2, 3, 3)), "W")], pads=[1, 1, 1, 1])
    model, x = g.example()
    net = refbbp.load(model)
    assert [(n.kind, n.op) for n in net.nodes] == [("input", "Input"), ("affine", "Sub"),
                                                    ("affine", "Conv")]
    assert_allclose(dense(net.nodes[1].weights[0]), np.diag(np.repeat(1 / std.ravel(), 25)),
                    rtol=REL)
    assert_allclose(net.nodes[1].bias, np.repeat(-(mean / std).ravel(), 25), rtol=REL)
    assert_allclose(net.forward(x), normalised_conv_numpy(x, mean, std, g), rtol=1e-12)


def normalised_conv_numpy(x, mean, std, g):
    """The normalised input convolved with zero padding, in NumPy."""
    (w,) = [numpy_helper.to_array(i) for i in g.inits if i.name.startswith("W_")]
    z = np.pad((x - mean) / std, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], x.shape[1], x.shape[2]))
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = np.tensordot(w, z[:, i:i + 3, j:j + 3], axes=3)
    return out.ravel()


def test_batchnorm_after_residual_add_is_its_own_node(rng):
    """A residual Add is no matrix op: the BN after it is a diagonal node."""
    g = Sketch(rng, rng.normal(size=(2, 4, 4)), dtype=np.float64)
    conv = g.op("Conv", ["x", g.const(rng.normal(size=(2, 2, 3, 3)), "W")], pads=[1] * 4)
    g.op("Add", ["x", conv])
    params = [g.const(v, n) for v, n in zip(
        (rng.uniform(0.5, 1, 2), rng.normal(size=2), rng.normal(size=2), rng.uniform(1, 2, 2)),
        ("gamma", "beta", "mean", "var"))]
    g.op("BatchNormalization", [g.cur] + params)
    net = refbbp.load(g.model())
    assert [(n.kind, n.op, n.inputs) for n in net.nodes[1:]] == [
        ("affine", "Conv", [0]), ("affine", "Add", [0, 1]),
        ("affine", "BatchNormalization", [2])]
    assert not np.any(net.nodes[2].bias) and np.any(net.nodes[3].bias)


def test_bias_add_on_a_shared_conv_output_is_not_folded(rng):
    """Conv -> Add(bias) folds only if nothing else reads the conv's output."""
    g = Sketch(rng, rng.normal(size=(1, 4, 4)), dtype=np.float64)
    conv = g.op("Conv", ["x", g.const(rng.normal(size=(2, 1, 3, 3)), "W")], pads=[1] * 4)
    biased = g.op("Add", [conv, g.const(rng.normal(size=(1, 2, 1, 1)), "b")])
    g.op("Add", [biased, conv])
    net = refbbp.load(g.model())
    assert [n.inputs for n in net.nodes[1:]] == [[0], [1], [1, 2]]
    assert not np.any(net.nodes[1].bias)


def test_regression_batchnorm_epsilon_is_the_float32_attribute(rng):
    """test_conv_bias_and_batchnorm_styles[conv_bn] first failed at 3e-11 because this
    file folded with ``eps = 1e-3`` as a Python float. An ONNX float attribute is
    float32 (1e-3 is stored as 0.0010000000474974513); refbbp folds with the stored
    value, as onnxruntime computes."""
    g = Sketch(rng, rng.normal(size=(1, 3, 3)), dtype=np.float64)
    w = rng.normal(size=(2, 1, 1, 1))
    g.op("Conv", ["x", g.const(w, "W")])
    gamma, beta, mean = rng.normal(size=2), rng.normal(size=2), rng.normal(size=2)
    var = np.array([1e-4, 2e-4])  # small, so that eps matters
    g.op("BatchNormalization", [g.cur] + [g.const(v, n) for v, n in zip(
        (gamma, beta, mean, var), ("gamma", "beta", "mean", "var"))], epsilon=1e-3)
    node = refbbp.load(g.model()).nodes[1]
    eps32 = float(np.float32(1e-3))
    scale = gamma / np.sqrt(var + eps32)
    assert_allclose(dense(node.weights[0]), np.kron((w.ravel() * scale)[:, None], np.eye(9)),
                    rtol=0, atol=1e-15 * np.abs(scale).max())
    assert_allclose(node.bias, np.repeat(beta - mean * scale, 9), rtol=1e-14)
    wrong = gamma / np.sqrt(var + 1e-3)
    assert np.all(np.abs(wrong - scale) > 1e-10 * np.abs(scale))
