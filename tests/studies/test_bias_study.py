"""The bias-importance study (SPEC section 6; BBp paper Table 1; companion paper B.1).

The zero-bias copy is checked against onnxruntime running the same ONNX model with its
bias initializers (conv/dense biases, BatchNorm shift and mean) set to zero by hand;
"only wx" and "only b" against per-class local linear models.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import refbbp
from refbbp.studies.bias_study import bias_importance, zero_bias_network
from tests.helpers import run_ort
from tests.models import build_cnn, build_mlp, build_resnet

# Initializers that hold biases in the test models (tests/test_decompose.py builders);
# the Clip bounds ("lo", "hi") are activation offsets, not biases, and stay.
BIAS_NAMES = {"mlp": ["b1", "b2", "b3"],
              "cnn": ["B1", "B2", "bf", "bn1_beta", "bn1_mean"],
              "resnet": ["B0", "Ba", "bf"] + [f"bn{k}_{p}" for k in ("0", "a", "b", "p")
                                              for p in ("beta", "mean")]}
BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "resnet": build_resnet}


def zero_biases_in_onnx(model, names):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(
                np.zeros_like(numpy_helper.to_array(init)), init.name))
    return out


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_zero_bias_network_matches_onnxruntime(kind, rng):
    model, x = BUILDERS[kind](rng, batch=8)
    net = refbbp.load(model)
    zero = zero_bias_network(net)
    expected = run_ort(zero_biases_in_onnx(model, BIAS_NAMES[kind]), x)
    actual = zero.forward(x)
    np.testing.assert_allclose(actual, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    # and the original is untouched and different
    assert not np.allclose(net.forward(x), actual)
    np.testing.assert_allclose(net.forward(x), run_ort(model, x), rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_zero_bias_network_structure(rng):
    model, x = build_cnn(rng)
    net = refbbp.load(model)
    biases = [n.bias.copy() for n in net.nodes]
    zero = zero_bias_network(net)
    assert len(zero.nodes) == len(net.nodes)
    for old, new, b in zip(net.nodes, zero.nodes, biases):
        np.testing.assert_array_equal(new.bias, 0.0)
        np.testing.assert_array_equal(old.bias, b)           # original unchanged
        assert all(w1 is w2 for w1, w2 in zip(old.weights, new.weights))
        assert new.activation is old.activation               # Clip offsets kept
    assert (zero.input_shape, zero.output, zero.output_name) == (
        net.input_shape, net.output, net.output_name)
    assert "every bias set to zero" in zero.notices
    # its local bias is then only the activation offsets: zero if no Clip saturates
    lin = zero.linearize(x)
    offsets = sum((lin.grads[n] * lin.trace.slopes_offsets(n)[1]).sum(1)
                  for n, node in enumerate(zero.nodes) if node.activation is not None)
    np.testing.assert_allclose(lin.bias_x, offsets, rtol=1e-12, atol=1e-14)


def test_zero_bias_network_keep(rng):
    model, x = build_mlp(rng)
    net = refbbp.load(model)
    first = next(k for k, n in enumerate(net.nodes) if n.kind == "affine")
    zero = zero_bias_network(net, keep=[first])
    np.testing.assert_array_equal(zero.nodes[first].bias, net.nodes[first].bias)
    assert all(np.all(n.bias == 0) for k, n in enumerate(zero.nodes) if k != first)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_only_wx_and_only_b_per_class(kind, rng):
    model, x = BUILDERS[kind](rng, batch=6)
    net = refbbp.load(model)
    y = rng.integers(0, net.n_outputs, len(x))
    rep = bias_importance(net, x, y, batch_size=4, progress=False)
    wx = np.zeros((len(x), net.n_outputs))
    b = np.zeros((len(x), net.n_outputs))
    for c in range(net.n_outputs):
        lin = net.linearize(x, target=c)
        wx[:, c] = (lin.w * x).reshape(len(x), -1).sum(1)
        b[:, c] = lin.bias_x
    np.testing.assert_array_equal(rep.predictions["only_wx"], np.argmax(wx, 1))
    np.testing.assert_array_equal(rep.predictions["only_b"], np.argmax(b, 1))
    np.testing.assert_array_equal(rep.predictions["full"], np.argmax(net.forward(x), 1))
    np.testing.assert_array_equal(rep.predictions["zero_bias"],
                                  np.argmax(zero_bias_network(net).forward(x), 1))
    for k, p in rep.predictions.items():
        assert rep.accuracy[k] == np.mean(p == y)
        assert rep.agreement[k] == np.mean(p == rep.predictions["full"])
    assert rep.agreement["full"] == 1.0 and rep.n == len(x)


def test_batch_size_does_not_matter(rng):
    model, x = build_resnet(rng, batch=7)
    net = refbbp.load(model)
    y = np.zeros(7, int)
    a = bias_importance(net, x, y, batch_size=1, progress=False)
    b = bias_importance(net, x, y, batch_size=100, progress=False)
    for k in a.predictions:
        np.testing.assert_array_equal(a.predictions[k], b.predictions[k])
    assert a.accuracy == b.accuracy and a.agreement == b.agreement
    # the medians of |b^x| and |W^x x| agree to rounding (BLAS blocks by batch size)
    for k, v in a.bias_abs.items():
        assert b.bias_abs[k] == pytest.approx(v, rel=1e-12)


def test_scaling_leaves_a_zero_bias_relu_network_unchanged(rng):
    """A ReLU/MaxPool network without biases is positively homogeneous (companion B.1):
    scaling the input by a > 0 does not change its predictions."""
    model, x = build_resnet(rng, batch=12)
    net = refbbp.load(model)
    y = np.argmax(zero_bias_network(net).forward(x), 1)
    rep = bias_importance(net, x, y, scales=(0.01, 0.5, 3.0, 100.0), shifts=(0.25, -1.0),
                          progress=False)
    assert rep.accuracy["zero_bias"] == 1.0
    for a, res in rep.scaled.items():
        assert res["zero_bias"] == 1.0
        assert res["full"] == np.mean(np.argmax(net.forward(x * a), 1) == y)
    for c, res in rep.shifted.items():
        assert res["full"] == np.mean(np.argmax(net.forward(x + c), 1) == y)
        assert res["zero_bias"] == np.mean(
            np.argmax(zero_bias_network(net).forward(x + c), 1) == y)
    rows, header = rep.robustness_table()
    assert len(rows) == 6 and header[0] == "input"


def test_only_b_of_a_bias_free_model_is_class_0(rng):
    """Without biases (and no saturated Clip) b^x = 0 for every class: argmax takes the
    first class."""
    model, x = build_cnn(rng, bias=False, clip=(-1e3, 1e3), batch=5)
    net = refbbp.load(model)
    rep = bias_importance(net, x, np.zeros(5, int), progress=False)
    np.testing.assert_array_equal(rep.predictions["only_b"], 0)
    np.testing.assert_array_equal(rep.predictions["only_wx"], rep.predictions["full"])
    assert rep.bias_abs["median_abs_bias"] == 0.0
    assert rep.bias_abs["median_bias_share"] == 0.0


@pytest.mark.parametrize("x_shape, y, match", [
    ((5, 6), np.zeros(4, int), "labels must be integers of shape"),   # too few labels
    ((5, 6), np.zeros(5), "labels must be integers of shape"),        # float labels
    ((6,), np.zeros(1, int), "needs a batch of inputs"),              # a single input
])
def test_bias_importance_rejects(x_shape, y, match, rng):
    model, _ = build_mlp(rng)
    net = refbbp.load(model)
    with pytest.raises(ValueError, match=match):
        bias_importance(net, np.zeros(x_shape), y)


def test_report_tables(rng):
    model, x = build_mlp(rng, batch=4)
    net = refbbp.load(model)
    rep = bias_importance(net, x, np.zeros(4, int), zero_bias=False, progress=False)
    rows, header = rep.table()
    assert [r[0] for r in rows] == ["full logits", "only W^x x", "only b^x"]
    assert "zero_bias" not in rep.accuracy


# ------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_files(tmp_path, rng):
    model, x = build_cnn(rng, batch=10)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    net = refbbp.load(model)
    y = np.argmax(net.forward(x), 1)
    y[:3] = (y[:3] + 1) % 4            # three wrong labels: accuracy 0.7
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    return str(path), str(data), x, y


def test_cli_bias_report_table(cli_files, capsys):
    from refbbp.cli import main

    model, data, _, _ = cli_files
    status = main(["bias-report", model, data, "--scales", "0.5", "2", "--shifts", "0.1"])
    text = capsys.readouterr().out
    assert status == 0
    assert "(10 labelled inputs)" in text
    for label in ("full logits", "only W^x x", "only b^x", "every bias = 0", "x * 0.5",
                  "x * 2", "x + 0.1"):
        assert label in text
    assert "full logits     0.7" in text


def test_cli_bias_report_json(cli_files, capsys):
    from refbbp.cli import main

    model, data, x, y = cli_files
    status = main(["bias-report", model, data, "--json", "--n", "6", "--scales", "3"])
    assert status == 0
    d = json.loads(capsys.readouterr().out)
    rep = bias_importance(refbbp.load(model), x[:6], y[:6], scales=(3.0,), progress=False)
    assert d["n"] == 6
    assert d["accuracy"] == rep.accuracy
    assert d["scaled"] == {"3.0": rep.scaled[3.0]}


@pytest.mark.parametrize("arrays, match", [
    (None, "no such file"),                         # DATA missing
    ({"x": "x"}, "no labels"),                      # y missing
    ({"x": "x", "y": "yf"}, "integer labels"),      # float labels
    ({"x": "x", "y": "y3"}, "integer labels"),      # too few labels
    ({"x": "x2", "y": "y"}, "x has shape"),         # wrong input shape
])
def test_cli_bias_report_bad_input(arrays, match, cli_files, tmp_path, capsys):
    from refbbp.cli import main

    model, _, x, y = cli_files
    data = tmp_path / "bad.npz"
    if arrays is not None:
        values = {"x": x, "x2": x[:, :1], "y": y, "yf": y.astype(float), "y3": y[:3]}
        np.savez(data, **{k: values[v] for k, v in arrays.items()})
    status = main(["bias-report", model, str(data)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("refbbp: error:") and match in err
