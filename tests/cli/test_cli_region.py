"""``refbbp certify`` and ``refbbp explain --method ig`` (SPEC 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import refbbp
from tests.cli.test_cli import _cnn, run

RNG = np.random.default_rng(12)


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("region_cli")
    model = _cnn(str(d / "cnn.onnx"))
    x = RNG.random((2, 1, 6, 6))
    np.save(d / "x.npy", x)
    return model, d / "x.npy", x


def test_certify_table(model_and_inputs, capsys):
    model, path, x = model_and_inputs
    code, out, _ = run(capsys, "certify", model, path)
    assert code == 0
    assert out.count("x.npy[") == 2 and "L2 radius" in out and "Linf radius" in out
    net = refbbp.load(model)
    r = refbbp.region(net, x[0])
    assert f"{r.radius('l2').value:.3g}" in out


def test_certify_json_exact_and_bound(model_and_inputs, capsys):
    model, path, x = model_and_inputs
    net = refbbp.load(model)
    got = {}
    for method in ("exact", "bound"):
        code, out, _ = run(capsys, "certify", model, path, "--method", method, "--json",
                           "--baseline", "0.5")
        assert code == 0
        payload = json.loads(out)
        assert payload["method"] == method and payload["baseline"] == 0.5
        got[method] = payload["inputs"]
    for i in range(2):
        r = refbbp.region(net, x[i])
        seg = r.segment(np.full(x[i].shape, 0.5) - x[i])
        entry = got["exact"][i]
        assert entry["segment_to_baseline"]["t_hi"] == seg.t_hi
        for norm in ("l2", "linf"):
            assert entry[norm]["radius"] == r.radius(norm).value
            assert got["bound"][i][norm]["radius"] <= entry[norm]["radius"]


def test_explain_with_exact_ig(model_and_inputs, capsys, tmp_path):
    model, path, x = model_and_inputs
    code, out, _ = run(capsys, "explain", model, path, "--method", "ig", "--rule", "sign",
                       "--ig-baseline", "0.25", "--out", tmp_path)
    assert code == 0 and "IG pieces" in out
    net = refbbp.load(model)
    with np.load(tmp_path / "explanations.npz") as z:
        assert z["ig"].shape == x.shape and z["ig_pieces"].shape == (2,)
        np.testing.assert_array_equal(z["ig_baseline"], np.full(x.shape, 0.25))
        for i in range(2):
            ig = refbbp.integrated_gradients(net, x[i], np.full(x[i].shape, 0.25),
                                             target=z["target"][i])
            np.testing.assert_array_equal(z["ig"][i], ig.attributions)
            assert z["ig_pieces"][i] == ig.n_pieces
            assert z["ig_completeness_error"][i] <= 1e-9


def test_explain_ig_figure(model_and_inputs, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    model, path, _ = model_and_inputs
    code, _, _ = run(capsys, "explain", model, path, "--method", "ig", "--figure",
                     "--out", tmp_path)
    assert code == 0
    assert (tmp_path / "bbp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_certify_bad_method(model_and_inputs, capsys):
    model, path, _ = model_and_inputs
    with pytest.raises(SystemExit) as exc:
        run(capsys, "certify", model, path, "--method", "guess")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "refbbp: error:" in err and "guess" in err


def test_certify_from_a_start_node(tmp_path, capsys):
    """--start: the region over the normalisation's output z; the segment heads towards
    the baseline's z, and binding nodes are numbered as in the full model."""
    model = str(refbbp.data.model_path())
    x = refbbp.data.load_samples()[0][:1]
    np.save(tmp_path / "d.npy", x)
    code, out, _ = run(capsys, "certify", model, tmp_path / "d.npy", "--start",
                       "after-normalisation", "--method", "bound", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["start"] == 1
    net = refbbp.load(model)
    r = refbbp.region(net, x[0], start=1)
    z0 = refbbp.region(net, np.zeros_like(x[0]), start=1).x
    seg = r.segment(z0 - r.x)
    entry = payload["inputs"][0]
    assert entry["segment_to_baseline"]["t_hi"] == seg.t_hi
    assert entry["l2"]["radius"] == r.radius("l2", method="bound").value
    node = int(entry["segment_to_baseline"]["binding"].split()[1])
    assert node == r.network.origin[seg.hi.node] >= 2
