"""Conformance of refbbp on a folder of ONNX models exported by others.

Usage::

    python benchmarks/conformance.py [FOLDER] [--n-random N] [--seed S]

FOLDER defaults to ``../shared/realmodels`` relative to the repository. For every
``NAME.onnx`` in it the script

1. loads it with :func:`refbbp.load`; a model that is not piecewise linear must be
   refused with :class:`refbbp.NotPiecewiseLinearError` (reported as ``refused``, with
   the reason; not a failure); any other error is a ``FAIL``;
2. takes the inputs: the one in ``NAME.ref.npz`` (key ``in:<input name>``), plus N
   random inputs drawn uniformly inside ``NAME.box.npz`` (``lo``, ``hi`` per feature)
   when that file exists, or else N inputs jittered around the reference input
   (Gaussian, standard deviation 5 % of the reference input's);
3. compares refbbp's float64 forward pass with onnxruntime's on the tensor refbbp
   explains: the graph output, or, when refbbp dropped a final Softmax/LogSoftmax
   (``net.notices``), the logits before it, which the script adds to the graph's
   outputs for onnxruntime. The error is reported as a multiple of the SPEC tolerance
   (section 2: ``rtol 1e-4, atol 1e-5 * max|output|``); it passes at <= 1;
4. checks the local linear model: ``max lin.check()`` over the inputs, which passes at
   <= 1e-9 (SPEC section 2).

One line per model: name, status, nodes, inputs checked, forward error (x tol), linear
model error, load time and the time of forward + linearize per input. It also checks
that onnxruntime reproduces the outputs stored in ``NAME.ref.npz`` (a note when not).
Exit status 1 if any model that is not refused as non-piecewise-linear fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import refbbp

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO.parent / "shared" / "realmodels"
RTOL, ATOL_SCALE = 1e-4, 1e-5  # SPEC section 2
LIN_TOL = 1e-9
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16}
FINAL_OPS = ("Softmax", "LogSoftmax")


def tolerance_multiple(actual, desired):
    """max |actual - desired| / (rtol |desired| + atol * max|desired|), per SPEC section 2."""
    desired = np.asarray(desired, np.float64).reshape(actual.shape)
    scale = np.abs(desired).max(axis=-1, keepdims=True)
    tol = RTOL * np.abs(desired) + ATOL_SCALE * scale
    tol = np.maximum(tol, np.finfo(np.float32).tiny)
    return float(np.max(np.abs(actual - desired) / tol))


def logits_tensor(model, output):
    """The tensor before a final Softmax/LogSoftmax (or Softmax -> Log), found
    independently of refbbp: follow ``output`` back over those ops and Identity."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen_softmax = False
    name = output
    while name in producer:
        node = producer[name]
        if node.op_type in FINAL_OPS:
            seen_softmax = True
        elif node.op_type == "Log" and node.input[0] in producer \
                and producer[node.input[0]].op_type == "Softmax":
            pass
        elif node.op_type == "Identity":
            pass
        else:
            break
        name = node.input[0]
    return name if seen_softmax else output


class OrtRunner:
    """onnxruntime on one model, reading the tensor ``tensor`` (added as an output)."""

    def __init__(self, model, tensor):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        outputs = [o.name for o in model.graph.output]
        if tensor not in outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(model.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])
        self.tensor = tensor
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def run(self, input_name, x, input_type):
        """Outputs for one input at a time (some models fix the batch size to 1)."""
        dtype = ORT_DTYPES.get(input_type, np.float32)
        res = [self.sess.run([self.tensor], {input_name: xi.astype(dtype)})[0] for xi in x]
        return np.stack(res)

    def run_all(self, input_name, x1, input_type):
        dtype = ORT_DTYPES.get(input_type, np.float32)
        return dict(zip(self.outputs, self.sess.run(None, {input_name: x1.astype(dtype)})))


def draw_inputs(ref_x, box, n, rng):
    """(ref input, then n random ones), each of the ONNX input's shape, float64."""
    xs = [ref_x.astype(np.float64)]
    if n <= 0:
        return xs, "ref"
    if box is not None:
        lo, hi = box["lo"].astype(np.float64), box["hi"].astype(np.float64)
        if lo.size == ref_x.size:
            for _ in range(n):
                xs.append((lo + (hi - lo) * rng.random(lo.shape)).reshape(ref_x.shape))
            return xs, "box"
    sd = 0.05 * (np.std(ref_x) or 1.0)
    for _ in range(n):
        xs.append(ref_x + sd * rng.standard_normal(ref_x.shape))
    return xs, "jitter"


