"""Hypothesis strategies: small random ONNX models with piecewise-linear activations.

Every strategy here draws ``(model, x)``: an ``onnx.ModelProto`` (float32 weights, opset
17, input ``"x"`` of shape ``("N", *input_shape)``) and one input ``x`` of shape
``input_shape``, float64 but float32-representable, so that onnxruntime and refbbp see
exactly the same numbers.

Structure (layer kinds, sizes, attributes) is drawn by Hypothesis and shrinks; the
values of weights and inputs come from a NumPy generator seeded by a drawn integer.
Graphs are built by a :class:`Sketch`, which runs onnxruntime on the partial graph
whenever a layer needs to know the shape or the values of the tensor it reads: shapes
are never re-derived by hand (so a shape rule refbbp gets wrong shows up as a forward
mismatch), and a Clip's bounds are drawn as quantiles of the values it receives, so
that some elements saturate at each bound.

The pieces compose: ``add_*(draw, g, ...)`` functions append a layer to a sketch ``g``
(drawing what they need with ``draw``), and the strategies :func:`mlps`, :func:`cnns`
and :func:`resnets` chain them. :func:`models` draws from all three.

Weights follow He initialisation (``N(0, 2 / fan_in)``), biases and BatchNorm statistics
are of moderate scale and inputs are ``N(0, 1)`` (or uniform on [0, 1] before an input
normalisation), so roughly half of the ReLUs are active and magnitudes stay O(1) through
a few layers.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from tests.helpers import run_ort, with_output_shapes

__all__ = [
    "OPSET", "Sketch", "cnns", "logits_name", "mlps", "models", "resnets", "run_ort",
    "add_activation", "add_avgpool", "add_batchnorm", "add_bn_written_out", "add_concat_skip",
    "add_conv", "add_conv_transpose", "add_dense", "add_head", "add_input_normalisation",
    "add_maxpool", "add_residual", "add_softmax", "add_conv_block", "add_nhwc_conv",
    "add_normalisation", "add_pad", "add_global_pool", "add_preactivation_skip",
]

OPSET = 17
IR_VERSION = 8
MAX_CHANNELS = 4        # keeps every tensor below ~ 4 x 10 x 10 = 400 elements
ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu", "Clip")

seeds = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------- onnxruntime
def logits_name(model):
    """The tensor refbbp explains: the graph output, before a final Softmax."""
    name = model.graph.output[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    while name in producer and producer[name].op_type in ("Softmax", "LogSoftmax"):
        name = producer[name].input[0]
    return name


# --------------------------------------------------------------------------- sketch
class Sketch:
    """An ONNX graph under construction, with the values of its tensors at one input.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every weight.
    x : ndarray, shape input_shape
        The example input (float32-representable).
    dtype : numpy dtype
        Of the initializers and the graph input (float64 for the canonical-form tests,
        which never ask onnxruntime for values).

    Attributes
    ----------
    cur : str
        The tensor the next layer reads.
    """

    def __init__(self, rng, x, dtype=np.float32):
        self.rng = rng
        self.dtype = np.dtype(dtype)
        self.x = np.asarray(x, self.dtype)[None]
        self.nodes, self.inits = [], []
        self.cur = "x"
        self._values = {}
        self._ids = itertools.count()

    # -------------------------------------------------------------- building
    def fresh(self, prefix):
        return f"{prefix}_{next(self._ids)}"

    def const(self, value, prefix="c", dtype=None):
        """An initializer; float arrays get the sketch's dtype."""
        value = np.asarray(value)
        if dtype is None and value.dtype.kind == "f":
            dtype = self.dtype
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        """Append a node; its output becomes ``cur`` and is returned."""
        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh(op_type), **attrs))
        self.cur = out
        return out

    def normal(self, *shape, std=1.0):
        return (self.rng.normal(size=shape) * std).astype(self.dtype)

    def weights(self, *shape, fan_in):
        """He-initialised weights: ``N(0, 2 / fan_in)``."""
        return self.normal(*shape, std=np.sqrt(2.0 / max(fan_in, 1)))

    def bias(self, n, std=0.3):
        return self.normal(n, std=std)

    # ------------------------------------------------------------- evaluating
    def model(self, outputs=None):
        """The ``ModelProto`` with graph outputs ``outputs`` (default ``[cur]``)."""
        outputs = [self.cur] if outputs is None else list(outputs)
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        x_info = helper.make_tensor_value_info("x", elem, ["N", *self.x.shape[1:]])
        outs = [helper.make_tensor_value_info(o, elem, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "sketch", [x_info], outs, list(self.inits))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="refbbp-tests")
        model.ir_version = IR_VERSION
        return with_output_shapes(model)

    def value(self, name=None):
        """The value of tensor ``name`` (default ``cur``) at the example input, from
        onnxruntime, with the batch axis."""
        name = self.cur if name is None else name
        if name == "x":
            return self.x
        if name not in self._values:
            self._values[name] = run_ort(self.model([name]), self.x)
        return self._values[name]

    def shape(self, name=None):
        return self.value(name).shape

    def example(self):
        """``(model, x)``: the finished model and the input as float64 (no batch axis)."""
        return self.model(), np.asarray(self.x[0], np.float64)


