"""Hostile command lines: every subcommand answers every bad file, argument or failure
with one ``refbbp: error:`` line and exit status 2, never a traceback, a hang or a stray
read (issue 10)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import refbbp.cli as cli
from refbbp.cli import error_message, main
from refbbp.errors import MemoryBudgetError
from tests.cli.test_cli import _cnn, assert_one_line_error, run

RNG = np.random.default_rng(0xC11)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    model = _cnn(str(d / "cnn.onnx"))
    x = RNG.random((3, 1, 6, 6))
    np.save(d / "x.npy", x)
    np.savez(d / "golden.npz", x=x)
    np.savez(d / "labels_ok.npz", x=x, y=np.array([0, 1, 3]))
    np.savez(d / "labels_big.npz", x=x, y=np.array([0, 7, 3]))
    np.savez(d / "labels_neg.npz", x=x, y=np.array([0, -1, 3]))
    np.savez(d / "labels_float.npz", x=x, y=np.array([0.0, 1.0, 3.0]))
    np.savez(d / "labels_few.npz", x=x, y=np.array([0, 1]))
    (d / "empty.npz").write_bytes(b"")
    raw = (d / "golden.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[:len(raw) // 2])
    (d / "notes.txt").write_text("hello")
    (d / "folder.npy").mkdir()
    os.mkfifo(d / "fifo.npy")
    os.mkfifo(d / "fifo.onnx")
    return {"dir": d, "model": model}


def _argv(argv, hostile):
    return [a.format(model=hostile["model"], dir=hostile["dir"]) for a in argv]


CASES = [
    # the model named is not a regular file: refused before it is opened (a FIFO would
    # block, /dev/zero was read to the end)
    (["explain", "/dev/zero", "{dir}/x.npy"], ["model /dev/zero is a device"]),
    (["verify", "{dir}/fifo.onnx"], ["is a FIFO"]),
    (["oracle", "{dir}/folder.npy", "{dir}/x.npy", "-o", "{dir}/o.npz"], ["is a directory"]),
    (["evaluate", "/dev/zero", "{dir}/labels_ok.npz"], ["is a device"]),
    (["bias-report", "/dev/zero", "{dir}/labels_ok.npz"], ["is a device"]),
    # verify given a text file or /dev/null (a DecodeError traceback before)
    (["verify", "{dir}/notes.txt"], ["not a readable ONNX model"]),
    (["verify", "/dev/null"], ["/dev/null is a device"]),
    # inputs that are not regular files
    (["explain", "{model}", "{dir}/fifo.npy"], ["is a FIFO"]),
    (["explain", "{model}", "{dir}/folder.npy"], ["is a directory"]),
    (["explain", "{model}", "/dev/zero"], ["/dev/zero is a device"]),
    (["verify", "{model}", "--inputs", "/dev/zero"], ["/dev/zero is a device"]),
    (["oracle", "{model}", "{dir}/fifo.npy", "-o", "{dir}/o.npz"], ["is a FIFO"]),
    # empty or truncated archives (EOFError / BadZipFile tracebacks before)
    (["explain", "{model}", "{dir}/empty.npz"], ["not a readable .npz", "empty"]),
    (["explain", "{model}", "{dir}/trunc.npz"], ["trunc.npz: not a readable .npz"]),
    (["evaluate", "{model}", "{dir}/empty.npz"], ["data file", "not a readable .npz"]),
    (["bias-report", "{model}", "{dir}/trunc.npz"], ["not a readable .npz"]),
    # compare given a .npy, an empty or a truncated file (BadZipFile tracebacks before)
    (["compare", "{dir}/x.npy", "{dir}/golden.npz"], ["it is a .npy array"]),
    (["compare", "{dir}/golden.npz", "{dir}/empty.npz"], ["not a readable .npz"]),
    (["compare", "{dir}/trunc.npz", "{dir}/golden.npz"], ["not a readable .npz"]),
    (["compare", "{dir}/golden.npz", "{dir}/folder.npy"], ["is a directory"]),
    (["compare", "{dir}/golden.npz", "{dir}/absent.npz"], ["no such file", "absent.npz"]),
    # labels outside the model's 4 classes, negative, float, too few
    (["evaluate", "{model}", "{dir}/labels_big.npz", "--methods", "gradient"],
     ["label 7 at position 1", "0 <= label < 4"]),
    (["bias-report", "{model}", "{dir}/labels_big.npz"], ["label 7 at position 1",
                                                          "0 <= label < 4"]),
    (["bias-report", "{model}", "{dir}/labels_neg.npz"], ["label -1 at position 1"]),
    (["bias-report", "{model}", "{dir}/labels_float.npz"], ["integer labels", "float64"]),
    (["evaluate", "{model}", "{dir}/labels_few.npz"], ["integer labels", "shape (2,)"]),
    # an output folder that cannot be made
    (["explain", "{model}", "{dir}/x.npy", "--out", "{dir}/notes.txt/sub"],
     ["notes.txt/sub", "Not a directory"]),
    # found by the fuzz slice (tests/fuzz): accepted with exit 0 before
    # oracle -o a folder wrote "<folder>/.npz" or "<folder>.npz" beside it
    (["oracle", "{model}", "{dir}/x.npy", "-o", "{dir}/folder.npy"], ["is a folder"]),
    (["oracle", "{model}", "{dir}/x.npy", "-o", "{dir}/"], ["is a folder"]),
    # compare with a negative or NaN tolerance compared nothing
    (["compare", "{dir}/golden.npz", "{dir}/golden.npz", "--rtol", "-1"], ["rtol", ">= 0"]),
    (["compare", "{dir}/golden.npz", "{dir}/golden.npz", "--rtol", "nan"], ["rtol",
                                                                          "finite"]),
    (["compare", "{dir}/golden.npz", "{dir}/golden.npz", "--atol", "inf"], ["atol",
                                                                          "finite"]),
    # images divided by a zero std
    (["explain", "{model}", "{dir}/x.npy", "--std", "0"], ["std", "> 0"]),
    (["explain", "{model}", "{dir}/x.npy", "--mean", "nan"], ["mean", "finite"]),
    # three means for a one-channel model were silently ignored
    (["explain", "{model}", "{dir}/x.npy", "--mean", "0", "0", "0"], ["--mean has 3 values",
                                                                    "1 channel"]),
    # a NaN removal baseline
    (["evaluate", "{model}", "{dir}/labels_ok.npz", "--methods", "gradient", "--baseline",
      "nan"], ["baseline", "finite"]),
]


@pytest.mark.parametrize("argv, words", CASES)
def test_hostile_files_one_line_exit_2(hostile, capsys, tmp_path, argv, words):
    """Each used to be a traceback (exit 1), a hang, or an unclear numpy message."""
    argv = _argv(argv, hostile)
    if argv[0] == "explain" and "--out" not in argv:
        argv += ["--out", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("argv, words", [
    (["verify", "{model}", "--n-random", "100000000"], ["--n-random", "between 0 and 1,000,000"]),
    (["verify", "{model}", "--n-random", "-1"], ["--n-random"]),
    (["verify", "{model}", "--seed", "-1"], ["--seed"]),
    (["explain", "{model}", "{dir}/x.npy", "--figure-rows", "0"], ["--figure-rows", ">= 1"]),
    (["explain", "{model}", "{dir}/x.npy", "--size", "0", "6"], ["--size"]),
    (["explain", "{model}", "{dir}/x.npy", "--input-shape", "-1"], ["--input-shape"]),
    (["bias-report", "{model}", "{dir}/labels_ok.npz", "--batch-size", "0"], ["--batch-size"]),
    (["evaluate", "{model}", "{dir}/labels_ok.npz", "--chunk", "0"], ["--chunk"]),
    (["verify", "{model}", "--n-random", "many"], ["must be an integer"]),
    (["explain"], ["required"]),
    (["nonsense"], ["invalid choice"]),
])
def test_bad_option_values_are_one_line(hostile, capsys, argv, words):
    """--n-random 100000000 allocated all inputs at once; counts are now bounded, and
    every usage error is one ``refbbp: error:`` line (exit 2) instead of argparse's usage
    block."""
    with pytest.raises(SystemExit) as exc:
        main(_argv(argv, hostile))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refbbp: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("exc, words", [
    (MemoryError("Unable to allocate 8.00 TiB"), ["out of memory", "8.00 TiB"]),
    (MemoryError(), ["out of memory"]),
    (MemoryBudgetError("layer 'conv' needs 9 GiB"), ["layer 'conv' needs 9 GiB"]),
    (PermissionError(13, "Permission denied", "/root/secret.npy"),
     ["/root/secret.npy: Permission denied"]),
    (IsADirectoryError(21, "Is a directory", "/tmp"), ["/tmp: Is a directory"]),
    (TypeError("n_threads must be None or a positive int, got bool"), ["n_threads"]),
    (FloatingPointError("node 3 ('fc'): the forward pass overflowed"), ["node 3"]),
    (RuntimeError("something broke\nsecond line"),
     ["unexpected RuntimeError: something broke", "--debug"]),
    (KeyError("w"), ["unexpected KeyError"]),
])
def test_every_error_kind_is_one_line(hostile, capsys, monkeypatch, exc, words):
    """MemoryError, TypeError, FloatingPointError and unexpected exceptions escaped main()
    as tracebacks; OSError showed as '[Errno 13] ...'. Every one is now one line, exit 2."""
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_compare", fail)
    code, _, err = run(capsys, "compare", "a.npz", "b.npz")
    assert_one_line_error(code, err, *words)
    assert error_message(exc) in err


def test_keyboard_interrupt_exits_130_without_traceback(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_compare", interrupted)
    code, _, err = run(capsys, "compare", "a.npz", "b.npz")
    assert code == 130 and err.strip() == "refbbp: interrupted"


def test_oracle_reports_the_file_it_writes(hostile, capsys, tmp_path):
    """``oracle -o out.npy`` wrote out.npy.npz (numpy.savez appends .npz) but printed
    'wrote out.npy'. It prints the real name; -o out.npz writes exactly out.npz."""
    for name, written in (("out.npy", "out.npy.npz"), ("golden.npz", "golden.npz")):
        code, out, _ = run(capsys, "oracle", hostile["model"], hostile["dir"] / "x.npy",
                           "-o", tmp_path / name, "--rule", "sign")
        assert code == 0
        assert f"wrote {tmp_path / written}:" in out
        assert (tmp_path / written).is_file()
    assert not (tmp_path / "out.npy").exists()


def test_verify_streams_random_inputs_in_chunks(hostile, capsys, monkeypatch):
    """verify --n-random N built one (N, *input_shape) array. The inputs are now drawn and
    checked CHUNK at a time: no call sees more than CHUNK inputs, and all N are checked."""
    from refbbp.io import verify as verify_mod

    sizes = []
    real = verify_mod.bbp

    def spy(net, x, **kw):
        sizes.append(len(x))
        return real(net, x, **kw)

    monkeypatch.setattr(verify_mod, "bbp", spy)
    n = verify_mod.CHUNK + 44
    code, out, _ = run(capsys, "verify", hostile["model"], "--n-random", n, "--json",
                       "--inputs", hostile["dir"] / "x.npy")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["n_inputs"] == n + 3
    assert max(sizes) <= verify_mod.CHUNK
    assert sum(sizes) == 2 * (n + 3)                        # both rules, every input once
