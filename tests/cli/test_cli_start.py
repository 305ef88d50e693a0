"""``--start NODE`` on ``refbbp explain`` and ``refbbp oracle`` (SPEC section 8): the
outputs are over the start node's output and say which node it is."""

from __future__ import annotations

import json

import numpy as np

import refbbp
from refbbp import data
from refbbp.cli import main


def _inputs(tmp_path):
    x = data.load_samples()[0][:3]
    path = tmp_path / "x.npy"
    np.save(path, x)
    return x, str(path)


def test_explain_start_after_normalisation(tmp_path, capsys):
    x, xpath = _inputs(tmp_path)
    model = str(data.model_path())
    out = tmp_path / "out"
    status = main(["explain", model, xpath, "--start", "after-normalisation", "--out",
                   str(out), "--rule", "sign", "--figure"])
    text = capsys.readouterr().out
    assert status == 0
    assert "from node 1 ('/input_norm/Sub+/input_norm/Div')" in text
    assert (out / "bbp.png").exists()
    with np.load(out / "explanations.npz") as z:
        meta = json.loads(str(z["meta"][()]))
        net = refbbp.load(model)
        att = refbbp.bbp(net, x, start="after-normalisation")
        # per input (as the CLI runs) and batched agree to the last bits of a BLAS sum
        scale = np.abs(att.beta).max()
        np.testing.assert_allclose(z["beta/sign/T=1.0"], att.beta, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(z["bias_x"], att.bias_x, rtol=1e-12)
        np.testing.assert_array_equal(z["x"], net.trace(x).values[1].reshape(x.shape))
    assert meta["start"] == {"index": 1, "name": "/input_norm/Sub+/input_norm/Div"}


def test_oracle_start_and_without(tmp_path, capsys):
    x, xpath = _inputs(tmp_path)
    model = str(data.model_path())
    assert main(["oracle", model, xpath, "--start", "3", "-o", str(tmp_path / "s")]) == 0
    assert "from node 3 ('/pool1/MaxPool'), x holds its output" in capsys.readouterr().out
    assert main(["oracle", model, xpath, "-o", str(tmp_path / "f")]) == 0
    with np.load(tmp_path / "s.npz") as s, np.load(tmp_path / "f.npz") as f:
        assert json.loads(str(s["meta"][()]))["start"]["index"] == 3
        assert json.loads(str(f["meta"][()]))["start"] == {"index": 0, "name": "image"}
        assert s["w"].shape == (3, 8, 14, 14) and f["w"].shape == x.shape
        np.testing.assert_allclose(s["value"], f["value"], rtol=1e-12, atol=0)


def test_explain_start_not_a_cut_is_one_line(tmp_path, capsys):
    _, xpath = _inputs(tmp_path)
    status = main(["explain", str(data.model_path()), xpath, "--start", "4", "--out",
                   str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("refbbp: error: start=4: node 4 ('/res_conv1/Conv+/Relu_1') is "
                          "not a cut")


def test_explain_start_inside_the_network_writes_no_figure(tmp_path, capsys):
    """From a node whose output is not image-shaped (node 2, Conv+Relu 8x28x28) there is
    no figure to draw over the images: a note says so and the arrays are written."""
    _, xpath = _inputs(tmp_path)
    out = tmp_path / "out"
    status = main(["explain", str(data.model_path()), xpath, "--start", "2", "--out",
                   str(out), "--rule", "sign", "--figure"])
    captured = capsys.readouterr()
    assert status == 0
    assert "note: no figure: beta over node 2" in captured.err
    assert (out / "explanations.npz").exists() and not (out / "bbp.png").exists()
