"""Linear regions and exact Integrated Gradients (SPEC 7, issue 12): their cost against a
forward pass, how the radius bound compares with the exact radius, and exact IG against
the Riemann IG people usually run.

Usage::

    python benchmarks/bench_region.py [--models digits stl10 resnet50_224] [--n 3]
                                      [--threads 2] [--exact-radius digits stl10]
                                      [--ig-steps 300] [--cache DIR] [--json FILE]

All columns are measured in one run, on the same inputs, with the same thread count
(BLAS and the kernel limited to ``--threads``):

* Table 1, per model: ``forward`` = ``Network.forward`` (float64, best of repeats) and,
  for reference, an onnxruntime forward (float32); ``region`` = ``refbbp.region`` (a
  forward and a gradient pass); ``segment`` = ``Region.segment`` along a random direction
  (one forward-mode pass through the frozen maps), and the ratio ``segment / forward``
  (issue 12's target: at most 3). The digits model is the bundled one
  (``refbbp.data``); STL-10 and ResNet-50 at 224x224 are the random-weight networks of
  ``benchmarks/models.py`` (exported with PyTorch, cached in ``--cache``).
* Table 2, per model of ``--exact-radius``: the exact L2 and L-infinity radius
  (``Region.radius``; time, value) and ``method="bound"`` (time, value, and bound /
  exact; the exact passes give both norms at once). Bundled digits with runs of
  saturated pixels tie at the first max-pool, which puts them on a region boundary
  (radius 0), so the inputs here are test digits plus
  Gaussian noise of std 1e-3 (and uniform random images for STL-10); the count of plain
  test digits with radius 0 is printed below the table.
* Table 3, the bundled model: exact IG from the black image (``refbbp.integrated_gradients``:
  pieces crossed, time, completeness error) against a ``--ig-steps``-step midpoint
  Riemann IG in float64 (batched gradients through ``refbbp.linearize``, the way
  Captum's users run it): its time, its completeness error ``|sum IG - (f(x) -
  f(x0))| / |f(x) - f(x0)|`` and its largest attribution error against the exact IG
  (relative to the largest exact attribution).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402

import refbbp  # noqa: E402

SEGMENT_TARGET = 3.0
MODELS = ("digits", "stl10", "resnet50_224")


def best_time(fn, repeats=3, budget=1.0):
    """Best wall time of ``fn()`` over at least ``repeats`` calls (more while ``budget``
    seconds last, up to 30), and its last result."""
    times, start, out = [], time.perf_counter(), None
    while len(times) < repeats or (len(times) < 30 and time.perf_counter() - start < budget):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def load_model(name, cache):
    """(path, network, inputs (n, ...)) of a benchmark model."""
    if name == "digits":
        path = str(refbbp.data.model_path())
    else:
        path, _ = models.cached_onnx(name, cache)
    net = refbbp.load(path, max_bytes=20 << 30)
    return path, net


def inputs_for(name, net, n, rng):
    if name == "digits":
        x, _ = refbbp.data.load_digits_test(n)
        return x + 1e-3 * rng.standard_normal(x.shape)
    return rng.random((n,) + net.input_shape)


def ort_forward_time(path, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: x[None].astype(np.float32)}
    return best_time(lambda: sess.run(None, feed))[0]


def table_segment(names, n, cache, rng):
    rows, out = [], {}
    for name in names:
        path, net = load_model(name, cache)
        xs = inputs_for(name, net, n, rng)
        fwd, reg, seg, ort_t = [], [], [], []
        for x in xs:
            fwd.append(best_time(lambda x=x, net=net: net.forward(x))[0])
            t_reg, r = best_time(lambda x=x, net=net: refbbp.region(net, x), repeats=1,
                                 budget=0)
            reg.append(t_reg)
            d = rng.standard_normal(x.shape)
            seg.append(best_time(lambda r=r, d=d: r.segment(d))[0])
            ort_t.append(ort_forward_time(path, x))
        f, s = float(np.median(fwd)), float(np.median(seg))
        out[name] = {"forward_s": f, "ort_forward_s": float(np.median(ort_t)),
                     "region_s": float(np.median(reg)), "segment_s": s,
                     "segment_over_forward": s / f}
        rows.append([name, f"{f * 1e3:.2f}", f"{np.median(ort_t) * 1e3:.2f}",
                     f"{np.median(reg) * 1e3:.1f}", f"{s * 1e3:.2f}",
                     f"{s / f:.2f}x " + ("✓" if s / f <= SEGMENT_TARGET else "✗")])
    head = ["network", "forward ms", "ORT fwd f32 ms", "region ms", "segment ms",
            f"segment / forward (≤ {SEGMENT_TARGET:g})"]
    return models.render_table(head, rows), out


def table_radius(names, n, cache, rng):
    rows, out = [], {}
    for name in names:
        _, net = load_model(name, cache)
        xs = inputs_for(name, net, n, rng)
        for i, x in enumerate(xs):
            r = refbbp.region(net, x)
            t_e = time.perf_counter()
            exact = {norm: r.radius(norm) for norm in ("l2", "linf")}  # one set of passes
            t_e = time.perf_counter() - t_e
            row = [f"{name}[{i}]", f"{t_e:.2f}"]
            entry = out[f"{name}[{i}]"] = {"exact_s": t_e}
            for norm in ("l2", "linf"):
                t_b, bound = best_time(lambda r=r, norm=norm: r.radius(norm, method="bound"),
                                       repeats=1, budget=0)
                e = exact[norm]
                ratio = bound.value / e.value if e.value > 0 else float("nan")
                entry[norm] = {"exact": e.value, "bound": bound.value, "bound_s": t_b,
                               "bound_over_exact": ratio, "binding": str(e.binding),
                               "constraints": e.n_constraints}
                row += [f"{e.value:.3e}", f"{bound.value:.3e}", f"{ratio:.3f}",
                        f"{t_b * 1e3:.1f}"]
            row.append(f"{exact['l2'].n_constraints:,}")
            rows.append(row)
    head = ["input", "exact s (both norms)", "L2 exact", "L2 bound", "bound / exact",
            "bound ms", "Linf exact", "Linf bound", "bound / exact", "bound ms",
            "constraints"]
    return models.render_table(head, rows), out


def riemann_ig(net, x, x0, v, steps):
    """Midpoint Riemann IG in float64 with batched gradients."""
    t = (np.arange(steps) + 0.5) / steps
    total = np.zeros(x.size)
    for s in range(0, steps, 64):
        tt = t[s:s + 64]
        pts = x0[None] + tt.reshape((-1,) + (1,) * x.ndim) * (x - x0)[None]
        total += refbbp.linearize(net, pts, v).w.reshape(len(tt), -1).sum(0)
    return (total / steps * (x - x0).ravel()).reshape(x.shape)


def table_ig(n, steps):
    net = refbbp.load(refbbp.data.model_path())
    xs, _ = refbbp.data.load_digits_test(n)
    rows, out = [], {}
    for i, x in enumerate(xs):
        x0 = np.zeros_like(x)
        t_ig = time.perf_counter()
        ig = refbbp.integrated_gradients(net, x)
        t_ig = time.perf_counter() - t_ig
        t_r = time.perf_counter()
        approx = riemann_ig(net, x, x0, ig.target, steps)
        t_r = time.perf_counter() - t_r
        delta = ig.value - ig.baseline_value
        riemann_err = abs(approx.sum() - delta) / abs(delta)
        exact_err = abs(ig.attributions.sum() - delta) / abs(delta)
        attr_err = np.abs(approx - ig.attributions).max() / np.abs(ig.attributions).max()
        out[f"digit {i}"] = {"pieces": ig.n_pieces, "exact_s": t_ig,
                             "exact_completeness": exact_err, "riemann_s": t_r,
                             "riemann_completeness": riemann_err,
                             "riemann_attribution_error": attr_err}
        rows.append([f"digit {i}", f"{ig.n_pieces:,}", f"{t_ig:.2f}", f"{exact_err:.1e}",
                     f"{t_r:.2f}", f"{riemann_err:.1e}", f"{attr_err:.1e}",
                     f"{t_ig / t_r:.1f}x"])
    head = ["input", "pieces", "exact IG s", "exact: completeness err",
            f"Riemann {steps} s", "Riemann: completeness err", "Riemann: max attr err",
            "exact / Riemann time"]
    return models.render_table(head, rows), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--exact-radius", nargs="*", default=["digits", "stl10"],
                    choices=list(MODELS[:2]))
    ap.add_argument("--n", type=int, default=3, help="inputs per model (default 3)")
    ap.add_argument("--n-radius", type=int, default=2,
                    help="inputs per model of the exact radius (default 2)")
    ap.add_argument("--ig-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                    "refbbp_bench_models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rng = np.random.default_rng(args.seed)
    print(models.machine_header())
    print(f"threads {args.threads}; {args.n} inputs per model; models cached in {args.cache}\n")
    results = {}
    text, results["segment"] = table_segment(args.models, args.n, args.cache, rng)
    print("1. segment along a random direction vs a forward pass (medians over inputs)")
    print(text, "\n", flush=True)
    if args.exact_radius:
        text, results["radius"] = table_radius(args.exact_radius, args.n_radius, args.cache,
                                                 rng)
        print("2. exact radius and its bound")
        print(text)
        net = refbbp.load(refbbp.data.model_path())
        xs, _ = refbbp.data.load_digits_test(20)
        zero = sum(refbbp.region(net, x).radius("linf").value == 0
                   for x in xs)
        results["digits_radius_zero_of_20"] = int(zero)
        print(f"   plain test digits (no noise) with radius 0 (a max-pool tie): {zero} of 20\n",
              flush=True)
    text, results["ig"] = table_ig(args.n, args.ig_steps)
    print(f"3. exact IG vs {args.ig_steps}-step Riemann IG, bundled model, baseline black")
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
