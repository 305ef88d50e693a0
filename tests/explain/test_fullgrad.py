"""FullGrad's variants (refbbp.saliency.fullgrad): "paper" (companion paper eq. 8),
"official" and "official-2019" (FullGrad's reference code, github.com/idiap/fullgrad-saliency,
today and before June 2020), each against a re-implementation written here in plain
NumPy from the ONNX parameters: the bias of every Conv and BatchNormalization computed
from its initializers, the gradients at each op's output from the node gradients and
the activation pattern, and torch's bilinear interpolation rule written out pixel by
pixel (``align_corners`` False and True). Only the gradients and pre-activations are
taken from refbbp.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import refbbp
from refbbp import saliency as sal
from refbbp.explain.decompose import decompose
from tests.helpers import make_model
from tests import strategies
from tests.models import _bn, onnx_node

pytestmark = pytest.mark.filterwarnings("ignore::refbbp.ImportNotice")

EPS_BN = 1e-5            # BatchNormalization's default epsilon
EPS_OFFICIAL = 1e-6      # FullGrad._postProcess's eps
LO, HI = -0.4, 0.5       # the second block's Clip (saturates on these inputs)


def _f32(a):
    return np.asarray(a, np.float32).astype(np.float64)


def build_normalised_cnn(rng, channels=3, size=10, batch=2, bias=True, normalise=True):
    """(x - mean) / std -> Conv (pads 1) + BN + Relu -> MaxPool 2 -> Conv + BN + Clip ->
    Flatten -> Gemm, every Conv and BN a separate ONNX op. Returns the model, the inputs
    and the parameters (float32-rounded, as float64)."""
    c1, c2 = 3, 4
    s2 = size // 2 - 2
    p = {"mean": rng.uniform(0.3, 0.6, (channels, 1, 1)),
         "std": rng.uniform(0.2, 0.4, (channels, 1, 1)),
         "W1": rng.normal(0, 0.5, (c1, channels, 3, 3)), "B1": rng.normal(0, 0.3, c1),
         "W2": rng.normal(0, 0.4, (c2, c1, 3, 3)), "B2": rng.normal(0, 0.3, c2),
         "Wf": rng.normal(0, 0.3, (4, c2 * s2 * s2)), "bf": rng.normal(0, 0.3, 4),
         "lo": np.array(LO), "hi": np.array(HI)}
    bn1, bn2 = _bn(rng, c1, "bn1", p), _bn(rng, c2, "bn2", p)
    p = {k: _f32(v) for k, v in p.items()}
    nodes = []
    first = "x"
    if normalise:
        nodes += [onnx_node("Sub", ["x", "mean"], "s"), onnx_node("Div", ["s", "std"], "z")]
        first = "z"
    nodes += [onnx_node("Conv", [first, "W1"] + (["B1"] if bias else []), "c1",
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              onnx_node("BatchNormalization", ["c1"] + bn1, "n1"),
              onnx_node("Relu", ["n1"], "r1"),
              onnx_node("MaxPool", ["r1"], "p1", kernel_shape=[2, 2], strides=[2, 2]),
              onnx_node("Conv", ["p1", "W2"] + (["B2"] if bias else []), "c2",
                        kernel_shape=[3, 3]),
              onnx_node("BatchNormalization", ["c2"] + bn2, "n2"),
              onnx_node("Clip", ["n2", "lo", "hi"], "h2"),
              onnx_node("Flatten", ["h2"], "f", axis=1),
              onnx_node("Gemm", ["f", "Wf", "bf"], "logits", transB=1)]
    if not normalise:
        del p["mean"], p["std"]
    if not bias:
        del p["B1"], p["B2"]
    model = make_model(nodes, {"x": (channels, size, size)}, ["logits"], p)
    x = _f32(rng.uniform(0, 1, (batch, channels, size, size)))
    return model, x, p


# ------------------------------------------------------------ written out by hand
def torch_bilinear(m, size, align_corners):
    """One 2-D map resized as torch.nn.functional.interpolate(mode="bilinear") does:
    for each output pixel, the source coordinate per axis, its two neighbours and the
    weights, written out with loops."""
    def source(i, n_in, n_out):
        if align_corners:
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    (h_in, w_in), (h_out, w_out) = m.shape, size
    out = np.empty(size)
    for i in range(h_out):
        y0, y1, ty = source(i, h_in, h_out)
        for j in range(w_out):
            x0, x1, tx = source(j, w_in, w_out)
            out[i, j] = ((1 - ty) * ((1 - tx) * m[y0, x0] + tx * m[y0, x1])
                         + ty * ((1 - tx) * m[y1, x0] + tx * m[y1, x1]))
    return out


def rescale_eq10(m):
    """(m - min) / (max - min), zeros for a constant map (eq. 10)."""
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def post_process(t):
    """FullGrad._postProcess: abs, minus the minimum, over (maximum + 1e-6), jointly over
    every axis of one image's tensor."""
    t = np.abs(t)
    t = t - t.min()
    return t / (t.max() + EPS_OFFICIAL)