def check_model(path, n_random, rng):
    """Returns a dict describing the outcome for one model."""
    name = path.name.removesuffix(".onnx")
    row = {"name": name, "status": "FAIL", "nodes": "", "inputs": "", "fwd": "", "lin": "",
           "load_s": "", "per_input_ms": "", "notes": [], "failed": True}
    ref_path = path.with_name(name + ".ref.npz")
    box_path = path.with_name(name + ".box.npz")
    ref = np.load(ref_path) if ref_path.exists() else None
    box = np.load(box_path) if box_path.exists() else None

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", refbbp.ImportNotice)
            net = refbbp.load(path)
    except refbbp.NotPiecewiseLinearError as exc:
        row.update(status="refused: not piecewise linear", failed=False)
        row["notes"].append(_one_line(exc))
        return row
    except Exception as exc:  # a piecewise-linear model refbbp could not load
        row["status"] = f"FAIL: {type(exc).__name__}"
        row["notes"].append(_one_line(exc))
        return row
    row["load_s"] = f"{time.perf_counter() - t0:.2f}"
    row["nodes"] = str(len(net.nodes))

    model = onnx.load(str(path))
    graph_output = getattr(net, "graph_output", net.output_name)
    explained = logits_tensor(model, graph_output)
    if net.notices:
        row["notes"].append("; ".join(net.notices))
        if explained == graph_output:
            row["status"] = "FAIL: refbbp dropped a final op that is not Softmax/LogSoftmax"
            return row
    elif explained != graph_output:
        row["status"] = "FAIL: the graph ends in Softmax but refbbp did not drop it"
        return row
    if net.output_name != explained:
        row["status"] = (f"FAIL: refbbp explains tensor {net.output_name!r}, expected "
                         f"{explained!r}")
        return row

    if ref is None or f"in:{net.input_name}" not in ref.files:
        row["status"] = f"FAIL: no {ref_path.name} with key in:{net.input_name}"
        return row
    ref_x = ref[f"in:{net.input_name}"]
    xs, how = draw_inputs(ref_x, box, n_random, rng)
    row["inputs"] = f"1+{len(xs) - 1} {how}" if len(xs) > 1 else "1 ref"

    runner = OrtRunner(model, explained)
    in_type = runner.sess.get_inputs()[0].type
    # onnxruntime reproduces the stored reference outputs?
    stored = {k[4:]: ref[k] for k in ref.files if k.startswith("out:")}
    got = runner.run_all(net.input_name, ref_x, in_type)
    for k, v in stored.items():
        if k in got and tolerance_multiple(got[k].astype(np.float64), v) > 1:
            row["notes"].append(f"onnxruntime differs from the stored out:{k}")

    x = np.stack(xs)  # (n, *onnx input shape)
    y_ort = runner.run(net.input_name, x, in_type).reshape(len(xs), -1)
    xb = x.reshape((len(xs),) + net.input_shape)
    t1 = time.perf_counter()
    y = net.forward(xb)
    lin = refbbp.linearize(net, xb)
    elapsed = time.perf_counter() - t1
    fwd = tolerance_multiple(y, y_ort)
    lin_err = lin.check()
    row.update(fwd=f"{fwd:.3g}", lin=f"{lin_err:.1e}",
               per_input_ms=f"{1e3 * elapsed / len(xs):.1f}")
    ok = fwd <= 1.0 and lin_err <= LIN_TOL
    row.update(status="ok" if ok else "FAIL", failed=not ok)
    if not ok:
        if fwd > 1.0:
            row["notes"].append(f"forward error {fwd:.3g} x tolerance vs onnxruntime")
        if lin_err > LIN_TOL:
            row["notes"].append(f"linear model error {lin_err:.2e} > {LIN_TOL:g}")
    return row


def _one_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    ap.add_argument("--n-random", type=int, default=8,
                    help="random inputs per model besides the reference one (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    paths = sorted(folder.glob("*.onnx"))
    if not paths:
        print(f"no *.onnx in {folder}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    print(f"refbbp {refbbp.__version__}, onnx {onnx.__version__}, onnxruntime "
          f"{ort.__version__}, numpy {np.__version__}; {len(paths)} models in {folder}; "
          f"forward error as a multiple of the SPEC tolerance (pass <= 1), linear model "
          f"error pass <= {LIN_TOL:g}")
    head = ("model", "status", "nodes", "inputs", "fwd/tol", "lin err", "load s", "ms/input")
    rows = []
    for p in paths:
        r = check_model(p, args.n_random, rng)
        rows.append(r)
    table = [head] + [(r["name"], r["status"], r["nodes"], r["inputs"], r["fwd"], r["lin"],
                       r["load_s"], r["per_input_ms"]) for r in rows]
    # the status column may be long (refusals): put it last when printing
    order = [0, 2, 3, 4, 5, 6, 7, 1]
    widths = [max(len(_clip(t[j])) for t in table) for j in range(len(head))]
    for t in table:
        print("  ".join(_clip(t[j]).ljust(widths[j]) if j != 1 else _clip(t[j])
                        for j in order).rstrip())
    for r in rows:
        for note in r["notes"]:
            print(f"note {r['name']}: {note}")
    failed = [r["name"] for r in rows if r["failed"]]
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_ref = sum(r["status"].startswith("refused") for r in rows)
    print(f"{n_ok} ok, {n_ref} refused as not piecewise linear, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _clip(s, n=110):
    return s if len(s) <= n else s[: n - 1] + "~"


if __name__ == "__main__":
    sys.exit(main())
