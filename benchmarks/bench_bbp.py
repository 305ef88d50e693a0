"""Bias backpropagation timings: ``refbbp.bbp`` against the work around it and against a
straightforward vectorised implementation of the same rule, on three models
(``benchmarks/models.py``: an MNIST MLP, the BBp paper's STL-10 network, CIFAR VGG-11
with BatchNorm).

Usage::

    python benchmarks/bench_bbp.py [--models mlp stl10 vgg11_bn] [--rules sign deviation]
                                   [--budget SECONDS] [--baseline-repeats N]

For each model and rule (T = 1, one input, the predicted class) it prints, all measured
in the same run (best of repeats after one warm-up call, ``time.perf_counter``):

* ``bbp 1t`` / ``bbp 2t``: ``refbbp.bbp`` with 1 and 2 kernel threads, end to end (forward,
  gradient, BBp), and ``bits``: whether the two give bitwise identical beta and per-node
  beta_in (``np.array_equal``);
* ``prop 1t`` / ``prop 2t``: the BBp part alone (``Attribution.timings["propagate"]``), and
  ``prop Tinf 1t`` the same with T = inf, which computes no exponential;
* (a) ``linearize``: ``refbbp.linearize`` on the same input (forward + gradient);
* (b) ``ORT fwd``: an onnxruntime forward pass (float32, 1 thread);
* (c) ``user 1t`` / ``user 2t``: the same rule written the way a user would, in PyTorch
  float64 with ``unfold``/``fold`` (forward and autograd gradient included), checked here to
  give the same beta (``user diff``: max |difference| / max |beta|), with torch limited
  to 1 and 2 threads;
  ``user dist``: its distribution part alone (after its forward and gradients);
* ``torch f+b``: a PyTorch forward + backward gradient pass (float32, 1 thread);
* ratios: ``user/bbp`` (end to end, 1 thread each; and 2 threads each), ``dist/prop``
  (the BBp parts alone: user distribution / refbbp propagate), ``bbp/lin``,
  ``bbp/ORT``, ``bbp/torch f+b``.

A second table shows where the time of ``bbp`` goes (1 thread): linearize, then each
node's BBp step (kernel plus the Python around it) for the largest nodes.

The user implementation does not handle the fallbacks of SPEC 3.6 (rows without a
non-zero component); the check asserts that refbbp reported no fallback for the input,
so the two compute the same thing.
"""

from __future__ import annotations

import argparse
import copy
from functools import partial
import os
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
if torch is not None:
    from torch_bbp import torch_grad_pass, user_bbp  # noqa: E402


def timeit(fn, *, budget=2.0, min_repeat=3, max_repeat=30):
    """Best wall time (s) of repeated ``fn()`` calls after one warm-up call; also the
    warm-up result. The minimum, not the median: on a shared machine the other jobs only
    ever add time, so the minimum is the best estimate of the code's own cost."""
    out = fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeat or (len(times) < max_repeat
                                      and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


# ------------------------------------------------------- (c) the user's version
# user_bbp and torch_grad_pass live in torch_bbp.py (shared with bench_imagenet.py).


# ------------------------------------------------------------------ one model
def bench_model(name, out_dir, rules, budget, baseline_repeats, rng):
    path, module, shape = models.build(name, out_dir)
    net = refbbp.load(path)
    x = rng.standard_normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)
    t0 = time.perf_counter()
    refbbp.bbp(net, x64, n_threads=1)                    # builds the caches
    first_s = time.perf_counter() - t0
    rows, phases = [], []

    lin_s, lin = timeit(lambda: net.linearize(x64), budget=budget)
    target = int(np.argmax(lin.logits))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x[None]}
    ort_s, _ = timeit(lambda: sess.run(None, feed), budget=budget)
    fb_s = None
    if module is not None:
        torch.set_num_threads(1)
        fb_s, _ = timeit(lambda: torch_grad_pass(module, torch.from_numpy(x), target),
                         budget=budget)
        m64 = copy.deepcopy(module).double()

    for rule in rules:
        row = {"model": name, "rule": rule}
        runs = {}
        for nt in (1, 2):
            s, att = timeit(partial(refbbp.bbp, net, x64, rule=rule, n_threads=nt,
                                    return_layers=True), budget=budget)
            prop = min(refbbp.bbp(net, x64, rule=rule, n_threads=nt).timings["propagate"]
                       for _ in range(5))
            row[f"bbp {nt}t"], row[f"prop {nt}t"], runs[nt] = s, prop, att
        # The same BBp with T = inf computes no exponential: the difference is their cost.
        row["prop Tinf 1t"] = min(
            refbbp.bbp(net, x64, rule=rule, temperature=np.inf, n_threads=1)
            .timings["propagate"] for _ in range(5))
        a1, a2 = runs[1], runs[2]
        row["bits"] = "same" if (np.array_equal(a1.beta, a2.beta) and all(
            np.array_equal(p.beta_in, q.beta_in) for p, q in zip(a1.layers, a2.layers))) \
            else "DIFFER"
        row["complete"] = a1.completeness().worst
        row["linearize"], row["ORT fwd"], row["torch f+b"] = lin_s, ort_s, fb_s
        if module is not None:
            assert a1.fallback_total == 0, "the user version has no fallbacks"
            for nt in (1, 2):
                torch.set_num_threads(nt)
                runs_u = []
                for _ in range(baseline_repeats + 1):          # the first is a warm-up
                    t0 = time.perf_counter()
                    beta_u, dist_s = user_bbp(m64, x64, rule)
                    runs_u.append((time.perf_counter() - t0, dist_s))
                row[f"user {nt}t"] = min(t for t, _ in runs_u[1:])
                row[f"user dist {nt}t"] = min(d for _, d in runs_u[1:])
            torch.set_num_threads(1)
            row["user diff"] = float(np.abs(beta_u - a1.beta).max() / np.abs(a1.beta).max())
            row["user/bbp 1t"] = row["user 1t"] / row["bbp 1t"]
            row["user/bbp 2t"] = row["user 2t"] / row["bbp 2t"]
            row["dist/prop 1t"] = row["user dist 1t"] / row["prop 1t"]
            row["dist/prop 2t"] = row["user dist 2t"] / row["prop 2t"]
            row["bbp/torch f+b"] = row["bbp 1t"] / fb_s
        row["bbp/lin"] = row["bbp 1t"] / lin_s
        row["bbp/ORT"] = row["bbp 1t"] / ort_s
        rows.append(row)
        if rule == rules[0]:
            nodes = sorted(a1.timings["nodes"].items(), key=lambda kv: -kv[1])
            phases.append((name, first_s, a1.timings, [
                (k, net.nodes[k].op, net.nodes[k].nnz, s) for k, s in nodes[:4]]))
    return rows, phases


