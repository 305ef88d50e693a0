"""ImageNet-size targets (issue 9): peak memory, load time and BBp time of refbbp on the
BBp paper's STL-10 network and on VGG-11-BN, VGG-16 and ResNet-50 at 224x224, against
PyTorch's float64 forward + gradient and a vectorised PyTorch BBp of the same rule.

Usage::

    python benchmarks/bench_imagenet.py [--models stl10 vgg11_bn_224 vgg16_224 resnet50_224]
        [--threads 2] [--repeats 2] [--budget 2] [--cache DIR] [--json FILE]
        [--user-models stl10 vgg11_bn_224] [--block-mib 4]
        [--max-bytes-gib 20] [--mem-limit-gib 16] [--timeout 900]

The models (``benchmarks/models.py``: random weights with fixed seeds, BatchNorm with
random running statistics, eval mode) are exported once with ``torch.onnx.export``
(legacy exporter, opset 17, dynamic batch) into ``--cache`` (default
``$TMPDIR/refbbp_bench_models``) and reused from there. One input per network
(``standard_normal``, seed ``--seed``), the predicted class. Every column uses the same
number of threads ``T = --threads``: refbbp's kernel ``n_threads=T`` (and
``OMP_NUM_THREADS`` / BLAS threads = T in its process), ``torch.set_num_threads(T)``.

For each network:

* refbbp, in a fresh subprocess (``bench_imagenet_child.py``) so that its RSS holds
  neither PyTorch nor another network: ``refbbp.load(path, max_bytes=--max-bytes-gib)``
  (``load s``), then ``refbbp.bbp(net, x, rule="sign", temperature=1.0, n_threads=T)``:
  ``bbp s`` is the first call / the best of the calls after it (at least ``--repeats``,
  more while ``--budget`` seconds last; "best of R" below); ``peak RSS MB`` is the
  process's peak RSS right after the first call (load + one explanation, imports
  included; MB = 10^6 bytes), read from ``VmHWM`` in /proc/self/status: the child's
  ``getrusage(RUSAGE_SELF).ru_maxrss`` would not do, since Linux carries the parent's RSS
  at the fork into it (shown in the notes as "ru_maxrss"). The child's address space is
  capped with ``RLIMIT_AS`` (``--mem-limit-gib``, at most the memory available at the
  start) so that it cannot take the machine down. A refusal of the memory budget
  (``MemoryBudgetError``), a ``MemoryError``, another error, a kill by a signal or a
  timeout is reported in the ``refbbp`` column (the first line of the error; the full
  line under the table), and the run goes on.
* ``torch f+g f64 s``: PyTorch float64 (``module.double()``, parameters not requiring
  gradients) forward + gradient of the explained logit w.r.t. the input; one warm-up,
  then best of R. ``bbp / torch`` = refbbp's best BBp / that (the first call's
  ratio in parentheses).
* ``user BBp s`` (``--user-models``, default stl10 and vgg11_bn_224): the same rule
  (sign, T = 1) written as a user would, vectorised in PyTorch float64 with
  ``unfold``/``fold`` (``torch_bbp.user_bbp``, forward and autograd gradient included;
  components formed ``--block-mib`` MiB at a time: cache-sized blocks make it ~5x
  faster than whole layers, which for an ImageNet convolution would take tens of GB);
  one warm-up, then best of R, or the first call alone when it took over 20 s.
  ``user / bbp`` = that / refbbp's best BBp. ``check``: max |beta_user - beta_refbbp| /
  max |beta_refbbp| (<= 1e-9 to pass), when refbbp ran and reported no fallback (the
  user version has none).

Each target of issue 9 gets a mark (``ok`` / ``FAIL``) in its cell: peak RSS <= 300 MB
(stl10), 3 GB (VGG-11-BN), 4 GB (VGG-16, ResNet-50); bbp / torch <= 10; user / bbp >=
30 (stl10, VGG-11-BN); ResNet-50's load <= 5 s. Notes under the table give the RSS after
imports and after the load, refbbp's phases (as in ``Attribution.timings``), its logits
and ``w`` against PyTorch's float64 ones, and the export times.

A full run takes about 7 minutes on 2 cores (mostly refbbp's three BBp calls on each
224 network and the single call of the user BBp on VGG-11-BN, ~2-3 min);
``--user-models stl10`` and ``--repeats 1`` shorten it. The refbbp process holds
whatever ``refbbp.load`` allocates up to ``--max-bytes-gib`` / ``--mem-limit-gib``: on a
shared machine lower them (e.g. ``--mem-limit-gib 6``): a network that needs more is
then reported as refused or out of memory, and fails its RSS target either way.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402

torch = models.torch
if torch is not None:
    from torch_bbp import torch_grad_pass, user_bbp  # noqa: E402

GIB = 1 << 30
MB = 1e6
CHILD = HERE / "bench_imagenet_child.py"
DEFAULT_MODELS = ("stl10",) + models.IMAGENET_MODELS
DEFAULT_USER_MODELS = ("stl10", "vgg11_bn_224")
# Issue 9's targets: peak RSS of load + one explanation (bytes), bbp / torch f+g f64,
# user BBp / bbp, load time (s).
TARGETS = {
    "stl10": {"rss": 300 * MB, "ratio": 10.0, "user": 30.0},
    "vgg11_bn_224": {"rss": 3000 * MB, "ratio": 10.0, "user": 30.0},
    "vgg16_224": {"rss": 4000 * MB, "ratio": 10.0},
    "resnet50_224": {"rss": 4000 * MB, "ratio": 10.0, "load": 5.0},
}
CHECK_TOL = 1e-9
SLOW_CALL_S = 20.0


def mem_available():
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def best_time(fn, repeats, budget):
    """Best wall time of ``fn()`` over at least ``repeats`` calls, repeated (up to 50)
    while ``budget`` seconds last; also the last result and the number of calls."""
    times, start = [], time.perf_counter()
    while len(times) < max(1, repeats) or (len(times) < 50
                                           and time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out, len(times)


# ------------------------------------------------------------------ refbbp (child)
def run_child(path, x_path, out_dir, args):
    """refbbp's load + BBp in a fresh process; its RESULT dict, with ``status`` one of
    ok, refused, oom, error, killed, timeout."""
    spec = {"model": path, "x": x_path, "out": out_dir, "threads": args.threads,
            "max_bytes": int(args.max_bytes_gib * GIB), "mem_limit": args.mem_limit,
            "repeats": args.repeats, "budget": args.budget}
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    try:
        proc = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "message": f"no result after {args.timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = proc.stderr.strip().splitlines()
    if proc.returncode < 0:
        import signal
        sig = signal.Signals(-proc.returncode).name
        # A SIGKILL nobody asked for is the kernel's OOM killer.
        what = "killed (out of memory)" if sig == "SIGKILL" else f"killed by {sig}"
        return {"status": "killed", "message": f"{what}; stderr: "
                f"{err[-1] if err else '(empty)'}"}
    return {"status": "error", "message": f"exit status {proc.returncode}: "
            f"{err[-1] if err else '(no output)'}"}


# ------------------------------------------------------------------ PyTorch (parent)
def torch_side(name, x, target, args, logits_ref=None, w_ref=None, beta_ref=None,
               user=False):
    """PyTorch float64 forward + gradient timing (and the user BBp when ``user``)."""
    out = {}
    torch.set_num_threads(args.threads)
    m64 = models.torch_module(name).double()
    for p in m64.parameters():
        p.requires_grad_(False)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        logits = m64(xt[None])[0].numpy()
    if target is None:
        target = int(np.argmax(logits))
    out["target"] = target
    if logits_ref is not None:
        ref = np.asarray(logits_ref)
        out["logits_diff"] = float(np.abs(logits - ref).max() / np.abs(ref).max())
        out["same_class"] = int(np.argmax(logits)) == int(np.argmax(ref))
    torch_grad_pass(m64, xt, target)                          # warm-up
    out["torch_s"], g, out["torch_calls"] = best_time(
        lambda: torch_grad_pass(m64, xt, target), args.repeats, args.budget)
    if w_ref is not None:
        g = g.numpy()
        out["w_diff"] = float(np.abs(g - w_ref).max() / np.abs(w_ref).max())
    if user:
        block = int(args.block_mib * (1 << 20)) or None
        dists = []

        def call():
            beta, dist_s = user_bbp(m64, x, "sign", 1.0, target=target,
                                    max_block_bytes=block)
            dists.append(dist_s)
            return beta

        first, beta_u, _ = best_time(call, 1, 0.0)
        out["user_s"], out["user_calls"] = first, 1
        if first < SLOW_CALL_S:                               # that was the warm-up
            dists.clear()
            out["user_s"], beta_u, out["user_calls"] = best_time(call, args.repeats,
                                                                 args.budget)
        out["user_dist_s"] = min(dists)
        if beta_ref is not None:
            out["check"] = float(np.abs(beta_u - beta_ref).max() / np.abs(beta_ref).max())
    return out


# ------------------------------------------------------------------ one network
def bench_model(name, args, work):
    row = {"model": name, "input": "x".join(map(str, models.INPUT_SHAPES[name]))}
    t0 = time.perf_counter()
    path, exported = models.cached_onnx(name, args.cache)
    row["export_s"] = time.perf_counter() - t0 if exported else None
    row["onnx_mb"] = os.path.getsize(path) / MB
    gc.collect()
    x = (np.random.default_rng(args.seed).standard_normal(models.INPUT_SHAPES[name])
         .astype(np.float32).astype(np.float64))
    out_dir = os.path.join(work, name)
    os.makedirs(out_dir, exist_ok=True)
    x_path = os.path.join(out_dir, "x.npy")
    np.save(x_path, x)

    print(f"  {name}: refbbp (subprocess) ...", file=sys.stderr, flush=True)
    res = run_child(path, x_path, out_dir, args)
    row["refbbp"] = res
    ok = res.get("status") == "ok"
    beta = w = None
    if ok:
        beta = np.load(os.path.join(out_dir, "beta.npy"))
        w = np.load(os.path.join(out_dir, "w.npy"))
    if torch is None:
        return row
    user = name in args.user_models
    print(f"  {name}: torch f+g{' and user BBp' if user else ''} ...", file=sys.stderr,
          flush=True)
    fallback = ok and res.get("fallback_total", 0) != 0
    row["torch"] = torch_side(name, x, res.get("target") if ok else None, args,
                              logits_ref=res.get("logits"), w_ref=w,
                              beta_ref=beta if ok and not fallback else None, user=user)
    gc.collect()                                  # the float64 module
    row["fallback"] = fallback
    return row


# ------------------------------------------------------------------ the table
def _mark(met):
    return {True: "ok", False: "FAIL", None: "(not run)"}[met]


def cells(row):
    """The table's cells of one row, and the (model, target, met) triples it was judged
    against: met is True, False, or None when the baseline the target needs was not
    run. A target whose refbbp side did not run (refused, out of memory, ...) fails."""
    r, t = row["refbbp"], row.get("torch", {})
    tg = TARGETS.get(row["model"], {})
    ok = r.get("status") == "ok"
    checks = []

    def judged(text, key, value, met, needs=True):
        """``text`` with the mark of target ``key`` (if the model has it): ``met(value,
        bound)`` when refbbp ran and ``needs`` (the baseline) was measured."""
        if key not in tg:
            return text
        verdict = (None if not needs else False if value is None else
                   bool(met(value, tg[key])))
        checks.append((row["model"], key, verdict))
        return f"{text} {_mark(verdict)}"

    status = "ok" if ok else f"{r['status']}: {r.get('message', '')}"
    if len(status) > 60:
        status = status[:57] + "..."
    le = lambda v, b: v <= b  # noqa: E731
    load_s = r.get("load_s")
    load = judged(f"{load_s:.2f}" if load_s is not None else "-", "load",
                  load_s, le)
    rss_b = r["rss_peak_kib"] * 1024 if ok else None
    rss = judged(f"{rss_b / MB:.0f}" if ok else "-", "rss", rss_b, le)
    bbp = f"{r['bbp_first_s']:.3g} / {r['bbp_best_s']:.3g}" if ok else "-"
    torch_s = t.get("torch_s")
    ratio = r["bbp_best_s"] / torch_s if ok and torch_s else None
    rtext = (f"{ratio:.1f}x ({r['bbp_first_s'] / torch_s:.1f}x)" if ratio is not None
             else "-")
    rtext = judged(rtext, "ratio", ratio, le, needs=torch_s is not None)
    user_s = t.get("user_s")
    uratio = user_s / r["bbp_best_s"] if ok and user_s else None
    utext = f"{uratio:.0f}x" if uratio is not None else "-"
    utext = judged(utext, "user", uratio, lambda v, b: v >= b, needs=user_s is not None)
    if "check" in t:
        check = f"{t['check']:.0e} {_mark(t['check'] <= CHECK_TOL)}"
    elif row.get("fallback"):
        check = "n/a (fallback)"
    else:
        check = "-"
    return [row["model"], row["input"], status, load, rss, bbp,
            f"{torch_s:.3g}" if torch_s else "-", rtext,
            f"{user_s:.3g}" if user_s else "-", utext, check], checks


HEAD = ["network", "input", "refbbp", "load s", "peak RSS MB", "bbp s first / best",
        "torch f+g f64 s", "bbp / torch", "user BBp s", "user / bbp", "check"]


def notes(rows):
    out = []
    for row in rows:
        r, t = row["refbbp"], row.get("torch", {})
        parts = []
        if "rss_import_kib" in r:
            parts.append(f"RSS after imports {r['rss_import_kib'] * 1024 / MB:.0f} MB")
        if "rss_load_kib" in r:
            parts.append(f"after load {r['rss_load_kib'] * 1024 / MB:.0f} MB "
                         f"(layer matrices {r.get('layer_bytes', 0) / MB:.0f} MB, "
                         f"{r.get('n_nodes')} nodes)")
        if r.get("status") != "ok":
            if "rss_peak_kib" in r:
                parts.append(f"peak RSS before it stopped "
                             f"{r['rss_peak_kib'] * 1024 / MB:.0f} MB")
            at = f" at {r['stage']}" if "stage" in r else ""
            parts.append(f"{r['status']}{at}: {r.get('message', '')}")
        else:
            ft, bt = r.get("first_timings", {}), r.get("timings", {})
            parts.append("first bbp: " + ", ".join(f"{k} {v:.3g} s" for k, v in ft.items()))
            parts.append("last call: " + ", ".join(f"{k} {v:.3g} s" for k, v in bt.items()))
            parts.append(f"completeness {r['completeness']:.0e}, fallback "
                         f"{r['fallback_total']:.3g}, kernel threads {r['n_threads']}")
            if r.get("torch_imported"):
                parts.append("WARNING: torch was imported in the refbbp process")
        if "ru_maxrss_kib" in r:
            parts.append(f"ru_maxrss {r['ru_maxrss_kib'] * 1024 / MB:.0f} MB (includes the "
                         f"parent's RSS)")
        if "logits_diff" in t:
            parts.append(f"logits vs torch f64 {t['logits_diff']:.0e}"
                         + ("" if t.get("same_class") else " (DIFFERENT predicted class)"))
        if "w_diff" in t:
            parts.append(f"w vs torch f64 grad {t['w_diff']:.0e}")
        if "user_s" in t:
            parts.append(f"user BBp: distribution alone {t['user_dist_s']:.3g} s, "
                         f"{t['user_calls']} timed call(s)")
        parts.append(f"ONNX {row['onnx_mb']:.0f} MB"
                     + (f", exported in {row['export_s']:.1f} s" if row["export_s"]
                        else " (cached)"))
        out.append(f"  {row['model']}: " + "; ".join(parts))
    return "\n".join(out)


def header(args):
    lim = (f"{args.mem_limit / GIB:.1f} GiB" if args.mem_limit else "none")
    return (models.machine_header() + "\n"
            f"threads: {args.threads} for every column (refbbp n_threads, OMP/BLAS threads "
            f"of its process, torch.set_num_threads); refbbp float64, sign rule, T = 1, "
            f"one input, predicted class\n"
            f"refbbp in a fresh process per network: load(max_bytes={args.max_bytes_gib:g} "
            f"GiB), address space limit {lim}; peak RSS = its VmHWM after load + first "
            f"bbp (MB = 1e6 B); bbp: first call / best of the calls after it, torch and "
            f"user: best after a warm-up (at least {args.repeats} calls, more within "
            f"{args.budget:g} s); user BBp blocks {args.block_mib:g} MiB; models cached in "
            f"{args.cache}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                    choices=list(models.ALL_MODELS))
    ap.add_argument("--user-models", nargs="*", default=list(DEFAULT_USER_MODELS),
                    choices=[m for m in models.ALL_MODELS if m in models.SPECS],
                    help="networks that also get the vectorised PyTorch BBp (slow: "
                         "minutes for vgg11_bn_224)")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for refbbp, torch and the user BBp alike (default 2)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed calls at least, after the first call / warm-up "
                         "(default 2)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                    "refbbp_bench_models"),
                    help="folder of the exported ONNX files (reused when present)")
    ap.add_argument("--max-bytes-gib", type=float, default=20.0,
                    help="refbbp.load's max_bytes, GiB (default 20: generous, so that "
                         "the budget itself refuses nothing the machine could hold)")
    ap.add_argument("--mem-limit-gib", type=float, default=16.0,
                    help="RLIMIT_AS of the refbbp process, GiB (default 16; capped at "
                         "MemAvailable at the start; 0: no limit)")
    ap.add_argument("--budget", type=float, default=2.0,
                    help="seconds of further repeats of a fast timing (default 2)")
    ap.add_argument("--block-mib", type=float, default=4.0,
                    help="size of the user BBp's blocks of components, MiB (default 4, "
                         "cache-sized: ~5x faster than whole layers; 0: whole layers)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds before the refbbp process is given up (default 900)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    args = ap.parse_args(argv)
    if torch is None:
        print("bench_imagenet.py needs PyTorch (pip install torch) for its baselines and "
              "to export the models", file=sys.stderr)
        return 2
    args.mem_limit = int(args.mem_limit_gib * GIB)
    avail = mem_available()
    if args.mem_limit and avail is not None:
        args.mem_limit = min(args.mem_limit, avail)
    print(header(args), flush=True)
    rows, marks = [], []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            rows.append(bench_model(name, args, work))
            print(f"  done {name}", file=sys.stderr, flush=True)
    body = []
    for row in rows:
        line, checks = cells(row)
        body.append(line)
        marks += checks
    print(models.render_table(HEAD, body))
    print(notes(rows))
    judged = [m for m in marks if m[2] is not None]
    failed = ", ".join(f"{n} {k}" for n, k, m in judged if not m)
    unrun = ", ".join(f"{n} {k}" for n, k, m in marks if m is None)
    print(f"targets met: {sum(m for *_, m in judged)} of {len(judged)}"
          + (f"; failed: {failed}" if failed else "")
          + (f"; not judged (baseline not run): {unrun}" if unrun else ""))
    if hasattr(os, "getloadavg"):
        print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header(args), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
