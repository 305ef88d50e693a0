"""Resize and Upsample against onnxruntime: nearest mode (a view), linear and cubic
modes with and without anti-aliasing (affine nodes), every coordinate transformation,
scales or sizes, axes and keep_aspect_ratio_policy; completeness of BBp on models that
use them; Upsample and the equivalent Resize give the same network."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refbbp
from refbbp.errors import ModelFormatError, UnsupportedOpError
from refbbp.onnx.resize import TIE_EPS, axis_map, output_geometry
from refbbp.tolerance import FORWARD_ATOL, FORWARD_RTOL
from tests.helpers import check_against_ort, make_model, make_node, run_ort
from tests.onnx.test_canonical import assert_same_network

COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize", "half_pixel_symmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SCALES = [0.5, 0.7, 1.0, 4 / 3, 1.5, 2.0, 8 / 3, 3.0]


def resize_model(shape, opset=19, scales=None, sizes=None, roi=None, batch=None, **attrs):
    """One Resize node on an input of ``shape`` (``batch=None``: no batch axis)."""
    inits, ins = {}, ["x", "", "", ""]
    if opset == 10:
        inits["scales"], ins = np.asarray(scales, np.float32), ["x", "scales"]
    else:
        if roi is not None or opset < 13:    # Resize-11 requires roi (may be empty)
            inits["roi"], ins[1] = np.asarray([] if roi is None else roi, np.float32), "roi"
        if scales is not None:
            inits["scales"], ins[2] = np.asarray(scales, np.float32), "scales"
        if sizes is not None:
            inits["sizes"], ins[3] = np.asarray(sizes, np.int64), "sizes"
        while ins[-1] == "":
            ins.pop()
    return make_model([make_node("Resize", ins, ["y"], **attrs)], {"x": shape}, ["y"], inits,
                      opset, batch=batch)


@st.composite
def resize_cases(draw, mode):
    """A Resize node of ``mode`` onnxruntime accepts: shapes, layout (which axes are
    resized), scales or sizes, axes, policy, coordinate transformation and mode
    attributes."""
    rank = draw(st.sampled_from([2, 4] if mode == "cubic" else [1, 2, 3, 4, 5]
                                if mode == "nearest" else [2, 3, 4, 5]))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    antialias = mode != "nearest" and draw(st.booleans())
    if rank == 4:
        resized = draw(st.sampled_from([[2, 3], [1, 2]]))
    elif rank == 5 and mode != "nearest":
        resized = [2, 3, 4]
    else:
        resized = list(range(rank))
    channel_last = rank == 4 and resized == [1, 2] and mode != "nearest"
    coord = draw(st.sampled_from(COORDINATE_MODES))
    if channel_last and (antialias or mode == "cubic") and coord == "tf_crop_and_resize":
        coord = "half_pixel"        # refused: see test_channel_last_crop_and_resize_...
    attrs = dict(mode=mode, coordinate_transformation_mode=coord)
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(NEAREST_MODES))
    if antialias:
        attrs["antialias"] = 1
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.75, -0.5, -0.3]))
        attrs["exclude_outside"] = int(draw(st.booleans()))
    elif antialias:
        attrs["exclude_outside"] = int(draw(st.booleans()))
    use_axes = draw(st.booleans())
    axes = resized if use_axes else list(range(rank))
    kw = {}
    if coord == "tf_crop_and_resize":
        starts = [draw(st.sampled_from([-0.2, 0.0, 0.1, 0.3])) for _ in axes]
        ends = [s + draw(st.sampled_from([0.4, 0.7, 1.0, 1.3])) for s in starts]
        kw["roi"] = starts + ends
        attrs["extrapolation_value"] = draw(st.sampled_from([0.0, -1.5, 2.0]))
    if draw(st.booleans()):
        sizes = [draw(st.integers(1, 8)) if a in resized else shape[a] for a in axes]
        kw["sizes"] = sizes
        if use_axes and draw(st.booleans()):
            attrs["keep_aspect_ratio_policy"] = draw(st.sampled_from(["not_larger",
                                                                      "not_smaller"]))
    else:
        low = 1.0 if channel_last and mode == "cubic" and not antialias else 0.0
        kw["scales"] = [draw(st.sampled_from([s for s in SCALES if s >= low]))
                        if a in resized else 1.0 for a in axes]
    if use_axes:
        attrs["axes"] = axes
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal(shape)
    return resize_model(shape, **kw, **attrs), x


def _against_ort(model, x):
    """refbbp's forward equals onnxruntime's, and the local linear model is exact; a
    configuration onnxruntime refuses, or whose output is empty, refbbp refuses too."""
    try:
        empty = run_ort(model, x.astype(np.float32)).size == 0
    except Exception:  # onnxruntime refuses it
        empty = True
    if empty:
        with pytest.raises((UnsupportedOpError, ModelFormatError)):
            refbbp.load(model)
        return None
    return check_against_ort(model, x, FORWARD_RTOL, FORWARD_ATOL)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@given(case=st.data())
def test_resize_against_onnxruntime(mode, case):
    model, x = case.draw(resize_cases(mode))
    net = _against_ort(model, x)
    if net is not None and mode == "nearest":
        assert [n.kind for n in net.nodes][1:] in ([], ["affine"])   # a view (+ output copy)


@pytest.mark.parametrize("opset,mode", [(10, "nearest"), (10, "linear")] + [
    (o, m) for o in (11, 13, 18, 19) for m in ("nearest", "linear", "cubic")])
def test_resize_opsets(rng, opset, mode):
    attrs = {} if opset == 10 else dict(coordinate_transformation_mode="asymmetric")
    model = resize_model((2, 3, 4, 5), opset, scales=[1, 1, 1.5, 0.6], mode=mode, **attrs)
    check_against_ort(model, rng.standard_normal((2, 3, 4, 5)))


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample(rng, opset, mode):
    scales = [1.0, 1.0, 2.0, 1.5]
    if opset == 7:
        node = make_node("Upsample", ["x"], ["y"], mode=mode, scales=scales)
        inits = {}
    else:
        node = make_node("Upsample", ["x", "scales"], ["y"], mode=mode)
        inits = {"scales": np.array(scales, np.float32)}
    model = make_model([node], {"x": (2, 3, 4)}, ["y"], inits, opset)
    check_against_ort(model, rng.standard_normal((2, 2, 3, 4)))


def _cnn(rng, resize_node, inits, opset=13):
    """Conv -> Relu -> <resize> -> Conv -> Relu -> Flatten -> Gemm, on (2, 5, 5)."""
    inits = dict(inits)
    inits.update(w1=rng.standard_normal((3, 2, 3, 3)) * 0.5, b1=rng.standard_normal(3) * 0.1,
                 w2=rng.standard_normal((2, 3, 3, 3)) * 0.3, b2=rng.standard_normal(2) * 0.1,
                 w3=rng.standard_normal((4, 2 * 10 * 10)) * 0.1, b3=rng.standard_normal(4))
    nodes = [make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             make_node("Relu", ["c1"], ["r1"]), resize_node,
             make_node("Conv", ["up", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             make_node("Relu", ["c2"], ["r2"]), make_node("Flatten", ["r2"], ["f"]),
             make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    return make_model(nodes, {"x": (2, 5, 5)}, ["y"], inits, opset)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_completeness_cnn_with_resize(rng, mode):
    """BBp is complete (``sum beta = b^x``) through a Resize in a CNN."""
    node = make_node("Resize", ["r1", "", "scales"], ["up"], mode=mode)
    model = _cnn(rng, node, {"scales": np.array([1, 1, 2, 2], np.float32)})
    x = rng.standard_normal((3, 2, 5, 5))
    net = check_against_ort(model, x)
    assert "Resize" in [n.op for n in net.nodes] or mode == "nearest"
    for xi in x:
        assert refbbp.bbp(net, xi).completeness().ok()


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_resize_give_the_same_network(rng, mode):
    """Upsample-9 and the Resize-13 an exporter writes for it (asymmetric coordinates,
    floor rounding) load as the same network."""
    scales = {"scales": np.array([1, 1, 2, 2], np.float32)}
    seed = int(rng.integers(2**32))
    upsample = _cnn(np.random.default_rng(seed),
                    make_node("Upsample", ["r1", "scales"], ["up"], mode=mode), scales, opset=9)
    resize = _cnn(np.random.default_rng(seed),
                  make_node("Resize", ["r1", "", "scales"], ["up"], mode=mode,
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                  scales, opset=13)
    a, b = refbbp.load(upsample), refbbp.load(resize)
    assert_same_network(a, b)
    x = rng.standard_normal((2, 5, 5))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_nearest_is_a_view_and_linear_an_affine_node(rng):
    """Nearest mode leaves no node behind (the next Conv reads the input through the
    view); linear mode is one affine node with convex rows."""
    x = rng.standard_normal((2, 3, 4))
    near = refbbp.load(resize_model((2, 3, 4), scales=[1, 1, 2, 2], mode="nearest",
                                    batch="N"))
    assert [n.kind for n in near.nodes] == ["input", "affine"]      # the output copy
    lin = refbbp.load(resize_model((2, 3, 4), scales=[1, 1, 2, 2], mode="linear", batch="N"))
    assert [n.op for n in lin.nodes] == ["Input", "Resize"]
    w = lin.nodes[1].weights[0]
    np.testing.assert_allclose(np.asarray(w.sum(1)).ravel(), 1.0, rtol=1e-6)
    assert np.all(w.data > 0)
    check_against_ort(resize_model((2, 3, 4), scales=[1, 1, 2, 2], mode="linear", batch="N"),
                      x[None])


# ------------------------------------------------------------ root causes
def test_regression_nearest_ties_within_1e6_of_a_half():
    """onnxruntime treats a float32 coordinate within 1e-6 of a half as the tie of the
    round_prefer_* modes (0.50000006 rounds to 0 with round_prefer_floor); refbbp used
    C's round and picked input 1 (found with half_pixel_symmetric, 5 -> 13)."""
    idx, _ = axis_map("nearest", 5, 13, np.float32(8 / 3), "half_pixel_symmetric")
    assert idx[2] == 0
    idx, _ = axis_map("nearest", 5, 13, np.float32(8 / 3), "half_pixel_symmetric",
                      nearest_mode="round_prefer_ceil")
    assert idx[2] == 1
    assert TIE_EPS == np.float32(1e-6)
    x = np.arange(5.0)[None]
    for nm in ("round_prefer_floor", "round_prefer_ceil"):
        check_against_ort(resize_model((1, 5), scales=[1, 8 / 3], mode="nearest",
                                       nearest_mode=nm,
                                       coordinate_transformation_mode="half_pixel_symmetric"),
                          x)
    # onnxruntime's own report: half_pixel 20 -> 6, coordinate 14.499999 is the tie 14.5
    check_against_ort(resize_model((1, 20), sizes=[1, 6], mode="nearest",
                                   nearest_mode="round_prefer_ceil"), np.arange(20.0)[None])


