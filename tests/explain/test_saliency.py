"""Saliency transforms and methods (SPEC section 4; companion paper eq. 8-10, 16).

The bilinear upsampling follows torch.nn.functional.interpolate(mode="bilinear",
align_corners=False). The expected values below are derived by hand from its rule
(output position i reads src = (i + 0.5) * n_in / n_out - 0.5, clamped below at 0, and
interpolates between floor(src) and the next pixel, clamped at the edge); they were
checked once against torch in a scratch script. torch is not imported here.
"""

from __future__ import annotations

import numpy as np
import pytest

import refbbp
from refbbp import saliency as sal
from refbbp.explain.decompose import decompose
from tests.models import BUILDERS, build_cnn, build_mlp, build_resnet

A22 = np.array([[1.0, 2.0], [3.0, 4.0]])

# 2 -> 4 (scale 1/2): src = -0.25 (-> 0), 0.25, 0.75, 1.25 (-> pixel 1 only), so the
# weights of (a0, a1) per output are (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1).
# Rows of A22: [1, 2] -> [1, 1.25, 1.75, 2]; 0.75*[1, 2] + 0.25*[3, 4] = [1.5, 2.5]
# -> [1.5, 1.75, 2.25, 2.5]; 0.25*[1, 2] + 0.75*[3, 4] = [2.5, 3.5] -> [2.5, 2.75, 3.25,
# 3.5]; [3, 4] -> [3, 3.25, 3.75, 4].
UP_22_44 = np.array([[1.0, 1.25, 1.75, 2.0],
                     [1.5, 1.75, 2.25, 2.5],
                     [2.5, 2.75, 3.25, 3.5],
                     [3.0, 3.25, 3.75, 4.0]])
# 2 -> 3 (scale 2/3): src = -1/6 (-> 0), 0.5, 7/6 (-> pixel 1 only): weights (1, 0),
# (0.5, 0.5), (0, 1). Rows [1, 2], [2, 3], [3, 4], each -> [a, (a+b)/2, b].
UP_22_33 = np.array([[1.0, 1.5, 2.0],
                     [2.0, 2.5, 3.0],
                     [3.0, 3.5, 4.0]])
# 1-D, 3 -> 5 (scale 3/5): src = -0.2 (-> 0), 0.4, 1.0, 1.6, 2.2 (-> pixel 2 only).
# [1, 2, 4] -> [1, 0.6*1 + 0.4*2, 2, 0.4*2 + 0.6*4, 4] = [1, 1.4, 2, 3.2, 4].
UP_3_5 = np.array([1.0, 1.4, 2.0, 3.2, 4.0])
# 2x2 [[1, 2], [3, 5]] -> 3x5: rows as for 2 -> 3: [1, 2], [2, 3.5], [3, 5]; columns
# 2 -> 5 (scale 2/5): src = -0.3 (-> 0), 0.1, 0.5, 0.9, 1.3 (-> pixel 1): weights of a1
# 0, 0.1, 0.5, 0.9, 1. [2, 3.5] -> [2, 2.15, 2.75, 3.35, 3.5].
UP_22_35 = np.array([[1.0, 1.1, 1.5, 1.9, 2.0],
                     [2.0, 2.15, 2.75, 3.35, 3.5],
                     [3.0, 3.2, 4.0, 4.8, 5.0]])
# Downsampling 4 -> 2 (scale 2): src = 0.5, 2.5: the mean of pixel pairs (no anti-alias).
DOWN_4_2 = np.array([1.5, 3.5])


@pytest.mark.parametrize("a, size, expected", [
    (A22, (4, 4), UP_22_44),
    (A22, (3, 3), UP_22_33),
    (np.array([1.0, 2.0, 4.0]), (5,), UP_3_5),
    (np.array([[1.0, 2.0], [3.0, 5.0]]), (3, 5), UP_22_35),
    (np.array([1.0, 2.0, 3.0, 4.0]), (2,), DOWN_4_2),
    (A22, (2, 2), A22),                                 # same size: unchanged
    (np.array([[7.0]]), (3, 2), np.full((3, 2), 7.0)),  # 1x1: constant
], ids=["2x2-4x4", "2x2-3x3", "3-5", "2x2-3x5", "4-2", "identity", "1x1"])
def test_bilinear_upsample_hand_values(a, size, expected):
    out = sal.bilinear_upsample(a, size)
    assert out.shape == tuple(size) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=1e-15, atol=1e-15)


