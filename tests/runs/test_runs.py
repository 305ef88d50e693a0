"""The dataset runner (refbbp.runs) in this process: same numbers as the single-process
commands, resume, bad inputs, check-run, refusals."""

from __future__ import annotations

import builtins
import json
import os

import numpy as np
import pytest

import refbbp
from refbbp import data
from refbbp.cli import main
from refbbp.errors import RunError
from refbbp.evaluate import evaluate
from refbbp.io.oracle import read_oracle
from refbbp.runs import check_run, open_run, run
from refbbp.runs import runner as runner_module
from refbbp.studies.bias_study import bias_importance

MODEL = str(data.model_path())
X, Y = data.load_samples()
X, Y = X[:24], Y[:24]


def same_rows(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture()
def hook(monkeypatch):
    """Set runner_module._before_chunk for one test."""
    def set_hook(f):
        monkeypatch.setattr(runner_module, "_before_chunk", f)
    return set_hook


def test_bias_report_run_equals_bias_importance(tmp_path):
    r = run("bias-report", MODEL, X, tmp_path / "r", labels=Y, chunk_size=5, progress=False)
    rep = bias_importance(refbbp.load(MODEL), X, Y, progress=False)
    assert r.summary == json.loads(json.dumps(rep.to_dict()))
    assert check_run(tmp_path / "r") == []
    assert len([f for f in os.listdir(tmp_path / "r") if f.endswith(".npz")]) == 5


def test_explain_run_equals_explain_command(tmp_path, capsys):
    """With the whole set in one chunk, the run's fields are the command's, bit for bit."""
    np.save(tmp_path / "x.npy", X)
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--out", str(tmp_path / "cmd"),
                 "--rule", "sign"]) == 0
    _, golden = read_oracle(tmp_path / "cmd" / "explanations.npz")
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--out-dir",
                 str(tmp_path / "run"), "--rule", "sign", "--chunk-size", "64"]) == 0
    rows = open_run(tmp_path / "run").rows()
    for k, v in golden.items():
        assert np.array_equal(rows[k], v), k
    # smaller chunks: the same numbers up to the last bits of batched BLAS passes
    r = run("explain", MODEL, tmp_path / "x.npy", tmp_path / "run7", rule="sign",
            chunk_size=7, progress=False)
    for k, v in golden.items():
        np.testing.assert_allclose(r.rows()[k], v, rtol=1e-12, atol=1e-12)
    capsys.readouterr()


def test_evaluate_run_equals_evaluate(tmp_path):
    """Two stages (maps, then scans with the whole set's noise partners) give
    evaluate()'s metrics exactly when chunks are whole groups."""
    methods = ["gradient", "random"]
    r = run("evaluate", MODEL, X[:16], tmp_path / "r", methods=methods, group=4,
            chunk_size=8, progress=False)
    ref = evaluate(MODEL, X[:16], methods, group=4)
    res = r.task.evaluation(r.rows(), r)
    assert np.array_equal(res.predicted, ref.predicted)
    assert np.array_equal(res.noise_source, ref.noise_source)
    for m in methods:
        same_rows(res.metrics[m], ref.metrics[m])
    assert os.path.isfile(tmp_path / "r" / "evaluation.csv")


def test_evaluate_run_with_options_equals_evaluate(tmp_path, hook):
    """The evaluation options through the runner: the dataset-mean baseline (computed
    once by the driver, recorded), random ties (the whole set's keys, drawn in turn, also
    on resume), never-flip exclusion and a noise pool of 2 (partners fixed up front) give
    evaluate()'s metrics and configuration exactly."""
    methods = ["gradient", "random"]
    opts = dict(baseline="mean", ties="random", never_flip="exclude", noise_pool=2, seed=3)
    ref = evaluate(MODEL, X[:16], methods, group=4, **opts)
    stops = []

    def stop_in_scans(job):
        if job["stage"] == "scans" and job["chunk"] == 1 and not stops:
            stops.append(job["chunk"])
            raise KeyboardInterrupt
    hook(stop_in_scans)
    with pytest.raises(KeyboardInterrupt):
        run("evaluate", MODEL, X[:16], tmp_path / "r", methods=methods, group=4,
            chunk_size=4, progress=False, **opts)
    r = run("evaluate", MODEL, X[:16], tmp_path / "r", methods=methods, group=4,
            chunk_size=4, resume=True, progress=False, **opts)
    res = r.task.evaluation(r.rows(), r)
    assert np.array_equal(res.predicted, ref.predicted)
    assert np.array_equal(res.noise_source, ref.noise_source)
    for m in methods:
        same_rows(res.metrics[m], ref.metrics[m])
    assert {k: v for k, v in res.config.items() if k != "model"} == \
        {k: v for k, v in ref.config.items() if k != "model"}
    options = json.loads((tmp_path / "r" / "manifest.json").read_text())["options"]
    assert options["baseline_values"] == ref.config["baseline_values"]
    assert {k: options[k] for k in opts} == opts
    # a per-image baseline is computed per chunk: the blurred copies of evaluate()
    r = run("evaluate", MODEL, X[:8], tmp_path / "b", methods=["gradient"], group=4,
            chunk_size=4, baseline="blur:1.5", progress=False)
    ref = evaluate(MODEL, X[:8], ["gradient"], group=4, baseline="blur:1.5")
    same_rows(r.task.evaluation(r.rows(), r).metrics["gradient"], ref.metrics["gradient"])


