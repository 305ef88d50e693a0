"""BBp worked out by hand on two tiny networks, both rules, T = 1 (SPEC section 3).

Every expected number is derived in the comments from the network's weights; the test
only evaluates the closed forms. Both backends must give them.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

import refbbp

from .bbp_models import load, one_conv, two_layer_dense

E = np.e
BACKENDS = ["cython", "numpy"]


# -------------------------------------------------------------- two-layer dense
# x = (1, 2)
# Layer 1: W1 = [[1, -1], [2, 1]], b1 = (2, -1), ReLU.
#   y1 = (1 - 2 + 2, 2 + 2 - 1) = (1, 3): both active, c = (1, 1), h1 = (1, 3),
#   b^x_1 = c * b1 = (2, -1).
# Layer 2 (output): W2 = [[1, 2], [-1, 1]], b2 = (-1, 0.5).
#   logits = (1 + 6 - 1, -1 + 3 + 0.5) = (6, 2.5); target: class 0, f = 6.
# Gradients: g2 = v = (1, 0); g1 = W2^T g2 = (1, 2); w = W1^T g1 = (1 + 4, -1 + 2) = (5, 1).
#   w . x = 7, so b^x = f - w . x = -1.
# BBp, output node: beta_2 = g2 * b2 = (-1, 0) (own bias; nothing received).
#   Row 0: kappa = W2[0] * h1 = (1, 6).
# BBp, node 1: own bias g1 * b^x_1 = (2, -2).
#   Row 0: kappa = W1[0] * x = (1, -2).  Row 1: kappa = W1[1] * x = (2, 2).

def dense_expected(rule):
    if rule == "sign":
        # Output row 0: b^x = -1 < 0, s = +kappa = (1, 6):
        #   alpha = (e^1, e^6) / (e^1 + e^6) = (1, e^5) / (1 + e^5).
        recv1 = -1.0 * np.array([1, E**5]) / (1 + E**5)
        beta1 = recv1 + np.array([2.0, -2.0])
        # Node 1 row 0: b^x = 2 > 0, s = -kappa = (-1, 2): alpha = (1, e^3) / (1 + e^3).
        # Node 1 row 1: b^x = -1 < 0, s = kappa = (2, 2): alpha = (1/2, 1/2).
        a0 = np.array([1, E**3]) / (1 + E**3)
        a1 = np.array([0.5, 0.5])
    else:
        # Output row 0: h = 6, n_p = 2, target 3: s = |3 - (1, 6)| = (2, 3):
        #   alpha = (e^2, e^3) / (e^2 + e^3) = (1, e) / (1 + e).
        recv1 = -1.0 * np.array([1, E]) / (1 + E)
        beta1 = recv1 + np.array([2.0, -2.0])
        # Node 1 row 0: h = 1, target 1/2: s = |1/2 - (1, -2)| = (1/2, 5/2):
        #   alpha = (1, e^2) / (1 + e^2).
        # Node 1 row 1: h = 3, target 3/2: s = |3/2 - (2, 2)| = (1/2, 1/2): (1/2, 1/2).
        a0 = np.array([1, E**2]) / (1 + E**2)
        a1 = np.array([0.5, 0.5])
    beta = beta1[0] * a0 + beta1[1] * a1
    return recv1, beta1, beta


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["sign", "deviation"])
def test_two_layer_dense_by_hand(rule, backend):
    net = load(two_layer_dense())
    x = np.array([1.0, 2.0])
    att = refbbp.bbp(net, x, rule=rule, temperature=1.0, backend=backend,
                     return_layers=True)
    recv1, beta1, beta = dense_expected(rule)
    assert att.value == 6.0 and att.bias_x == -1.0
    assert_allclose(att.w, [5.0, 1.0], rtol=1e-15)
    assert_allclose(att.layers[2].beta, [-1.0, 0.0], rtol=1e-15)
    assert_allclose(att.layers[1].beta_in, recv1, rtol=1e-14)
    assert_allclose(att.layers[1].beta, beta1, rtol=1e-14)
    assert_allclose(att.beta, beta, rtol=1e-14)
    assert_allclose(att.beta.sum(), -1.0, rtol=1e-14)
    assert att.fallback_total == 0


# ------------------------------------------------------------------- one conv
# x (1x3x3) = [[1, 2, 0], [0, 1, -1], [2, 0, 2]]; kernel K = [[1, -1], [2, 1]], bias -1,
# no padding, then ReLU; the 4 outputs are explained together: v = (1, 1, 1, 1).
# Output (i, j) reads x[i:i+2, j:j+2] with weights (1, -1, 2, 1) in row-major order:
#   (0,0): 1 - 2 + 0 + 1 - 1 = -1 -> ReLU off (c = 0): b^x = 0, no components, beta 0.
#   (0,1): 2 - 0 + 2 - 1 - 1 =  2 -> active.
#   (1,0): 0 - 1 + 4 + 0 - 1 =  2 -> active.
#   (1,1): 1 + 1 + 0 + 2 - 1 =  3 -> active.
# f = 7. Own bias of the (output) conv node: v * b^x = (0, -1, -1, -1); b^x = -3.
# Components (non-zero only; x[0,2] = x[1,0] = x[2,1] = 0 drop out):
#   (0,1): x01*1 = 2, x11*2 = 2, x12*1 = -1
#   (1,0): x11*(-1) = -1, x20*2 = 4
#   (1,1): x11*1 = 1, x12*(-1) = 1, x22*1 = 2

def conv_expected(rule):
    beta = np.zeros((3, 3))
    if rule == "sign":
        # b^x = -1 < 0 everywhere: s = +kappa; messages = -1 * softmax(kappa).
        # (0,1): s = (2, 2, -1): e = (1, 1, e^-3) / (2 + e^-3).
        d = 2 + E**-3
        beta[0, 1] += -1 / d
        beta[1, 1] += -1 / d
        beta[1, 2] += -(E**-3) / d
        # (1,0): s = (-1, 4): e = (e^-5, 1) / (1 + e^-5).
        d = 1 + E**-5
        beta[1, 1] += -(E**-5) / d
        beta[2, 0] += -1 / d
        # (1,1): s = (1, 1, 2): e = (e^-1, e^-1, 1) / (1 + 2 e^-1).
        d = 1 + 2 * E**-1
        beta[1, 1] += -(E**-1) / d
        beta[1, 2] += -(E**-1) / d
        beta[2, 2] += -1 / d
    else:
        # (0,1): h = 2, n_p = 3, target 2/3: s = (4/3, 4/3, 5/3): e = (e^-1/3, e^-1/3, 1).
        d = 1 + 2 * E**(-1 / 3)
        beta[0, 1] += -(E**(-1 / 3)) / d
        beta[1, 1] += -(E**(-1 / 3)) / d
        beta[1, 2] += -1 / d
        # (1,0): h = 2, n_p = 2, target 1: s = |1 - (-1, 4)| = (2, 3): e = (e^-1, 1).
        d = 1 + E**-1
        beta[1, 1] += -(E**-1) / d
        beta[2, 0] += -1 / d
        # (1,1): h = 3, n_p = 3, target 1: s = |1 - (1, 1, 2)| = (0, 0, 1): e = (e^-1, e^-1, 1).
        d = 1 + 2 * E**-1
        beta[1, 1] += -(E**-1) / d
        beta[1, 2] += -(E**-1) / d
        beta[2, 2] += -1 / d
    return beta[None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["sign", "deviation"])
def test_one_conv_by_hand(rule, backend):
    net = load(one_conv())
    x = np.array([[[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [2.0, 0.0, 2.0]]])
    att = refbbp.bbp(net, x, target=np.ones(4), rule=rule, temperature=1.0,
                     backend=backend)
    assert att.value == 7.0 and att.bias_x == -3.0
    assert_allclose(att.beta, conv_expected(rule), rtol=1e-14, atol=1e-16)
    assert_allclose(att.beta.sum(), -3.0, rtol=1e-14)
    assert att.fallback_total == 0