def _node(net, output):
    """The node that computes the ONNX tensor ``output`` (ONNX node names are
    ``<op>_<output>``, joined by ``+`` when folded)."""
    return next(k for k, node in enumerate(net.nodes)
                if any(part.endswith(f"_{output}") for part in node.name.split("+")))


def _bn_scale_shift(p, name):
    """BatchNorm's scale, and its effective bias as tensor_extractor.py writes it:
    beta - mean * gamma / sqrt(var + eps)."""
    gamma, beta, mean, var = (p[f"{name}_{q}"] for q in ("gamma", "beta", "mean", "var"))
    return gamma / np.sqrt(var + EPS_BN), -(mean * gamma / np.sqrt(var + EPS_BN)) + beta


def _blocks(net, dec, p, i):
    """For input i and each conv block, a dict: the gradient ``g`` at the node's output,
    ``g_bn`` at the BN output (pre-activation), ``g_conv`` at the Conv output, the Conv
    bias ``b_conv``, BN's ``scale`` and effective bias ``shift``, the activation's
    slopes ``c`` and offsets ``d``; all (C, H, W)."""
    out = []
    for conv, bn in (("c1", "n1"), ("c2", "n2")):
        k = _node(net, conv)
        shape = dec.layers[k].shape
        g = dec.linear.grads[k][i].reshape(shape)
        pre = dec.linear.trace.pre[k][i].reshape(shape)
        if conv == "c1":                       # Relu: slope 1 above 0 (0 at 0)
            c, d = (pre > 0).astype(float), np.zeros(shape)
        else:                                  # Clip(lo, hi): pieces (-inf, lo], (lo, hi], ..
            lo, hi = p["lo"], p["hi"]          # as float32 in the model
            c = ((pre > lo) & (pre <= hi)).astype(float)
            d = np.where(pre <= lo, lo, 0.0) + np.where(pre > hi, hi, 0.0)
        scale, shift = (v.reshape(-1, 1, 1) for v in _bn_scale_shift(p, "bn" + bn[1]))
        b_conv = p.get("B" + conv[1], np.zeros(len(scale))).reshape(-1, 1, 1)
        out.append({"g": g, "g_bn": c * g, "g_conv": scale * c * g,
                    "b_conv": np.broadcast_to(b_conv, shape),
                    "scale": scale, "shift": np.broadcast_to(shift, shape), "c": c, "d": d})
    return out


def fullgrad_paper_by_hand(net, dec, p, x):
    """Eq. 8: Psi(|sum_c x_c grad_c|) + sum over conv-shaped layers and channels of
    Psi(|a^b_c|); the input normalisation is a layer with bias -mean/std."""
    size = x.shape[2:]
    out = []
    for i in range(len(x)):
        a0 = (x[i] * dec.linear.w[i]).sum(0)
        s = torch_bilinear(rescale_eq10(np.abs(a0)), size, False)
        layers = []
        if "mean" in p:
            k = _node(net, "s")
            g = dec.linear.grads[k][i].reshape(x.shape[1:])
            layers.append(np.broadcast_to(-p["mean"] / p["std"], x.shape[1:]) * g)
        for blk in _blocks(net, dec, p, i):
            b = blk["scale"] * blk["b_conv"] + blk["shift"]  # the folded bias
            layers.append((blk["c"] * b + blk["d"]) * blk["g"])  # local bias x gradient
        for a in layers:
            for ch in a:
                s = s + torch_bilinear(rescale_eq10(np.abs(ch)), size, False)
        out.append(s)
    return np.array(out)


def fullgrad_official_by_hand(net, dec, p, x, align_corners):
    """FullGrad.saliency: the model starts after the normalisation (a data transform),
    so the input term is _postProcess(z * grad_z) summed over channels; then one term
    per Conv bias and per BatchNorm, each b * (gradient at the op's output),
    _postProcess-ed jointly over (C, H, W), interpolated, summed over channels. The
    Clip's offsets belong to no module."""
    size = x.shape[2:]
    out = []
    for i in range(len(x)):
        if "mean" in p:
            z = (x[i] - p["mean"]) / p["std"]
            g_z = dec.linear.grads[_node(net, "s")][i].reshape(x.shape[1:])
            s = post_process(z * g_z).sum(0)
        else:
            s = post_process(x[i] * dec.linear.w[i]).sum(0)
        for blk in _blocks(net, dec, p, i):
            terms = [blk["shift"] * blk["g_bn"]]
            if "B1" in p:                        # a Conv without bias has no term
                terms.insert(0, blk["b_conv"] * blk["g_conv"])
            for t in terms:
                t = post_process(t)
                s = s + sum(torch_bilinear(ch, size, align_corners) for ch in t)
        out.append(s)
    return np.array(out)