def test_evaluate_run_refuses_bad_options_up_front(tmp_path):
    with pytest.raises(ValueError, match="noise_pool"):
        run("evaluate", MODEL, X[:4], tmp_path / "r", noise_pool=4, progress=False)
    with pytest.raises(ValueError, match="ties"):
        run("evaluate", MODEL, X[:4], tmp_path / "r", ties="left", progress=False)
    with pytest.raises(ValueError, match="baseline"):
        run("evaluate", MODEL, X[:4], tmp_path / "r", baseline="median", progress=False)
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("start", [None, "after-normalisation"])
def test_bias_report_run_equals_bias_importance_with_start(tmp_path, start):
    """The sharded bias report keeps the rows from z and the argmax-of-b counts."""
    r = run("bias-report", MODEL, X, tmp_path / "r", labels=Y, chunk_size=7, start=start,
            scales=[0.5], progress=False)
    rep = bias_importance(refbbp.load(MODEL), X, Y, progress=False, start=start,
                          scales=[0.5])
    assert r.summary == json.loads(json.dumps(rep.to_dict()))
    assert ("only_wz" in r.summary["accuracy"]) == (start is not None)
    assert sum(r.summary["argmax_b"]["x"]) == len(X)
    reopened = open_run(tmp_path / "r")
    assert reopened.summary == r.summary
    with pytest.raises(RunError, match="summary"):
        reopened.task.report(reopened.rows())


def test_explain_and_oracle_runs_with_start_and_ig(tmp_path, capsys):
    """explain --start --method ig and oracle --start over a data set write the
    command's fields (one chunk: bit for bit) and the start node in the oracle's meta."""
    np.save(tmp_path / "x.npy", X[:3])
    args = ["--rule", "sign", "--start", "after-normalisation", "--method", "ig",
            "--ig-baseline", "0.5"]
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--out", str(tmp_path / "cmd"),
                 *args]) == 0
    _, golden = read_oracle(tmp_path / "cmd" / "explanations.npz")
    assert main(["explain", MODEL, str(tmp_path / "x.npy"), "--out-dir",
                 str(tmp_path / "run"), *args]) == 0
    rows = open_run(tmp_path / "run").rows()
    assert "ig" in golden
    for k, v in golden.items():
        assert np.array_equal(rows[k], v), k
    assert open_run(tmp_path / "run").summary["ig_completeness_error"] <= 1e-9
    for out, extra in (("g", []), ("o", ["--out-dir", str(tmp_path / "orun")])):
        assert main(["oracle", MODEL, str(tmp_path / "x.npy"), "-o", str(tmp_path / out),
                     "--start", "3", *extra]) == 0
    meta_g, golden = read_oracle(tmp_path / "g.npz")
    meta_o, got = read_oracle(tmp_path / "o.npz")
    same_rows(got, golden)
    assert meta_o["start"] == meta_g["start"] and meta_g["start"]["index"] == 3
    assert meta_o["input_shape"] == meta_g["input_shape"]
    capsys.readouterr()


def test_run_prints_the_commands_tables(tmp_path, capsys):
    """evaluate and bias-report with --out-dir print the command's tables (they used to
    print the summary as a key/JSON table)."""
    np.savez(tmp_path / "d.npz", x=X[:8], y=Y[:8])
    for cmd in (["bias-report", MODEL, str(tmp_path / "d.npz"), "--start", "3"],
                ["evaluate", MODEL, str(tmp_path / "d.npz"), "--methods", "gradient",
                 "random", "--noise-pool", "2", "--baseline", "mean"]):
        assert main(cmd) == 0
        plain = capsys.readouterr().out.splitlines()
        assert main([*cmd, "--out-dir", str(tmp_path / cmd[0])]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"run: {tmp_path / cmd[0]}")
        assert [ln for ln in lines[1:] if not ln.startswith("wrote ")] == plain