def _input(rng, shape, image=False):
    """An input of ``shape``, float32-representable: N(0, 1), or uniform on [0, 1]
    (an image, to be normalised)."""
    x = rng.uniform(0, 1, size=shape) if image else rng.normal(size=shape)
    return x.astype(np.float32)


def _channel_shape(g, name=None):
    """Shape that broadcasts a per-channel vector over tensor ``name`` (channels on axis 1)."""
    shape = g.shape(name)
    return (shape[1],) + (1,) * (len(shape) - 2)


# --------------------------------------------------------------------- activations
def add_activation(draw, g, allow_none=True, kinds=ACTIVATIONS):
    """Relu, LeakyRelu, PRelu (per channel or shared; negative slopes allowed), Clip
    (saturating: bounds are quantiles of the values it receives), or nothing."""
    choices = list(kinds) + ([None] if allow_none else [])
    kind = draw(st.sampled_from(choices))
    if kind is None:
        return None
    if kind == "Relu":
        g.op("Relu", [g.cur])
    elif kind == "LeakyRelu":
        alpha = draw(st.sampled_from([0.01, 0.1, 0.3, 0.7]))
        g.op("LeakyRelu", [g.cur], alpha=alpha)
    elif kind == "PRelu":
        shared = draw(st.booleans())
        shape = (1,) if shared else _channel_shape(g)
        # Slopes in [-1, 1]: negative slopes make the activation non-monotone.
        slope = g.rng.uniform(-1, 1, size=shape).astype(g.dtype)
        g.op("PRelu", [g.cur, g.const(slope, "slope")])
    elif kind == "Clip":
        add_clip(draw, g)
    return kind


def _bound_between(v, q):
    """A value between two neighbouring order statistics of ``v`` near quantile ``q``,
    so that it coincides with none of them (if they differ)."""
    v = np.sort(v.ravel().astype(np.float64))
    if v.size == 1:
        return v[0] + (0.5 if q > 0.5 else -0.5)
    i = min(int(q * (v.size - 1)), v.size - 2)
    return 0.5 * (v[i] + v[i + 1])


def add_clip(draw, g):
    """Clip with bounds drawn so that some elements saturate: two-sided (hard-tanh
    style), lower only, upper only, or ReLU6 style (lower bound 0)."""
    style = draw(st.sampled_from(["both", "low", "high", "relu6"]))
    q_lo = draw(st.sampled_from([0.1, 0.25, 0.4]))
    q_hi = draw(st.sampled_from([0.6, 0.75, 0.9]))
    v = g.value()
    lo = _bound_between(v, q_lo) if style in ("both", "low") else 0.0
    hi = _bound_between(v, q_hi) if style in ("both", "high", "relu6") else None
    if style == "relu6":
        hi = max(hi, 0.25)
    if style == "high":
        lo = None
    inputs = [g.cur, "" if lo is None else g.const(np.array(lo), "lo"),
              "" if hi is None else g.const(np.array(hi), "hi")]
    while inputs[-1] == "":
        inputs.pop()
    g.op("Clip", inputs)


# ---------------------------------------------------------------------------- dense
DENSE_STYLES = ("gemm", "matmul_add", "matmul_left")