# ------------------------------------------------------------------------- tests
@pytest.fixture(params=[(True, True), (True, False), (False, True)],
                ids=["normalised", "no-normalisation", "conv-without-bias"])
def model(request, rng):
    normalise, bias = request.param
    m, x, p = build_normalised_cnn(rng, normalise=normalise, bias=bias)
    net = refbbp.load(m)
    return net, x, p, decompose(net, x)


def test_fullgrad_paper_matches_eq8_by_hand(model):
    net, x, p, dec = model
    np.testing.assert_allclose(sal.fullgrad(dec), fullgrad_paper_by_hand(net, dec, p, x),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sal.fullgrad(dec, "paper"), sal.fullgrad(dec), rtol=0,
                               atol=0)


@pytest.mark.parametrize("variant, align_corners", [("official", True),
                                                    ("official-2019", False)])
def test_fullgrad_official_matches_reference_code_by_hand(model, variant, align_corners):
    net, x, p, dec = model
    expected = fullgrad_official_by_hand(net, dec, p, x, align_corners)
    np.testing.assert_allclose(sal.fullgrad(dec, variant), expected, rtol=1e-12, atol=1e-12)


def test_fullgrad_official_one_input_equals_batch(model):
    net, x, p, dec = model
    one = decompose(net, x[1])
    np.testing.assert_allclose(sal.fullgrad(one, "official"), sal.fullgrad(dec, "official")[1],
                               rtol=1e-13, atol=1e-13)


def test_fullgrad_variants_differ(model):
    """The three variants are different maps (upsampling, rescaling, terms)."""
    net, x, p, dec = model
    maps = {v: sal.fullgrad(dec, v) for v in sal.FULLGRAD_VARIANTS}
    for a, b in (("paper", "official"), ("paper", "official-2019"),
                 ("official", "official-2019")):
        assert np.abs(maps[a] - maps[b]).max() > 1e-3, (a, b)


def test_bias_parts_sum_bitwise_to_the_folded_bias(rng):
    """Conv + BatchNormalization fold into one node whose bias keeps its two parts:
    the Conv's bias carried through BN's scale, and BN's shift; summed in order they
    are the folded bias to the bit."""
    m, x, p = build_normalised_cnn(rng)
    net = refbbp.load(m)
    for conv, bn in (("c1", "n1"), ("c2", "n2")):
        node = net.nodes[_node(net, conv)]
        (n0, op0, b0), (n1, op1, b1) = node.bias_terms()
        assert (n0, op0, n1, op1) == (f"Conv_{conv}", "Conv", f"BatchNormalization_{bn}",
                                      "BatchNormalization")
        np.testing.assert_array_equal(b0 + b1, node.bias)
        scale, shift = _bn_scale_shift(p, "bn" + bn[1])
        hw = node.size // len(scale)
        np.testing.assert_allclose(b0, np.repeat(scale * p["B" + conv[1]], hw), rtol=1e-15)
        np.testing.assert_allclose(b1, np.repeat(shift, hw), rtol=1e-14, atol=1e-15)
    norm = net.nodes[_node(net, "s")]      # Sub then Div: Div has no shift, adds no part
    assert norm.bias_parts is None
    assert [q[:2] for q in norm.bias_terms()] == [("Sub_s", "Sub")]


def test_decomposition_bias_parts_add_up_to_a_b(model):
    net, x, p, dec = model
    for n in dec.affine_nodes:
        parts = dec.bias_parts(n)
        np.testing.assert_allclose(sum(q.a for q in parts), dec.layers[n].a_b, rtol=1e-12,
                                   atol=1e-13)
    ops = [q.op for q in dec.bias_parts(_node(net, "c2"))]
    assert ops[-1] == "ActivationOffset"        # the Clip saturates on these inputs
    with pytest.raises(ValueError, match="only affine nodes have a bias"):
        dec.bias_parts(_node(net, "p1"))


def test_input_normalisation_found_only_when_there(model):
    net, x, p, dec = model
    expected = [_node(net, "s")] if "mean" in p else []
    assert sal.input_normalisation(dec) == expected


