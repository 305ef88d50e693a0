"""Scoring by onnxruntime: OnnxScorer, the RuntimeSession it is, and the
``onnxruntime_logits`` of ``refbbp verify`` give the logits refbbp explains, whatever
the model's batch dimension (symbolic, fixed, none) and with a final Softmax dropped."""

from __future__ import annotations

import numpy as np
import pytest

import refbbp
from refbbp import evaluate as ev
from refbbp.io.verify import onnxruntime_logits
from refbbp.onnx.runtime import RuntimeSession
from tests.helpers import make_model
from tests.models import build_resnet, onnx_node


def _gemm(rng, batch, softmax=False):
    nodes = [onnx_node("Flatten", ["x"], "f", axis=1),
             onnx_node("Gemm", ["f", "W", "b"], "z", transB=1)]
    if softmax:
        nodes.append(onnx_node("Softmax", ["z"], "p", axis=1))
    return make_model(nodes, {"x": (2, 3)}, ["p" if softmax else "z"],
                      {"W": rng.normal(size=(4, 6)), "b": rng.normal(size=4)}, batch=batch)


def _no_batch_axis(rng):
    nodes = [onnx_node("MatMul", ["W", "x"], "y"), onnx_node("Relu", ["y"], "z")]
    return make_model(nodes, {"x": (6,)}, ["z"], {"W": rng.normal(size=(4, 6))}, batch=None)


def _check(model, x, one_at_a_time, max_batch=4096):
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net, max_batch=max_batch)
    assert isinstance(score, RuntimeSession)
    assert score.one_at_a_time == one_at_a_time
    logits = score(x)
    assert logits.dtype == np.float64 and logits.shape == (len(x), net.n_outputs)
    np.testing.assert_allclose(logits, net.forward(x), rtol=1e-5, atol=1e-5)
    assert score.scored == len(x)
    assert score.calls == (len(x) if one_at_a_time else -(-len(x) // max_batch))
    np.testing.assert_array_equal(onnxruntime_logits(model, net, x), logits)
    return score


def test_symbolic_batch_runs_in_batches(rng):
    model, x = build_resnet(rng, channels=1, size=6, batch=7)
    for max_batch in (4096, 3, 1):
        _check(model, x, one_at_a_time=False, max_batch=max_batch)


def test_fixed_batch_dimension_runs_one_input_at_a_time(rng):
    _check(_gemm(rng, batch=1), rng.normal(size=(5, 2, 3)), one_at_a_time=True)


def test_no_batch_axis_runs_one_input_at_a_time(rng):
    score = _check(_no_batch_axis(rng), rng.normal(size=(3, 6)), one_at_a_time=True)
    assert not score.batch_axis


def test_dropped_softmax_gives_logits(rng):
    model = _gemm(rng, batch="N", softmax=True)
    with pytest.warns(refbbp.ImportNotice):
        net = refbbp.load(model)
    x = rng.normal(size=(4, 2, 3))
    logits = ev.OnnxScorer(model, net)(x)
    np.testing.assert_allclose(logits, net.forward(x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits.sum(axis=1), 1.0)         # not probabilities


def test_empty_batch(rng):
    model, _ = build_resnet(rng, channels=1, size=6, batch=2)
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    out = score(np.zeros((0,) + tuple(net.input_shape)))
    assert out.shape == (0, net.n_outputs) and score.calls == 0


def test_max_batch_must_be_positive(rng):
    model, _ = build_resnet(rng, channels=1, size=6, batch=2)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        RuntimeSession(model, refbbp.load(model), max_batch=0)
