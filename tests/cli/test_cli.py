"""The ``refbbp`` command line: every subcommand's exit status and output, and a clear
one-line error (no traceback unless ``--debug``) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from refbbp.cli import main
from refbbp.io.oracle import beta_key
from tests.helpers import make_model, make_node

RNG = np.random.default_rng(0x5EED)


def _cnn(path):
    """A small CNN: Conv(pad 1) + Relu + MaxPool + Gemm, input (1, 6, 6)."""
    nodes = [make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             make_node("Relu", ["c"], ["r"]),
             make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             make_node("Flatten", ["p"], ["f"]),
             make_node("Gemm", ["f", "G", "C"], ["y"], transB=1)]
    init = {"W": RNG.normal(size=(3, 1, 3, 3)), "B": RNG.normal(size=3),
            "G": RNG.normal(size=(4, 27)), "C": RNG.normal(size=4)}
    onnx.save(make_model(nodes, {"x": (1, 6, 6)}, ["y"], init), path)
    return path


def _sigmoid(path):
    nodes = [make_node("Gemm", ["x", "G", "C"], ["h"], transB=1),
             make_node("Sigmoid", ["h"], ["s"], name="the_sigmoid"),
             make_node("Gemm", ["s", "G2", "C2"], ["y"], transB=1)]
    init = {"G": RNG.normal(size=(5, 4)), "C": RNG.normal(size=5),
            "G2": RNG.normal(size=(3, 5)), "C2": RNG.normal(size=3)}
    onnx.save(make_model(nodes, {"x": (4,)}, ["y"], init), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = _cnn(str(d / "cnn.onnx"))
    x = RNG.random((3, 1, 6, 6))
    np.save(d / "x.npy", x)
    np.save(d / "one.npy", x[0])
    np.savez(d / "x.npz", x=x)
    np.save(d / "wrong.npy", RNG.random((3, 2, 6, 6)))
    bad = x.copy()
    bad[1, 0, 2, 2] = np.nan
    np.save(d / "nan.npy", bad)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (d / "notes.txt").write_text("hello")
    return {"dir": d, "model": model, "x": x, "sigmoid": _sigmoid(str(d / "sig.onnx"))}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("refbbp: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------------- explain
@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_explain_writes_outputs_and_passes(files, capsys, tmp_path, fmt):
    code, out, _ = run(capsys, "explain", files["model"], files["dir"] / "x.npy",
                       "--out", tmp_path, "--format", fmt)
    assert code == 0
    assert "all within 1e-9" in out
    assert out.count("x.npy[") == 3
    if fmt == "npz":
        with np.load(tmp_path / "explanations.npz") as z:
            for rule in ("sign", "deviation"):
                beta = z[beta_key(rule, 1.0)]
                assert beta.shape == (3, 1, 6, 6)
                np.testing.assert_allclose(beta.sum(axis=(1, 2, 3)), z["bias_x"], rtol=1e-9,
                                           atol=1e-12)
    else:
        payload = json.loads((tmp_path / "explanations.json").read_text())
        assert len(payload["inputs"]) == 3
        b = payload["inputs"][0]
        assert abs(np.sum(b["beta"]["sign"]) - b["bias_x"]) <= 1e-9 * (1 + abs(b["bias_x"]))


def test_explain_top2_one_rule_and_temperature(files, capsys, tmp_path):
    code, out, _ = run(capsys, "explain", files["model"], files["dir"] / "one.npy",
                       "--target", "top2", "--rule", "sign", "--temperature", "inf",
                       "--out", tmp_path)
    assert code == 0
    assert "deviation" not in out and "temperature inf" in out
    with np.load(tmp_path / "explanations.npz") as z:
        t = z["target"][0]
        assert sorted(t) [0] == -1 and sorted(t)[-1] == 1
        assert beta_key("sign", float("inf")) in z.files


def test_explain_figure(files, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, _ = run(capsys, "explain", files["model"], files["dir"] / "x.npz",
                       "--figure", "--out", tmp_path)
    assert code == 0
    png = tmp_path / "bbp.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_image_input(files, capsys, tmp_path):
    pil = pytest.importorskip("PIL.Image")
    img = (RNG.random((6, 6)) * 255).astype(np.uint8)
    pil.fromarray(img).save(tmp_path / "digit.png")
    code, out, _ = run(capsys, "explain", files["model"], tmp_path / "digit.png",
                       "--out", tmp_path, "--mean", "0.5", "--std", "0.25")
    assert code == 0
    with np.load(tmp_path / "explanations.npz") as z:
        np.testing.assert_allclose(z["x"][0, 0], (img / 255.0 - 0.5) / 0.25)


@pytest.mark.parametrize("argv, words", [
    # a missing input file
    (["explain", "{model}", "{dir}/absent.npy"], ["absent.npy"]),
    # a missing model file
    (["explain", "{dir}/absent.onnx", "{dir}/x.npy"], ["absent.onnx"]),
    # an input of the wrong shape: the message names both shapes
    (["explain", "{model}", "{dir}/wrong.npy"], ["(3, 2, 6, 6)", "(1, 6, 6)"]),
    # NaN in the input
    (["explain", "{model}", "{dir}/nan.npy"], ["NaN"]),
    # an image file that cannot be decoded
    (["explain", "{model}", "{dir}/broken.png"], ["broken.png", "not a readable image"]),
    # an input type refbbp does not read
    (["explain", "{model}", "{dir}/notes.txt"], [".txt"]),
    # a model that is not piecewise linear
    (["explain", "{sigmoid}", "{dir}/x.npy"], ["Sigmoid", "the_sigmoid", "not piecewise linear"]),
    # not an ONNX file at all
    (["explain", "{dir}/notes.txt", "{dir}/x.npy"], ["not a readable ONNX model"]),
    # a target class out of range
    (["explain", "{model}", "{dir}/x.npy", "--target", "7"], ["out of range"]),
])
def test_bad_input_is_one_clear_line(files, capsys, tmp_path, argv, words):
    argv = [a.format(model=files["model"], dir=files["dir"], sigmoid=files["sigmoid"])
            for a in argv] + ["--out", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)


def test_debug_shows_the_traceback(files, tmp_path):
    from refbbp.errors import InputShapeError

    with pytest.raises(InputShapeError):
        main(["--debug", "explain", files["model"], str(files["dir"] / "wrong.npy"),
              "--out", str(tmp_path)])


def test_bad_option_value_exits_with_usage(files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", files["model"], "x.npy", "--temperature", "-1"])
    assert exc.value.code == 2
    assert "temperature" in capsys.readouterr().err


# -------------------------------------------------------------------------- verify
def test_verify_ok_table_and_json(files, capsys):
    code, out, _ = run(capsys, "verify", files["model"], "--inputs", files["dir"] / "x.npy",
                       "--n-random", 2)
    assert code == 0
    assert "verified: OK" in out and "forward vs onnxruntime" in out and "Conv" in out
    code, out, _ = run(capsys, "verify", files["model"], "--n-random", 3, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["piecewise_linear"]
    assert report["n_inputs"] == 3 and report["forward_error"] <= 1
    assert report["linear_error"] <= 1e-9 and set(report["bbp_error"]) == {"sign", "deviation"}
    assert [n["kind"] for n in report["nodes"]][0] == "input"


def test_verify_not_piecewise_linear(files, capsys):
    code, out, _ = run(capsys, "verify", files["sigmoid"])
    assert code == 1
    assert "NOT piecewise linear" in out and "the_sigmoid" in out
    code, out, _ = run(capsys, "verify", files["sigmoid"], "--json")
    report = json.loads(out)
    assert code == 1 and report["piecewise_linear"] is False
    assert report["nonlinear_nodes"] == [["Sigmoid", "the_sigmoid"]]


def test_verify_needs_inputs(files, capsys):
    code, _, err = run(capsys, "verify", files["model"], "--n-random", 0)
    assert_one_line_error(code, err, "--n-random")


# ------------------------------------------------------------------ oracle/compare
@pytest.fixture(scope="module")
def golden(files, tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "golden.npz"
    code = main(["oracle", files["model"], str(files["dir"] / "x.npy"), "-o", str(path),
                 "--temperatures", "0", "1", "inf", "--layers"])
    assert code == 0
    return path


def test_oracle_fields_and_metadata(golden, files):
    with np.load(golden) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["format"] == "refbbp-oracle" and meta["format_version"] == 2
        assert meta["temperatures"] == [0.0, 1.0, float("inf")]
        assert len(meta["model"]["sha256"]) == 64
        assert sorted(meta["fields"]) == sorted(k for k in z.files if k != "meta")
        for rule in ("sign", "deviation"):
            for t in (0.0, 1.0, float("inf")):
                beta = z[beta_key(rule, t)]
                np.testing.assert_allclose(beta.sum(axis=(1, 2, 3)), z["bias_x"], rtol=1e-9)
        np.testing.assert_allclose(
            (z["w"] * z["x"]).sum(axis=(1, 2, 3)) + z["bias_x"], z["value"], rtol=1e-9)
        assert "node/0/h" in z.files and "node/1/beta_in/sign/T=1.0" in z.files


def test_compare_identical_passes(golden, capsys):
    code, out, _ = run(capsys, "compare", golden, golden)
    assert code == 0 and "PASS" in out


def test_compare_detects_a_perturbed_field_and_a_missing_one(golden, capsys, tmp_path):
    with np.load(golden) as z:
        fields = {k: z[k] for k in z.files}
    key = beta_key("sign", 1.0)
    fields[key] = fields[key] + 1e-3
    del fields["bias_x_all"]
    cand = tmp_path / "cand.npz"
    np.savez(cand, **fields)
    code, out, _ = run(capsys, "compare", golden, cand, "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    by = {r["field"]: r for r in report["fields"]}
    assert not by[key]["ok"] and by[key]["max_abs"] == pytest.approx(1e-3, rel=1e-6)
    assert not by["bias_x_all"]["ok"] and "missing" in by["bias_x_all"]["why"]
    assert by["w"]["ok"]
    # a loose tolerance accepts the perturbation (but never the missing field)
    code, out, _ = run(capsys, "compare", golden, cand, "--atol", "1e-2")
    assert code == 1 and "missing" in out


def test_compare_missing_file(golden, capsys, tmp_path):
    code, _, err = run(capsys, "compare", golden, tmp_path / "nope.npz")
    assert_one_line_error(code, err, "nope.npz")


# ------------------------------------------------------------------- demo, entry
def test_demo(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", tmp_path / "demo", "--figure-rows", "2")
    assert code == 0
    assert "all within 1e-9" in out and "digits_cnn.onnx" in out
    assert (tmp_path / "demo" / "explanations.npz").exists()
    assert f"wrote {tmp_path / 'demo' / 'explanations.npz'}" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_python_m_refbbp_entry_point(files):
    res = subprocess.run([sys.executable, "-m", "refbbp", "verify", files["model"],
                          "--n-random", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "verified: OK" in res.stdout
