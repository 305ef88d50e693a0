"""A ResNet at a reduced size (3x64x64): the ImageNet architecture's every kind of layer
-- a 7x7 stride-2 stem with BatchNorm, a padded 3x3 stride-2 max-pool, bottleneck blocks
with a strided 3x3 (v1.5) and 1x1 projection shortcuts, global average pooling and a
dense head -- built with ``onnx.helper``, explained end to end.

* BBp is complete at every cut (SPEC 3, 1e-9 x scale), for both rules.
* Window storage (the default) and unrolled CSR give the same numbers (1e-12).
* The kernel's results are bitwise identical for 1, 2 and 3 threads.
"""

from __future__ import annotations

import numpy as np
import pytest

import refbbp
from tests.helpers import make_model, make_node

pytestmark = pytest.mark.filterwarnings("ignore::refbbp.ImportNotice")


class _Net:
    """A small graph builder over ``make_node`` with He-initialised weights."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.n = rng, [], {}, 0

    def _name(self, op):
        self.n += 1
        return f"{op.lower()}{self.n}"

    def const(self, value):
        name = f"c{self.n}_{len(self.inits)}"
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op, inputs, **attrs):
        out = self._name(op)
        self.nodes.append(make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(self, t, cin, cout, k, stride=1, relu=True, damp=1.0):
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        t = self.op("Conv", [t, self.const(w)], kernel_shape=[k, k], strides=[stride] * 2,
                    pads=[k // 2] * 4)
        bn = [damp * self.rng.uniform(0.5, 1.5, cout), self.rng.normal(0, 0.1, cout),
              self.rng.normal(0, 0.1, cout), self.rng.uniform(0.5, 1.5, cout)]
        t = self.op("BatchNormalization", [t] + [self.const(v) for v in bn])
        return self.op("Relu", [t]) if relu else t

    def bottleneck(self, t, cin, width, stride):
        cout = 4 * width
        y = self.conv_bn(t, cin, width, 1)
        y = self.conv_bn(y, width, width, 3, stride)
        y = self.conv_bn(y, width, cout, 1, relu=False, damp=0.2)
        skip = t if (stride == 1 and cin == cout) else self.conv_bn(t, cin, cout, 1, stride,
                                                                      relu=False)
        return self.op("Relu", [self.op("Add", [y, skip])]), cout


def resnet64(rng, classes=10):
    g = _Net(rng)
    t = g.conv_bn("x", 3, 8, 7, stride=2)                                  # 32x32
    t = g.op("MaxPool", [t], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 16
    c = 8
    for width, stride in ((4, 1), (4, 1), (8, 2)):                         # 16, 16, 8
        t, c = g.bottleneck(t, c, width, stride)
    t = g.op("GlobalAveragePool", [t])
    t = g.op("Flatten", [t], axis=1)
    w = rng.normal(0, np.sqrt(1.0 / c), (classes, c))
    g.op("Gemm", [t, g.const(w), g.const(rng.normal(0, 0.1, classes))], transB=1)
    return make_model(g.nodes, {"x": (3, 64, 64)}, [g.nodes[-1].output[0]], g.inits)


@pytest.fixture(scope="module")
def model():
    return resnet64(np.random.default_rng(64))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32) \
        .astype(np.float64)


def test_convolutions_are_window_matrices(model):
    net = refbbp.load(model)
    convs = [n for n in net.nodes if n.op == "Conv"]
    assert len(convs) == 12 and all(n.describe_storage() == "window" for n in convs)


@pytest.mark.parametrize("rule", ["sign", "deviation"])
def test_complete_at_every_cut(model, x, rule):
    net = refbbp.load(model)
    att = refbbp.bbp(net, x, rule=rule)
    c = att.completeness()
    assert len(c.cuts) >= 6 and c.ok(), str(c)


def test_window_and_csr_storage_agree(model, x):
    a = refbbp.bbp(refbbp.load(model), x)
    b = refbbp.bbp(refbbp.load(model, storage="csr"), x)
    for k, (pa, pb) in enumerate(zip(a.node_beta, b.node_beta)):
        scale = max(np.abs(pb).max(initial=0.0), 1e-300)
        np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-12 * scale, err_msg=f"node {k}")
    np.testing.assert_allclose(a.w, b.w, rtol=0, atol=1e-12 * np.abs(b.w).max())


def test_bitwise_identical_for_1_2_3_threads(model, x):
    net = refbbp.load(model)
    one = refbbp.bbp(net, x, n_threads=1)
    for n in (2, 3):
        other = refbbp.bbp(net, x, n_threads=n)
        assert all(np.array_equal(a, b) for a, b in zip(one.node_beta, other.node_beta))
        assert all(np.array_equal(a, b) for a, b in zip(one.linear.grads, other.linear.grads))