def test_bilinear_upsample_leading_axes(rng):
    a = rng.normal(size=(2, 3, 5, 4))
    out = sal.bilinear_upsample(a, (9, 7))
    assert out.shape == (2, 3, 9, 7)
    for i in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[i, c], sal.bilinear_upsample(a[i, c], (9, 7)),
                                       rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("n_in, n_out", [(1, 4), (2, 3), (7, 28), (14, 28), (5, 3), (6, 6)])
def test_resize_weights_are_convex(n_in, n_out):
    w = sal.resize_weights(n_in, n_out)
    assert w.shape == (n_out, n_in)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-15)


def test_resize_weights_align_corners():
    """align_corners=True (FullGrad's reference code since June 2020): src = i * (n_in -
    1) / (n_out - 1). 2 -> 4: src = 0, 1/3, 2/3, 1; 3 -> 1: src = 0 (the first pixel)."""
    np.testing.assert_allclose(sal.resize_weights(2, 4, align_corners=True),
                               [[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1]], rtol=1e-15)
    np.testing.assert_array_equal(sal.resize_weights(3, 1, align_corners=True), [[1, 0, 0]])
    np.testing.assert_allclose(sal.bilinear_upsample(A22, (4, 4), align_corners=True)[0],
                               [1, 4 / 3, 5 / 3, 2], rtol=1e-15)


@pytest.mark.parametrize("bad", [(0, 3), (3, 0)])
def test_resize_weights_rejects_empty_axes(bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        sal.resize_weights(*bad)


def test_upsample_needs_enough_axes():
    with pytest.raises(ValueError, match="fewer than 2 axes"):
        sal.bilinear_upsample(np.ones(4), (2, 2))


def test_rescale_per_map():
    a = np.array([[[1.0, 3.0], [2.0, 5.0]],      # min 1, max 5
                  [[4.0, 4.0], [4.0, 4.0]]])     # constant: zeros
    out = sal.rescale(a, 2)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.25, 1.0]], rtol=1e-15)
    np.testing.assert_array_equal(out[1], np.zeros((2, 2)))


def test_psi_is_upsample_of_rescaled_abs(rng):
    a = rng.normal(size=(3, 4, 4))
    expected = np.stack([sal.bilinear_upsample(
        (np.abs(m) - np.abs(m).min()) / (np.abs(m).max() - np.abs(m).min()), (8, 8))
        for m in a])
    np.testing.assert_allclose(sal.psi(a, (8, 8)), expected, rtol=1e-14, atol=1e-15)
    assert sal.psi(a, (8, 8)).min() >= 0 and sal.psi(a, (8, 8)).max() <= 1


@pytest.mark.parametrize("shape, expected", [((3, 8, 8), (8, 8)), ((2, 10), (10,)),
                                             ((6,), (6,))])
def test_map_shape(shape, expected):
    assert sal.map_shape(shape) == expected


# ------------------------------------------------------------------------ methods
def _dec(builder, rng, **kw):
    model, x = builder(rng, **kw)
    net = refbbp.load(model)
    return net, x, decompose(net, x)


def test_gradient_map_sums_abs_over_channels(rng):
    net, x, dec = _dec(build_cnn, rng, channels=3)
    expected = np.abs(x * dec.linear.w).sum(1)
    np.testing.assert_array_equal(sal.gradient_map(dec), expected)


def _fullgrad_by_hand(net, dec):
    """Eq. 8 written out with loops: Psi of the channel-summed input attribution and of
    every channel of every conv-shaped bias attribution."""
    size = net.input_shape[1:]
    batch = len(dec.value)
    out = np.zeros((batch,) + size)
    maps = [dec.grad_input.sum(1, keepdims=True)] + [
        la.a_b for la in dec.layers[1:] if la.a_b is not None and la.spatial]
    for a in maps:
        for i in range(batch):
            for c in range(a.shape[1]):
                m = np.abs(a[i, c])
                span = m.max() - m.min()
                r = (m - m.min()) / span if span > 0 else np.zeros_like(m)
                out[i] += sal.bilinear_upsample(r, size)
    return out


@pytest.mark.parametrize("builder", [build_cnn, build_resnet], ids=["cnn", "resnet"])
def test_fullgrad_matches_definition(builder, rng):
    net, x, dec = _dec(builder, rng, channels=3)
    np.testing.assert_allclose(sal.fullgrad(dec), _fullgrad_by_hand(net, dec), rtol=1e-12,
                               atol=1e-13)