def add_dense(draw, g, n_out, style=None):
    """A fully connected layer on a (1, n) tensor, as an exporter might write it:

    * ``gemm``: Gemm with alpha, beta, transB drawn (and C of shape (m,), (1, m) or none);
    * ``matmul_add``: MatMul by (n, m) then Add of the bias (either operand order);
    * ``matmul_left``: the constant on the left: Transpose to (n, 1), MatMul (m, n) @ .,
      Add a (m, 1) bias, Transpose back.
    """
    n = g.shape()[1]
    style = draw(st.sampled_from(DENSE_STYLES)) if style is None else style
    w = g.weights(n_out, n, fan_in=n)
    b = g.bias(n_out)
    if style == "gemm":
        alpha = draw(st.sampled_from([1.0, 0.5, 2.0]))
        beta = draw(st.sampled_from([1.0, 0.0, -1.5]))
        trans_b = draw(st.booleans())
        c_shape = draw(st.sampled_from([(n_out,), (1, n_out), None]))
        wmat = (w / alpha).astype(g.dtype)
        inputs = [g.cur, g.const(wmat if trans_b else wmat.T.copy(), "W")]
        if c_shape is not None:
            inputs.append(g.const(b.reshape(c_shape), "C"))
        g.op("Gemm", inputs, alpha=alpha, beta=beta, transB=int(trans_b))
    elif style == "matmul_add":
        h = g.op("MatMul", [g.cur, g.const(w.T.copy(), "W")])
        bias = g.const(b, "B")
        g.op("Add", [h, bias] if draw(st.booleans()) else [bias, h])
    else:
        t = g.op("Transpose", [g.cur], perm=[1, 0])
        h = g.op("MatMul", [g.const(w, "W"), t])
        h = g.op("Add", [h, g.const(b.reshape(n_out, 1), "B")])
        g.op("Transpose", [h], perm=[1, 0])
    return style


def add_softmax(draw, g):
    """Optionally a final Softmax (refbbp drops it and explains the logits)."""
    if draw(st.booleans()):
        g.op("Softmax", [g.cur], axis=-1)


def _finish_dense(draw, g, n_classes):
    add_dense(draw, g, n_classes)
    add_softmax(draw, g)
    return g.example()


@st.composite
def mlps(draw, max_hidden=3):
    """Sequential MLPs: input (n,), hidden layers (with a BatchNorm1d or not) with an
    activation or none (two matrix ops in a row stay two layers), n_classes outputs."""
    rng = np.random.default_rng(draw(seeds))
    n_in = draw(st.integers(1, 12))
    g = Sketch(rng, _input(rng, (n_in,)))
    for width in draw(st.lists(st.integers(1, 10), min_size=0, max_size=max_hidden)):
        add_dense(draw, g, width)
        if draw(st.booleans()):
            add_batchnorm(draw, g)  # BatchNorm1d: folds into the dense layer
        add_activation(draw, g, allow_none=True)
    return _finish_dense(draw, g, draw(st.integers(2, 6)))