COLUMNS = [("model", "{}"), ("rule", "{}"), ("bbp 1t", "ms"), ("bbp 2t", "ms"),
           ("bits", "{}"), ("prop 1t", "ms"), ("prop 2t", "ms"), ("prop Tinf 1t", "ms"),
           ("linearize", "ms"),
           ("ORT fwd", "ms"), ("torch f+b", "ms"), ("user 1t", "ms"), ("user 2t", "ms"),
           ("user dist 1t", "ms"), ("user dist 2t", "ms"), ("user diff", "{:.0e}"),
           ("complete", "{:.0e}"), ("user/bbp 1t", "{:.1f}x"), ("user/bbp 2t", "{:.1f}x"),
           ("dist/prop 1t", "{:.1f}x"), ("dist/prop 2t", "{:.1f}x"), ("bbp/lin", "{:.1f}"),
           ("bbp/ORT", "{:.0f}"), ("bbp/torch f+b", "{:.0f}")]


def _cell(v, fmt):
    if v is None:
        return "-"
    if fmt == "ms":
        return f"{1e3 * v:.1f}"
    return fmt.format(v)


def format_table(rows, columns=COLUMNS):
    head = [c + (" ms" if f == "ms" else "") for c, f in columns]
    body = [[_cell(r.get(c), f) for c, f in columns] for r in rows]
    return models.render_table(head, body)


def format_phases(phases):
    out = ["where bbp's time goes (1 thread, first rule): forward = the forward pass; node "
           "= its reverse step (gradient and BBp in one kernel pass, and the Python around it)"]
    for name, first_s, t, nodes in phases:
        rest = t["propagate"] - sum(s for *_, s in nodes)
        top = ", ".join(f"#{k} {op} ({nnz / 1e6:.1f}M nnz) {1e3 * s:.1f}" for k, op, nnz, s
                        in nodes)
        # The first phase: "linearize" (forward + gradient), or "forward" when the
        # kernel computes the gradient in its reverse pass (inside "propagate").
        first = "linearize" if "linearize" in t else "forward"
        out.append(f"  {name}: first call {first_s:.2f} s (structures, gradient caches); "
                   f"{first} {1e3 * t.get(first, float('nan')):.1f} ms, propagate "
                   f"{1e3 * t['propagate']:.1f} ms = {top}, others {1e3 * rest:.1f}")
    return "\n".join(out)


def header():
    note = "" if torch is not None else " (no torch: no user/torch columns)"
    return (models.machine_header() + note + "\n"
            "one input, predicted class, T = 1; best of repeats after a warm-up; refbbp float64; "
            "'user' = PyTorch float64 unfold version of the same rule (forward and "
            "gradient included), 'torch f+b' float32")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(models.MODELS),
                    choices=list(models.MODELS))
    ap.add_argument("--rules", nargs="+", default=["sign", "deviation"],
                    choices=["sign", "deviation"])
    ap.add_argument("--budget", type=float, default=3.0,
                    help="seconds of repeats per refbbp/ORT/torch timing (at least 3)")
    ap.add_argument("--baseline-repeats", type=int, default=3,
                    help="repeats of the (slow) user implementation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(header(), flush=True)
    rng = np.random.default_rng(args.seed)
    rows, phases = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r, p = bench_model(name, tmp, args.rules, args.budget, args.baseline_repeats, rng)
            rows += r
            phases += p
            print(f"  done {name}", file=sys.stderr, flush=True)
    print(format_table(rows))
    print(format_phases(phases))
    if hasattr(os, "getloadavg"):
        print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