def test_regression_antialias_unchanged_axis_still_extrapolates(rng):
    """With antialias=1, onnxruntime copies an axis whose length the scale leaves
    unchanged (3 * 1.3 -> 3) yet still gives the extrapolation value where its
    tf_crop_and_resize coordinates fall outside; refbbp copied the axis without
    extrapolating."""
    model = resize_model((4, 3), scales=[3.0, 1.3], roi=[-0.08, 0.26, 0.05, 1.09],
                         mode="cubic", antialias=1, extrapolation_value=9.0,
                         coordinate_transformation_mode="tf_crop_and_resize")
    net = check_against_ort(model, rng.standard_normal((4, 3)))
    assert np.any(net.forward(rng.standard_normal((4, 3))) == 9.0)


def test_channel_last_crop_and_resize_with_the_antialiasing_kernel_is_refused(rng):
    """onnxruntime's channel-last anti-aliasing kernel (also its cubic kernel for
    channel-last inputs) scatters tf_crop_and_resize's extrapolated values in a layout
    of its own; refbbp refuses it rather than disagree."""
    model = resize_model((4, 5, 4, 4), sizes=[4, 6, 4, 4], mode="cubic",
                         roi=[0.1, -0.07, -0.05, 0.5, 0.5, 0.14, 0.4, 1.2],
                         coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(UnsupportedOpError, match="tf_crop_and_resize.*channel-last"):
        refbbp.load(model)


@pytest.mark.parametrize("mode,scales,shape", [
    ("linear", [2.0], (4,)),
    ("linear", [2.0, 1.0, 1.5, 1.0], (2, 3, 4, 5)),
    ("linear", [1, 1, 1, 2, 2, 2], (1, 1, 1, 2, 2, 2)),
    ("cubic", [1.0, 2.0, 2.0], (3, 4, 5)),
    ("cubic", [1.0, 0.5, 0.6, 1.0], (1, 4, 5, 3)),
])
def test_layouts_onnxruntime_refuses_are_refused(mode, scales, shape):
    """Linear and cubic modes on axis layouts onnxruntime's kernels refuse: refused,
    naming the mode and the scales."""
    with pytest.raises(UnsupportedOpError, match=f"mode '{mode}' with scales"):
        refbbp.load(resize_model(shape, scales=scales, mode=mode))
    with pytest.raises(Exception, match="only supports"):  # noqa: B017 (onnxruntime's own)
        run_ort(resize_model(shape, scales=scales, mode=mode), np.zeros(shape, np.float32))


def test_input_dependent_scales_are_refused():
    nodes = [make_node("Shape", ["x"], ["s"]), make_node("Cast", ["s"], ["sf"], to=1),
             make_node("Div", ["sf", "sf"], ["one"]), make_node("Mul", ["one", "x"], ["xs"]),
             make_node("ReduceMax", ["xs"], ["m"], keepdims=0),
             make_node("Resize", ["x", "", "m"], ["y"], mode="nearest")]
    model = make_model(nodes, {"x": (4,)}, ["y"], {}, 13, batch=None)
    with pytest.raises((UnsupportedOpError, ModelFormatError)):
        refbbp.load(model)


@pytest.mark.parametrize("attrs,inputs,match", [
    (dict(mode="linear", exclude_outside=1), dict(scales=[1, 2]), "exclude_outside"),
    (dict(mode="nearest", antialias=1), dict(scales=[1, 2]), "antialias"),
    (dict(mode="nearest"), dict(scales=[1, 2, 2]), "scales has 3 values"),
    (dict(mode="nearest"), dict(scales=[1, -2]), "scales"),
    (dict(mode="nearest"), dict(scales=[1, 2], sizes=[1, 6]), "both scales and sizes"),
    (dict(mode="nearest", axes=[1, 1]), dict(scales=[2, 2]), "axes"),
    (dict(mode="nearest"), dict(sizes=[1, 0]), "sizes"),
])
def test_malformed_resize_is_refused(attrs, inputs, match):
    with pytest.raises(ModelFormatError, match=match):
        refbbp.load(resize_model((1, 3), **inputs, **attrs))


def test_output_geometry_follows_onnxruntime():
    """Output shape from scales truncates the float32 product; from sizes with a
    policy every resized axis takes the min (max) scale and rounds half away from
    zero."""
    assert output_geometry((3, 5), scales=[1.0, 1.3])[0] == (3, 6)
    shape, scales = output_geometry((2, 4), sizes=[3, 10], axes=[0, 1], policy="not_larger")
    assert shape == (3, 6) and np.all(scales == np.float32(1.5))
    shape, _ = output_geometry((2, 4), sizes=[3, 10], axes=[0, 1], policy="not_smaller")
    assert shape == (5, 10)


def test_resize_is_no_longer_refused_as_unsupported():
    """Resize and Upsample used to be refused as piecewise linear but unsupported."""
    from refbbp.onnx import registry

    assert not {"Resize", "Upsample"} & registry.PIECEWISE_LINEAR_UNSUPPORTED
    assert {"Resize", "Upsample"} <= set(registry.supported_ops())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refbbp.load(resize_model((2, 3), scales=[1, 2], mode="linear"), batch_axis=None)


def test_deprecated_upsample_is_refused():
    """Upsample at opset 10 and later (deprecated; onnxruntime refuses it) is refused
    naming Resize as the replacement."""
    model = make_model([make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
                       {"x": (2, 3)}, ["y"], {"s": np.array([1, 1, 2], np.float32)}, 10)
    with pytest.raises((UnsupportedOpError, ModelFormatError), match="deprecated"):
        refbbp.load(model)