# -------------------------------------------------------------------- convolutions
def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def add_conv(draw, g, out_channels=None, same=False, padded=False, bias=None):
    """Conv over (1, C, *spatial), 1-D or 2-D.

    Draws the group (1, a divisor of C, or depthwise), kernel, stride, dilation and the
    padding: explicit (possibly asymmetric) pads, auto_pad SAME_UPPER / SAME_LOWER /
    VALID, or none. ``same=True`` keeps the output shape (stride 1, padding of the
    kernel's extent - 1); ``padded=True`` forces some zero padding.
    """
    shape = g.shape()
    c, spatial = shape[1], shape[2:]
    nd = len(spatial)
    group = draw(st.sampled_from(_divisors(c)))
    if out_channels is None:
        mult = draw(st.integers(1, max(1, MAX_CHANNELS // group)))
        out_channels = group * mult
    elif out_channels % group:
        group = 1
    modes = ["explicit"] if padded else ["explicit", "SAME_UPPER", "SAME_LOWER"]
    if not same and not padded:
        modes += ["VALID", "none"]
    mode = draw(st.sampled_from(modes))
    # onnxruntime refuses dilations with auto_pad SAME_*.
    dilations = [draw(st.integers(1, 2)) if s >= 3 and not mode.startswith("SAME") else 1
                 for s in spatial]
    kernel = [draw(st.integers(1, min(3, (s - 1) // d + 1))) for s, d in zip(spatial, dilations)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    strides = [1] * nd if same else [draw(st.integers(1, 2)) for _ in spatial]
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations}
    if group > 1:
        attrs["group"] = group
    if mode == "explicit":
        if same:
            begin = [draw(st.integers(0, e - 1)) for e in extent]
            pads = begin + [e - 1 - b for e, b in zip(extent, begin)]
        else:
            pads = [draw(st.integers(0, e - 1)) for e in extent * 2]
        if padded and not any(pads):
            pads[0] = 1  # e.g. a 1x1 kernel: pad the start of the first axis
        attrs["pads"] = pads
    elif mode != "none":
        attrs["auto_pad"] = mode
    cg = c // group
    w = g.weights(out_channels, cg, *kernel, fan_in=cg * int(np.prod(kernel)))
    inputs = [g.cur, g.const(w, "W")]
    if bias is None:
        bias = draw(st.booleans())
    if bias:
        inputs.append(g.const(g.bias(out_channels), "B"))
    g.op("Conv", inputs, **attrs)
    return attrs


def add_conv_transpose(draw, g):
    """ConvTranspose (group 1 or depthwise), with strides, dilations, pads and
    output_padding."""
    shape = g.shape()
    c, spatial = shape[1], shape[2:]
    group = draw(st.sampled_from(sorted({1, c})))
    m = group * draw(st.integers(1, max(1, MAX_CHANNELS // group)))
    kernel = [draw(st.integers(1, 3)) for _ in spatial]
    strides = [draw(st.integers(1, 2)) for _ in spatial]
    dilations = [draw(st.integers(1, 2)) for _ in spatial]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_pad = [draw(st.integers(0, s - 1)) for s in strides]
    full = [st_ * (s - 1) + op + e for st_, s, op, e in zip(strides, spatial, out_pad, extent)]
    pads = [draw(st.integers(0, min(e - 1, (f - 1) // 2))) for e, f in zip(extent, full)] * 2
    pads = pads[:len(spatial)] + [draw(st.integers(0, min(e - 1, f - 1 - p)))
                                  for e, f, p in zip(extent, full, pads)]
    w = g.weights(c, m // group, *kernel, fan_in=c // group * int(np.prod(kernel)))
    inputs = [g.cur, g.const(w, "W")]
    if draw(st.booleans()):
        inputs.append(g.const(g.bias(m), "B"))
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations,
             "pads": pads}
    if any(out_pad):
        attrs["output_padding"] = out_pad
    if group > 1:
        attrs["group"] = group
    g.op("ConvTranspose", inputs, **attrs)


def _bn_params(g, c):
    gamma = g.rng.uniform(0.5, 1.5, c) * g.rng.choice([-1, 1], c)
    beta = g.rng.normal(0, 0.3, c)
    mean = g.rng.normal(0, 0.3, c)
    var = g.rng.uniform(0.5, 2.0, c)
    return [p.astype(g.dtype) for p in (gamma, beta, mean, var)]


def add_batchnorm(draw, g):
    """BatchNormalization (inference) over the channels of ``cur``."""
    c = g.shape()[1]
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    names = [g.const(p, n) for p, n in zip(_bn_params(g, c), ("gamma", "beta", "mean", "var"))]
    g.op("BatchNormalization", [g.cur] + names, epsilon=eps)


def add_bn_written_out(draw, g):
    """BatchNormalization written out as Sub(mean), Mul(scale) or Div(std), Add(beta),
    with per-channel constants."""
    cs = _channel_shape(g)
    gamma, beta, mean, var = (p.reshape(cs) for p in _bn_params(g, cs[0]))
    g.op("Sub", [g.cur, g.const(mean, "mean")])
    if draw(st.booleans()):
        g.op("Mul", [g.cur, g.const(gamma / np.sqrt(var), "scale")])
    else:
        g.op("Div", [g.cur, g.const(np.sqrt(var) / gamma, "std")])
    g.op("Add", [g.cur, g.const(beta, "beta")])


def add_input_normalisation(draw, g):
    """``(x - mean) / std`` per channel, as image pipelines export it; a padded conv
    follows (folding the normalisation into it would be wrong at the borders)."""
    cs = _channel_shape(g)
    mean = g.rng.uniform(0.3, 0.6, cs).astype(g.dtype)
    std = g.rng.uniform(0.2, 0.4, cs).astype(g.dtype)
    g.op("Sub", [g.cur, g.const(mean, "mean")])
    g.op("Div", [g.cur, g.const(std, "std")])
    add_conv(draw, g, padded=True)


def _pool_geometry(draw, spatial, ceil):
    """Kernel, strides, padding (explicit pads smaller than the kernel, or auto_pad
    SAME_UPPER / SAME_LOWER / VALID) and ceil_mode of a pool."""
    n = len(spatial)
    kernel = [draw(st.integers(1, min(3, s))) for s in spatial]
    strides = [draw(st.integers(1, 2)) for _ in spatial]
    mode = draw(st.sampled_from(["pads", "pads", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = {"kernel_shape": kernel, "strides": strides}
    if mode.startswith("SAME"):
        # A stride larger than the kernel makes SAME's padding negative, which
        # onnxruntime refuses (or, for AveragePool with ceil_mode, crops).
        attrs["strides"] = [min(st_, k) for st_, k in zip(strides, kernel)]
        attrs["auto_pad"] = mode
        attrs["ceil_mode"] = int(ceil)
        return attrs
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2] if mode == "pads" else [0] * 2 * n
    for ax, (s, k, st_) in enumerate(zip(spatial, kernel, strides)):
        out = -(-(s + pads[ax] + pads[ax + n] - k) // st_) + 1
        if (out - 1) * st_ >= s + pads[ax]:
            # The last ceil_mode window would start in the end padding: onnxruntime
            # drops it, ONNX's shape inference does not, and the model is refused.
            ceil = False
    if mode == "pads":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = mode
    attrs["ceil_mode"] = int(ceil)
    return attrs


def add_maxpool(draw, g):
    """MaxPool with padding (smaller than the kernel) or auto_pad, and ceil_mode 0/1."""
    attrs = _pool_geometry(draw, g.shape()[2:], draw(st.booleans()))
    g.op("MaxPool", [g.cur], **attrs)


def add_avgpool(draw, g):
    """AveragePool with padding or auto_pad, count_include_pad 0/1 and ceil_mode 0/1."""
    attrs = _pool_geometry(draw, g.shape()[2:], draw(st.booleans()))
    attrs["count_include_pad"] = int(draw(st.booleans()))
    g.op("AveragePool", [g.cur], **attrs)


def add_residual(draw, g):
    """``cur + branch(cur)``: branch = Conv (same shape) [+ BN] -> activation -> Conv;
    after the Add: nothing, Relu, BN (which cannot fold: the Add is no matrix op), or
    BN then Relu."""
    skip = g.cur
    c = g.shape()[1]
    add_conv(draw, g, out_channels=c, same=True)
    if draw(st.booleans()):
        add_batchnorm(draw, g)
    add_activation(draw, g, allow_none=False)
    add_conv(draw, g, out_channels=c, same=True)
    branch = g.cur
    g.op("Add", [skip, branch] if draw(st.booleans()) else [branch, skip])
    post = draw(st.sampled_from(["none", "relu", "bn", "bn_relu"]))
    if post.startswith("bn"):
        add_batchnorm(draw, g)
    if post.endswith("relu"):
        g.op("Relu", [g.cur])


def add_preactivation_skip(draw, g):
    """A conv whose output has two readers: the skip, and [a normalisation ->] an
    activation -> conv branch; joined by Add or Sub. Nothing may fold into or attach to
    the shared conv (its pre-activation value is read by the skip)."""
    c = g.shape()[1]
    add_conv(draw, g, out_channels=c, same=True)
    shared = g.cur
    if draw(st.booleans()):
        add_normalisation(draw, g)
    add_activation(draw, g, allow_none=False)
    add_conv(draw, g, out_channels=c, same=True)
    join = draw(st.sampled_from(["Add", "Sub"]))
    g.op(join, [shared, g.cur] if draw(st.booleans()) else [g.cur, shared])
    add_activation(draw, g)


def add_concat_skip(draw, g):
    """``Concat(Slice(cur, channels), branch(cur))`` along the channels (either order;
    the Slice may step)."""
    skip_in = g.cur
    c = g.shape()[1]
    start = draw(st.integers(0, c - 1))
    step = draw(st.integers(1, 2))
    sliced = g.op("Slice", [skip_in, g.const(np.array([start]), "starts", np.int64),
                            g.const(np.array([c]), "ends", np.int64),
                            g.const(np.array([1]), "axes", np.int64),
                            g.const(np.array([step]), "steps", np.int64)])
    g.cur = skip_in
    add_conv(draw, g, out_channels=draw(st.integers(1, max(1, MAX_CHANNELS - 1))), same=True)
    add_activation(draw, g, allow_none=True)
    branch = g.cur
    parts = [sliced, branch] if draw(st.booleans()) else [branch, sliced]
    if draw(st.integers(0, 3)) == 0:  # a constant channel too: constants in the view
        shape = list(g.shape(branch))
        shape[1] = 1
        parts.insert(draw(st.integers(0, 2)), g.const(g.normal(*shape), "channel"))
    g.op("Concat", parts, axis=1)


def add_normalisation(draw, g):
    """A BatchNormalization, or the same written out as Sub, Mul/Div, Add."""
    if draw(st.booleans()):
        add_batchnorm(draw, g)
    else:
        add_bn_written_out(draw, g)


def add_conv_block(draw, g):
    """Conv [+ BN, folded] [-> activation [-> BN, not folded]], in NCHW or in the NHWC
    style of TensorFlow exports (Transposes around the conv, the bias added and the
    activation applied channels-last)."""
    if draw(st.integers(0, 3)) == 0:
        add_nhwc_conv(draw, g)
        return
    add_conv(draw, g)
    if draw(st.booleans()):
        add_normalisation(draw, g)
    if add_activation(draw, g, allow_none=True) is not None and draw(st.booleans()):
        add_normalisation(draw, g)


def add_nhwc_conv(draw, g):
    """Transpose to channels-last and back, Conv without bias, Transpose to
    channels-last, Add the bias, activation (PRelu slopes on the last axis), Transpose
    back to channels-first."""
    rank = len(g.shape())
    to_last = [0] + list(range(2, rank)) + [1]
    to_first = [0, rank - 1] + list(range(1, rank - 1))
    g.op("Transpose", [g.cur], perm=to_last)
    g.op("Transpose", [g.cur], perm=to_first)
    add_conv(draw, g, bias=False)
    m = g.shape()[1]
    g.op("Transpose", [g.cur], perm=to_last)
    g.op("Add", [g.cur, g.const(g.bias(m), "b")])
    kind = draw(st.sampled_from(ACTIVATIONS + (None,)))
    if kind == "PRelu":
        g.op("PRelu", [g.cur, g.const(g.rng.uniform(-1, 1, m).astype(g.dtype), "slope")])
    elif kind is not None:
        add_activation(draw, g, kinds=(kind,), allow_none=False)
    g.op("Transpose", [g.cur], perm=to_first)


def add_pad(draw, g):
    """Pad (constant with a zero or non-zero value, reflect, edge) on the spatial axes,
    then a conv without padding."""
    shape = g.shape()
    spatial = shape[2:]
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    limit = [min(2, s - 1) if mode == "reflect" else 2 for s in spatial]
    begin = [draw(st.integers(0, lim)) for lim in limit]
    end = [draw(st.integers(0, lim)) for lim in limit]
    pads = [0, 0] + begin + [0, 0] + end
    inputs = [g.cur, g.const(np.array(pads), "pads", np.int64)]
    if mode == "constant":
        inputs.append(g.const(np.array(draw(st.sampled_from([0.0, 0.5, -1.0]))), "value"))
    g.op("Pad", inputs, mode=mode)
    add_conv(draw, g, bias=True)


def add_global_pool(draw, g):
    """Nothing, GlobalAveragePool, ReduceMean over the spatial axes (as the dynamo
    exporter writes it, keepdims 0 or 1) or GlobalMaxPool."""
    how = draw(st.sampled_from(["none", "gap", "reduce_mean", "gmp"]))
    axes = list(range(2, len(g.shape())))
    if how == "gap":
        g.op("GlobalAveragePool", [g.cur])
    elif how == "reduce_mean":
        g.op("ReduceMean", [g.cur], axes=axes, keepdims=int(draw(st.booleans())))
    elif how == "gmp":
        g.op("GlobalMaxPool", [g.cur])


def _shrink_channels(draw, g):
    """A 1x1 conv back to at most MAX_CHANNELS channels (after a Concat)."""
    if g.shape()[1] > MAX_CHANNELS:
        add_conv(draw, g, out_channels=draw(st.integers(1, MAX_CHANNELS)), bias=True)
        add_activation(draw, g)


def add_head(draw, g, n_classes):
    """[global pooling] -> Flatten or Reshape -> dense -> [Softmax]."""
    add_global_pool(draw, g)
    how = draw(st.sampled_from(["flatten", "reshape0", "reshape1"]))
    if how == "flatten":
        g.op("Flatten", [g.cur], axis=1)
    else:
        target = [0, -1] if how == "reshape0" else [1, int(np.prod(g.shape()[1:]))]
        g.op("Reshape", [g.cur, g.const(np.array(target), "shape", np.int64)])
    return _finish_dense(draw, g, n_classes)


def _cnn_input(draw, rng):
    nd = draw(st.sampled_from([1, 2]))
    c = draw(st.integers(1, 3))
    spatial = ([draw(st.integers(3, 12))] if nd == 1
               else [draw(st.integers(3, 10)), draw(st.integers(3, 10))])
    image = draw(st.booleans())
    return _input(rng, (c, *spatial), image=image), image


CNN_BLOCKS = ("conv", "maxpool", "avgpool", "conv_transpose", "residual", "concat", "pad")


@st.composite
def cnns(draw, max_blocks=3, blocks=CNN_BLOCKS):
    """Small CNNs over (C, L) or (C, H, W) inputs: an optional input normalisation and a
    padded conv, then blocks drawn from ``blocks``, then a dense head."""
    rng = np.random.default_rng(draw(seeds))
    x, image = _cnn_input(draw, rng)
    g = Sketch(rng, x)
    if image:
        add_input_normalisation(draw, g)
        add_activation(draw, g)
    for kind in draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=max_blocks)):
        spatial = g.shape()[2:]
        if kind == "conv":
            add_conv_block(draw, g)
        elif kind == "maxpool":
            add_maxpool(draw, g)
            if draw(st.integers(0, 3)) == 0:  # an activation on a max node: a node of its own
                add_activation(draw, g, allow_none=False)
        elif kind == "avgpool":
            add_avgpool(draw, g)
        elif kind == "conv_transpose" and np.prod(spatial) <= 36:
            add_conv_transpose(draw, g)
            if draw(st.booleans()):
                add_normalisation(draw, g)
            add_activation(draw, g)
        elif kind == "residual":
            add_residual(draw, g)
        elif kind == "concat":
            add_concat_skip(draw, g)
            _shrink_channels(draw, g)
        elif kind == "pad":
            add_pad(draw, g)
            add_activation(draw, g)
    return add_head(draw, g, draw(st.integers(2, 5)))


@st.composite
def resnets(draw, max_blocks=2):
    """Residual graphs: a stem conv, then residual Add blocks, skips from a shared
    pre-activation (Add or Sub), and Slice+Concat skips."""
    rng = np.random.default_rng(draw(seeds))
    x, image = _cnn_input(draw, rng)
    g = Sketch(rng, x)
    if image:
        add_input_normalisation(draw, g)
    else:
        add_conv(draw, g, same=draw(st.booleans()))
    add_activation(draw, g)
    for kind in draw(st.lists(st.sampled_from(["residual", "concat", "preactivation"]),
                              min_size=1, max_size=max_blocks)):
        if kind == "residual":
            add_residual(draw, g)
        elif kind == "preactivation":
            add_preactivation_skip(draw, g)
        else:
            add_concat_skip(draw, g)
            _shrink_channels(draw, g)
    if draw(st.booleans()):
        add_maxpool(draw, g)
    return add_head(draw, g, draw(st.integers(2, 5)))


def models():
    """Any of :func:`mlps`, :func:`cnns`, :func:`resnets`."""
    return st.one_of(mlps(), cnns(), resnets())
