"""Named ONNX models shared by the decomposition, saliency, evaluation and bias-study
tests, built with ``onnx.helper`` (float32 weights, symbolic batch dimension).

Each ``build_*`` takes a NumPy generator and returns ``(model, x)``: the
``onnx.ModelProto`` (input ``"x"``, output ``"logits"``) and a float32-representable
float64 batch of inputs.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.helpers import make_model

__all__ = ["BUILDERS", "build_cnn", "build_mlp", "build_resnet", "onnx_node"]


def _f32(a):
    return np.asarray(a, np.float32).astype(np.float64)


def _bn(rng, c, name, inits):
    """Initializers of an inference BatchNormalization over ``c`` channels."""
    for p, v in (("gamma", rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)),
                 ("beta", rng.normal(0, 0.5, c)), ("mean", rng.normal(0, 0.5, c)),
                 ("var", rng.uniform(0.5, 2.0, c))):
        inits[f"{name}_{p}"] = v
    return [f"{name}_{p}" for p in ("gamma", "beta", "mean", "var")]


def onnx_node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def build_mlp(rng, n_in=6, batch=3, clip=(-0.3, 0.3)):
    """Gemm + saturating Clip -> Gemm + Relu -> Gemm (3 classes)."""
    inits = {"W1": rng.normal(0, 1, (8, n_in)), "b1": rng.normal(0, 0.5, 8),
             "W2": rng.normal(0, 0.5, (5, 8)), "b2": rng.normal(0, 0.5, 5),
             "W3": rng.normal(0, 0.5, (3, 5)), "b3": rng.normal(0, 0.5, 3),
             "lo": np.array(clip[0]), "hi": np.array(clip[1])}
    nodes = [onnx_node("Gemm", ["x", "W1", "b1"], "g1", transB=1),
             onnx_node("Clip", ["g1", "lo", "hi"], "h1"),
             onnx_node("Gemm", ["h1", "W2", "b2"], "g2", transB=1),
             onnx_node("Relu", ["g2"], "h2"),
             onnx_node("Gemm", ["h2", "W3", "b3"], "logits", transB=1)]
    model = make_model(nodes, {"x": (n_in,)}, ["logits"], inits)
    return model, _f32(rng.normal(0, 1, (batch, n_in)))


def build_cnn(rng, channels=2, size=8, batch=3, bias=True, clip=(-0.5, 0.5), head_bias=None):
    """Conv + BN + Relu -> MaxPool 2 -> Conv + Clip (saturating) -> Flatten -> Gemm.

    ``bias=False`` leaves out every bias (BatchNorm without shift and mean);
    ``head_bias`` overrides it for the Gemm."""
    head_bias = bias if head_bias is None else head_bias
    c1, c2 = 3, 4
    s2 = size // 2 - 2
    inits = {"W1": rng.normal(0, 0.5, (c1, channels, 3, 3)),
             "W2": rng.normal(0, 0.4, (c2, c1, 3, 3)),
             "Wf": rng.normal(0, 0.3, (4, c2 * s2 * s2)),
             "lo": np.array(clip[0]), "hi": np.array(clip[1])}
    if bias:
        inits.update(B1=rng.normal(0, 0.3, c1), B2=rng.normal(0, 0.3, c2))
    if head_bias:
        inits.update(bf=rng.normal(0, 0.3, 4))
    bn = _bn(rng, c1, "bn1", inits)
    if not bias:
        inits["bn1_beta"][:] = 0
        inits["bn1_mean"][:] = 0
    nodes = [onnx_node("Conv", ["x", "W1"] + (["B1"] if bias else []), "c1",
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             onnx_node("BatchNormalization", ["c1"] + bn, "n1"),
             onnx_node("Relu", ["n1"], "r1"),
             onnx_node("MaxPool", ["r1"], "p1", kernel_shape=[2, 2], strides=[2, 2]),
             onnx_node("Conv", ["p1", "W2"] + (["B2"] if bias else []), "c2", kernel_shape=[3, 3]),
             onnx_node("Clip", ["c2", "lo", "hi"], "h2"),
             onnx_node("Flatten", ["h2"], "f", axis=1),
             onnx_node("Gemm", ["f", "Wf"] + (["bf"] if head_bias else []), "logits", transB=1)]
    model = make_model(nodes, {"x": (channels, size, size)}, ["logits"], inits)
    return model, _f32(rng.normal(0, 1, (batch, channels, size, size)))


def build_resnet(rng, channels=2, size=6, batch=3):
    """Conv + BN + Relu -> residual block [Conv + BN + Relu -> Conv + BN] + skip -> BN
    (its own node: the Add is no matrix op) -> Relu -> MaxPool -> Flatten -> Gemm."""
    c = 3
    inits = {"W0": rng.normal(0, 0.5, (c, channels, 3, 3)), "B0": rng.normal(0, 0.3, c),
             "Wa": rng.normal(0, 0.4, (c, c, 3, 3)), "Ba": rng.normal(0, 0.3, c),
             "Wb": rng.normal(0, 0.4, (c, c, 3, 3)),
             "Wf": rng.normal(0, 0.3, (3, c * (size // 2) ** 2)), "bf": rng.normal(0, 0.3, 3)}
    bn0, bna, bnb, bnp = (_bn(rng, c, n, inits) for n in ("bn0", "bna", "bnb", "bnp"))
    nodes = [onnx_node("Conv", ["x", "W0", "B0"], "c0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             onnx_node("BatchNormalization", ["c0"] + bn0, "n0"),
             onnx_node("Relu", ["n0"], "r0"),
             onnx_node("Conv", ["r0", "Wa", "Ba"], "ca", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             onnx_node("BatchNormalization", ["ca"] + bna, "na"),
             onnx_node("Relu", ["na"], "ra"),
             onnx_node("Conv", ["ra", "Wb"], "cb", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             onnx_node("BatchNormalization", ["cb"] + bnb, "nb"),
             onnx_node("Add", ["r0", "nb"], "sum"),
             onnx_node("BatchNormalization", ["sum"] + bnp, "np"),
             onnx_node("Relu", ["np"], "r2"),
             onnx_node("MaxPool", ["r2"], "p2", kernel_shape=[2, 2], strides=[2, 2]),
             onnx_node("Flatten", ["p2"], "f", axis=1),
             onnx_node("Gemm", ["f", "Wf", "bf"], "logits", transB=1)]
    model = make_model(nodes, {"x": (channels, size, size)}, ["logits"], inits)
    return model, _f32(rng.normal(0, 1, (batch, channels, size, size)))


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "resnet": build_resnet}