def test_fullgrad_input_term_paper_vs_official_2019_three_channels():
    """The input term: eq. 8 rescales the channel-summed |sum_c x_c grad_c|; the
    reference code rescales |x * grad| jointly over channels and positions, then sums
    the channels. They used to be the same thing in refbbp (per-channel Psi, summed),
    which is neither. Pinned on a 3-channel input of 1x2 pixels with x = 1 and a linear
    model (no conv layer, so the input term is all there is): a = x * grad =
    [[1, -1], [-1, 1], [2, 0]]; paper: |a summed| = [2, 0] -> [1, 0]; official:
    |a| / (2 + 1e-6) summed over channels = [4, 2] / (2 + 1e-6)."""
    a = np.array([[[1.0, -1.0]], [[-1.0, 1.0]], [[2.0, 0.0]]])
    w = np.zeros((2, 6))
    w[0] = a.ravel()
    model = make_model([onnx_node("Flatten", ["x"], "f", axis=1),
                        onnx_node("Gemm", ["f", "W"], "logits", transB=1)],
                       {"x": (3, 1, 2)}, ["logits"], {"W": w})
    dec = decompose(refbbp.load(model), np.ones((3, 1, 2)), target=0)
    np.testing.assert_array_equal(sal.fullgrad(dec, "paper"), [[1.0, 0.0]])
    official = sal.fullgrad(dec, "official-2019")
    np.testing.assert_allclose(official, [[4 / (2 + 1e-6), 2 / (2 + 1e-6)]], rtol=1e-15)
    np.testing.assert_array_equal(sal.fullgrad(dec, "official"), official)


def test_fullgrad_rejects_unknown_variant(rng):
    m, x, p = build_normalised_cnn(rng, batch=1)
    dec = decompose(refbbp.load(m), x)
    with pytest.raises(ValueError, match="variant must be one of 'paper', 'official', "
                                         "'official-2019', got 'layer'"):
        sal.fullgrad(dec, "layer")


def test_fullgrad_official_leaves_out_pad_constants(rng):
    """A Pad with a non-zero value before a Conv puts a constant into the Conv's bias;
    it is a bias part of its own, which the reference code (only module biases) has no
    term for."""
    w = _f32(rng.normal(0, 0.5, (2, 1, 3, 3)))
    wf = _f32(rng.normal(0, 0.3, (2, 2 * 4 * 4)))
    m = make_model([onnx_node("Pad", ["x", "pads", "value"], "xp", mode="constant"),
                    onnx_node("Conv", ["xp", "W"], "c", kernel_shape=[3, 3]),
                    onnx_node("Relu", ["c"], "r"),
                    onnx_node("Flatten", ["r"], "f", axis=1),
                    onnx_node("Gemm", ["f", "Wf"], "logits", transB=1)],
                   {"x": (1, 4, 4)}, ["logits"],
                   {"W": w, "Wf": wf, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                    "value": np.array(0.5)})
    x = _f32(rng.normal(0, 1, (1, 1, 4, 4)))
    net = refbbp.load(m)
    dec = decompose(net, x)
    k = _node(net, "c")
    ops = [q.op for q in dec.bias_parts(k)]
    assert ops == ["Conv", "Constant"]
    np.testing.assert_array_equal(sum(q[2] for q in net.nodes[k].bias_terms()),
                                  net.nodes[k].bias)
    # the official map: the input term alone (the Conv has no bias of its own)
    expected = post_process(x[0] * dec.linear.w[0]).sum(0)
    np.testing.assert_allclose(sal.fullgrad(dec, "official")[0], expected, rtol=1e-13)


@settings(max_examples=40)  # ~ 50 ms per example (draw, load, decompose, three maps)
@given(strategies.models())
def test_bias_parts_add_up_on_random_models_property(example):
    """On any model: every node's bias parts add up to its bias (to rounding: a part
    folded through several scales is rounded on its own), the per-part attributions to
    a_b, and every variant gives a finite non-negative map per input."""
    model, x = example
    net = refbbp.load(model)
    dec = decompose(net, x[None])
    for n in dec.affine_nodes:
        parts = net.nodes[n].bias_terms()
        scale = sum(np.abs(q[2]) for q in parts)
        assert np.all(np.abs(sum(q[2] for q in parts) - net.nodes[n].bias) <= 1e-14 * scale)
        a = dec.bias_parts(n)
        scale = sum(np.abs(q.a) for q in a) + np.abs(dec.layers[n].a_b)
        assert np.all(np.abs(sum(q.a for q in a) - dec.layers[n].a_b) <= 1e-14 * scale)
    for variant in sal.FULLGRAD_VARIANTS:
        s = sal.fullgrad(dec, variant)
        assert s.shape == (1,) + sal.map_shape(net.input_shape)
        assert np.all(np.isfinite(s)) and np.all(s >= 0)