def test_fullgrad_leaves_out_dense_biases(rng):
    """A CNN whose only bias is in its dense head (and whose Clip never saturates):
    FullGrad is the input term alone."""
    net, x, dec = _dec(build_cnn, rng, bias=False, head_bias=True, clip=(-1e3, 1e3))
    assert np.all(dec.layers[net.output].A_b != 0)  # the target class's bias
    assert all(np.all(la.a_b == 0) for la in dec.layers[1:] if la.a_b is not None
               and la.spatial)
    np.testing.assert_allclose(sal.fullgrad(dec), sal.psi(dec.grad_input.sum(1), (8, 8)),
                               rtol=1e-14)


def _layers_by_hand(net, dec, layers, include_input=True):
    size = net.input_shape[1:]
    a0 = dec.grad_input.sum(1)
    out = sal.psi(a0, size) if include_input else np.zeros(a0.shape)
    for n in layers:
        out = out + sal.psi(dec.layers[n].a_h.sum(1), size)
    return out


@pytest.mark.parametrize("builder", [build_cnn, build_resnet], ids=["cnn", "resnet"])
def test_layer_aggregate_selects_layers(builder, rng):
    net, x, dec = _dec(builder, rng)
    spatial = dec.spatial_layers()
    assert len(spatial) >= 3
    cases = {"all": spatial, "top2": spatial[-2:], "top1": spatial[-1:],
             spatial[1]: spatial[1:], spatial[-1]: spatial[-1:]}
    for l0, layers in cases.items():
        np.testing.assert_allclose(sal.layer_aggregate(dec, l0),
                                   _layers_by_hand(net, dec, layers), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sal.layer_aggregate(dec, "top2", include_input=False),
                               _layers_by_hand(net, dec, spatial[-2:], False), rtol=1e-14)
    np.testing.assert_allclose(sal.layer_aggregate(dec, "all", layers=spatial[:1]),
                               _layers_by_hand(net, dec, spatial[:1]), rtol=1e-14)


@pytest.mark.parametrize("l0, match", [
    ("bottom", "not understood"),          # not a known name
    ("top0", "not understood"),            # zero layers
    (0, "not one of the spatial layers"),  # the input is not a layer
    (10_000, "not one of the spatial layers"),
])
def test_layer_aggregate_rejects_bad_l0(l0, match, rng):
    _, _, dec = _dec(build_cnn, rng)
    with pytest.raises(ValueError, match=match):
        sal.layer_aggregate(dec, l0)


def test_layer_aggregate_rejects_non_spatial_layers(rng):
    net, _, dec = _dec(build_cnn, rng)
    with pytest.raises(ValueError, match="not conv-shaped cut nodes"):
        sal.layer_aggregate(dec, layers=[net.output])


def test_layer_map_activity_and_bias(rng):
    net, x, dec = _dec(build_resnet, rng)
    size = net.input_shape[1:]
    n = dec.spatial_layers()[0]
    np.testing.assert_allclose(sal.layer_map(dec, n, "h"), sal.psi(dec.layers[n].a_h.sum(1),
                                                                      size), rtol=1e-15)
    affine = [la.index for la in dec.layers if la.a_b is not None and la.spatial]
    m = affine[0]
    np.testing.assert_allclose(sal.layer_map(dec, m, "b"), sal.psi(dec.layers[m].a_b.sum(1),
                                                                      size), rtol=1e-15)
    np.testing.assert_allclose(sal.layer_map(dec, 0, "h"),
                               sal.psi(dec.grad_input.sum(1), size), rtol=1e-15)
    with pytest.raises(ValueError, match="no spatial"):
        sal.layer_map(dec, net.output, "h")
    with pytest.raises(ValueError, match="kind must be"):
        sal.layer_map(dec, n, "x")


def test_mlp_maps_have_no_layers(rng):
    """A 1-D input has no channels: maps are per feature, and dense layers add nothing."""
    net, x, dec = _dec(build_mlp, rng)
    np.testing.assert_array_equal(sal.gradient_map(dec), np.abs(x * dec.linear.w))
    assert dec.spatial_layers() == []
    np.testing.assert_allclose(sal.layer_aggregate(dec), sal.psi(dec.grad_input, (6,)))
    np.testing.assert_allclose(sal.fullgrad(dec), sal.psi(dec.grad_input, (6,)))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_batch_equals_single_inputs(kind, rng):
    model, x = BUILDERS[kind](rng)
    net = refbbp.load(model)
    batch = decompose(net, x)
    fns = [sal.gradient_map, sal.fullgrad, lambda d: sal.layer_aggregate(d, "all")]
    for i in range(len(x)):
        one = decompose(net, x[i])
        for fn in fns:
            np.testing.assert_allclose(fn(one), fn(batch)[i], rtol=1e-12, atol=1e-14)