def test_verify_and_oracle_runs(tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    assert main(["verify", MODEL, "--inputs", str(tmp_path / "x.npy"), "--out-dir",
                 str(tmp_path / "v"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["n_inputs"] == len(X) and out["summary"]["ok"]
    assert main(["oracle", MODEL, str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npz"),
                 "--out-dir", str(tmp_path / "o"), "--chunk-size", "64"]) == 0
    assert main(["oracle", MODEL, str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "g.npz")]) == 0
    _, golden = read_oracle(tmp_path / "g.npz")
    _, got = read_oracle(tmp_path / "o.npz")
    same_rows(got, golden)


def test_resume_after_interruption_recomputes_nothing_done(tmp_path, hook):
    """A run stopped after 2 shards, resumed, equals an uninterrupted run, and computes
    only the chunks that were not done."""
    full = run("explain", MODEL, X, tmp_path / "full", rule="sign", chunk_size=5,
               progress=False).rows()
    seen = []

    def stop_at_third(job):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(job["chunk"])
    hook(stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        run("explain", MODEL, X, tmp_path / "r", rule="sign", chunk_size=5, progress=False)
    assert check_run(tmp_path / "r") != []
    with pytest.raises(RunError, match="--resume"):
        run("explain", MODEL, X, tmp_path / "r", rule="sign", chunk_size=5, progress=False)
    computed = []
    hook(lambda job: computed.append(job["chunk"]))
    r = run("explain", MODEL, X, tmp_path / "r", rule="sign", chunk_size=5, resume=True,
            progress=False)
    assert computed == [2, 3, 4]
    same_rows(r.rows(), full)
    assert check_run(tmp_path / "r") == []


def test_resume_refuses_other_options_or_model(tmp_path):
    run("bias-report", MODEL, X, tmp_path / "r", labels=Y, chunk_size=8, progress=False)
    with pytest.raises(RunError, match=r"options\.scales"):
        run("bias-report", MODEL, X, tmp_path / "r", labels=Y, chunk_size=8, scales=[2.0],
            resume=True, progress=False)
    with pytest.raises(RunError, match=r"model\.sha256"):
        run("bias-report", data.model_path(bias=False), X, tmp_path / "r", labels=Y,
            chunk_size=8, resume=True, progress=False)


def test_bad_input_is_reported_and_the_rest_completes(tmp_path, capsys):
    x = X.copy()
    x[3, 0, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    code = main(["explain", MODEL, str(tmp_path / "x.npy"), "--out-dir",
                 str(tmp_path / "r"), "--rule", "sign", "--chunk-size", "8"])
    out = capsys.readouterr().out
    assert code == 1 and "failed: input 3" in out and "NaN" in out
    r = open_run(tmp_path / "r")
    assert list(r.failed) == [3] and "NaN" in r.failed[3]["error"]
    assert list(r.rows()["index"]) == [i for i in range(len(x)) if i != 3]
    assert check_run(tmp_path / "r") == []


def test_check_run_detects_missing_and_altered_shards(tmp_path, capsys):
    run("bias-report", MODEL, X, tmp_path / "r", labels=Y, chunk_size=8, progress=False)
    assert main(["check-run", str(tmp_path / "r")]) == 0
    shard = tmp_path / "r" / "main-000001.npz"
    raw = bytearray(shard.read_bytes())
    raw[-30] ^= 1
    shard.write_bytes(bytes(raw))
    os.remove(tmp_path / "r" / "main-000002.npz")
    assert main(["check-run", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "main-000001.npz: altered" in out and "main-000002.npz: missing" in out
    assert main(["check-run", str(tmp_path)]) == 2


def test_workers_without_dask_says_how_to_install(tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_dask)
    np.save(tmp_path / "x.npy", X)
    code = main(["explain", MODEL, str(tmp_path / "x.npy"), "--out-dir",
                 str(tmp_path / "r"), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "refbbp[dask]"' in err and err.count("\n") == 1


def test_image_folder_and_zarr_sources(tmp_path):
    pytest.importorskip("PIL")
    zarr = pytest.importorskip("zarr")
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((X[i, 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not a png")
    r = run("explain", MODEL, folder, tmp_path / "r", rule="sign", chunk_size=2,
            progress=False)
    assert list(r.failed) == [3] and "3.png" in r.failed[3]["input"]
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("x", data=X)
    g.create_array("y", data=Y)
    r = run("bias-report", MODEL, tmp_path / "d.zarr", tmp_path / "z", chunk_size=10,
            progress=False)
    assert r.summary["n"] == len(X)
