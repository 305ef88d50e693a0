"""Core timings: load, forward and local linear model of refbbp against onnxruntime and
PyTorch on three models (``benchmarks/models.py``).

Usage::

    python benchmarks/bench_core.py [--models mlp stl10 vgg11_bn] [--budget SECONDS]
                                    [--threads N]

For each model (built with fixed seeds and exported to ONNX in a temporary folder) it
prints: the time of ``refbbp.load``; the non-zeros and bytes of all layer matrices; the
median time of refbbp's float64 forward pass and of ``refbbp.linearize`` for one input;
onnxruntime's forward pass (float32, same ONNX file, one input; onnxruntime and PyTorch
get ``--threads`` threads, default 1 like refbbp's SciPy kernels); PyTorch's forward +
backward gradient pass (one input, float64 and float32) when PyTorch is installed; and
the ratios refbbp forward / ORT forward and linearize / ORT forward, measured in the same
run. Times are medians of repeats after one warm-up call (``time.perf_counter``); the
warm-up of ``linearize`` also builds the transposed matrices the reverse pass caches,
reported separately as "1st lin". As a check, refbbp's gradient is compared with
PyTorch's float64 gradient ("w vs torch", max relative difference) and its logits with
onnxruntime's.
"""

from __future__ import annotations

import argparse
import copy
from functools import partial
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

import refbbp  # noqa: E402

torch = models.torch


def timeit(fn, *, budget=2.0, min_repeat=3, max_repeat=50):
    """Median wall time (s) of ``fn()`` after one warm-up call.

    Repeats until ``max_repeat`` calls or ``budget`` seconds, but at least ``min_repeat``.
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeat or (len(times) < max_repeat
                                      and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_grad_pass(module, x, target):
    """Forward + backward for one input: the gradient of logit ``target`` w.r.t. x."""
    xt = x.clone().requires_grad_(True)
    out = module(xt[None])
    out[0, target].backward()
    return xt.grad


def bench_model(name, out_dir, budget, rng, threads=1):
    path, module, shape = models.build(name, out_dir)
    row = {"model": f"{name} {'x'.join(map(str, shape))}"}

    t0 = time.perf_counter()
    net = refbbp.load(path)
    row["load s"] = time.perf_counter() - t0
    row["nnz"] = sum(n.nnz for n in net.nodes)
    row["bytes"] = sum(n.nbytes for n in net.nodes)

    x = rng.standard_normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)

    t0 = time.perf_counter()
    lin = refbbp.linearize(net, x64)
    row["1st lin ms"] = 1e3 * (time.perf_counter() - t0)
    target = int(np.argmax(lin.logits))
    row["refbbp fwd ms"] = 1e3 * timeit(partial(net.forward, x64), budget=budget)
    row["linearize ms"] = 1e3 * timeit(partial(refbbp.linearize, net, x64), budget=budget)

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x[None]}
    y_ort = sess.run(None, feed)[0][0]
    row["ORT fwd ms"] = 1e3 * timeit(lambda: sess.run(None, feed), budget=budget)
    scale = np.abs(y_ort).max()
    row["logits vs ORT"] = float(np.max(np.abs(lin.logits - y_ort)) / scale)

    if module is not None:
        m64 = copy.deepcopy(module).double()
        xt32, xt64 = torch.from_numpy(x), torch.from_numpy(x64)
        g64 = torch_grad_pass(m64, xt64, target).numpy()
        row["torch f+b f64 ms"] = 1e3 * timeit(lambda: torch_grad_pass(m64, xt64, target),
                                               budget=budget)
        row["torch f+b f32 ms"] = 1e3 * timeit(lambda: torch_grad_pass(module, xt32, target),
                                               budget=budget)
        row["w vs torch"] = float(np.max(np.abs(lin.w - g64)) / np.abs(g64).max())
    row["fwd/ORT"] = row["refbbp fwd ms"] / row["ORT fwd ms"]
    row["lin/ORT"] = row["linearize ms"] / row["ORT fwd ms"]
    row["lin check"] = lin.check()
    del net, lin
    return row


COLUMNS = [("model", "{}"), ("load s", "{:.2f}"), ("nnz", "{:,}"), ("bytes", None),
           ("refbbp fwd ms", "{:.2f}"), ("linearize ms", "{:.2f}"), ("1st lin ms", "{:.0f}"),
           ("ORT fwd ms", "{:.3f}"), ("torch f+b f64 ms", "{:.2f}"),
           ("torch f+b f32 ms", "{:.2f}"), ("fwd/ORT", "{:.0f}"), ("lin/ORT", "{:.0f}"),
           ("logits vs ORT", "{:.1e}"), ("w vs torch", "{:.1e}"), ("lin check", "{:.1e}")]


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_table(rows):
    head = [c for c, _ in COLUMNS]
    body = []
    for r in rows:
        line = []
        for c, fmt in COLUMNS:
            v = r.get(c)
            if v is None:
                line.append("-")
            elif c == "bytes":
                line.append(_fmt_bytes(v))
            else:
                line.append(fmt.format(v))
        body.append(line)
    return models.render_table(head, body)


def header(threads):
    note = "" if models.torch is not None else \
        " (no torch: no torch columns, models written directly)"
    return (models.machine_header() + note + "\n"
            "times: median of repeats after one warm-up (one input, batch 1); refbbp float64 "
            "(SciPy sparse, single-threaded), onnxruntime float32; onnxruntime and torch "
            + (f"limited to {threads} thread(s)" if threads else "with default threads"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(models.MODELS),
                    choices=list(models.MODELS))
    ap.add_argument("--budget", type=float, default=2.0,
                    help="seconds of repeats per timing (at least 3 repeats)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for onnxruntime and torch (default 1, as refbbp; 0 = "
                         "their defaults)")
    args = ap.parse_args(argv)
    if args.threads and torch is not None:
        torch.set_num_threads(args.threads)
    print(header(args.threads), flush=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_model(name, tmp, args.budget, rng, args.threads))
            print(f"  done {name}", file=sys.stderr, flush=True)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
