"""The ``refbbp`` command line.

Every subcommand prints a readable table (or JSON with ``--json``) and exits with status
0 when every check passes, 1 when a check fails, and 2 on any error: bad arguments, bad
or unreadable files, a model refbbp refuses, running out of memory -- always one line,
``refbbp: error: ...``, on stderr (``--debug`` shows the traceback instead). Files named
on the command line must be regular files (not a folder, FIFO or device), and are
size-checked before they are read (``refbbp/io/files.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from ._checks import check_count, check_labels
from ._progress import progress
from ._tables import text_table
from .bbp.propagate import check_temperature
from .bbp.rules import RULE_NAMES
from .errors import NotPiecewiseLinearError, RefbbpError
from .evaluate import BLUR_SIGMA, DEFAULT_METHODS, NEVER_FLIP, TIES, method_syntaxes

from .io import data
from .io.files import read_npz, regular_file
from .io.inputs import read_inputs
from .io.oracle import beta_key, compare, oracle_path, write_oracle
from .io.verify import MAX_RANDOM_INPUTS, RandomInputs, in_chunks, nonlinear_nodes, verify
from .network.region import region
from .network.start import from_start, resolve_start
from .runs.executors import keep_freed_memory
from .runs.tasks import exact_ig as _exact_ig
from .runs.tasks import explain_inputs as _explain_inputs
from .runs.tasks import ig_fields as _ig_fields
from .studies.bias_study import bias_importance
from .tolerance import FORWARD_ATOL, FORWARD_RTOL, TOLERANCE, as_text

__all__ = ["main"]

#: Largest ONNX file read from the command line: protobuf cannot parse more (2 GiB);
#: larger weights live in external data files next to the model.
MAX_MODEL_BYTES = 2 << 30


def _temperature(s):
    try:
        t = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"temperature must be a number, 0 or inf; got {s!r}") from None
    try:
        return check_temperature(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _target(s):
    if s in ("pred", "top2"):
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--target must be a class index, 'pred' or 'top2'; "
                                         f"got {s!r}") from None


def _count(s, least=1, most=None):
    """argparse type: an int in [least, most] (default: a positive int)."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None
    try:
        return check_count(n, "the value", least, most)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _baseline(s):
    """argparse type of ``evaluate --baseline``: a float if ``s`` is a number, else the
    string ('mean', 'blur', 'blur:SIGMA'); ``evaluate`` checks it (one-line error)."""
    try:
        return float(s)
    except ValueError:
        return s


def _load(path, input_shape=None):
    import refbbp

    regular_file(path, "model", max_bytes=MAX_MODEL_BYTES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = refbbp.load(path, input_shape=input_shape)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return net


# --------------------------------------------------------------------------- explain
def _completeness_rows(names, lin, results, errors, rules):
    rows, ok = [], True
    for i, name in enumerate(names):
        r = [name, int(np.argmax(lin.logits[i])), float(lin.value[i]), float(lin.bias_x[i]),
             float((lin.w[i] * lin.trace.values[0][i].reshape(lin.w[i].shape)).sum())]
        for rule in rules:
            err = errors[i][rule]
            r += [float(results[rule][i].beta.sum()), err]
            ok &= err <= TOLERANCE
        rows.append(r)
    header = ["input", "pred", "f(x)", "b^x", "sum w*x"]
    for rule in rules:
        header += [f"sum beta ({rule})", f"err ({rule})"]
    return rows, header, ok


def cmd_explain(args, demo=False):
    if getattr(args, "out_dir", None) and not demo:
        return cmd_run(args)
    if demo:
        model = str(data.model_path())
        x, labels = data.load_samples()
        names = [f"sample {i} (label {labels[i]})" for i in range(len(x))]
        net = _load(model)
    else:
        model = args.model
        net = _load(model, args.input_shape)
        x, names = read_inputs(args.inputs, net.input_shape, args.size, args.mean, args.std,
                               args.layout)
        labels = None
    rules = list(RULE_NAMES) if args.rule == "both" else [args.rule]
    images = x
    net, x = from_start(net, x, args.start)
    lin, results, errors = _explain_inputs(net, x, args.target, rules, args.temperature)
    rows, header, ok = _completeness_rows(names, lin, results, errors, rules)
    ig = None
    if getattr(args, "method", "bbp") == "ig":
        ig = _exact_ig(net, x, lin, args.ig_baseline)
        header += ["IG pieces", "IG err"]
        for row, g in zip(rows, ig):
            row += [g.n_pieces, g.completeness_error]
            ok &= g.completeness_error <= TOLERANCE
    print(f"model: {model}  ({len(net.nodes)} nodes, input {net.input_shape}, "
          f"{net.n_outputs} outputs)")
    print(f"explained: {args.target or 'pred'}; rules {', '.join(rules)}; "
          f"temperature {args.temperature}")
    if net.start.index:
        print(f"from {net.start}: w, b^x and beta are over its output z")
    print(text_table(rows, header))
    print("completeness (SPEC 3: sum beta = b^x, sum w*x + sum beta = f(x), every cut): "
          + (f"all within {as_text(TOLERANCE)} x scale" if ok else "FAILED for some inputs"))
    os.makedirs(args.out, exist_ok=True)
    written = []
    if args.format == "npz" or demo:
        path = os.path.join(args.out, "explanations.npz")
        done = {beta_key(r, args.temperature): np.stack([a.beta for a in results[r]])
                for r in rules}
        write_oracle(path, net, x, model, target=args.target, rules=rules,
                     temperatures=(args.temperature,), betas=done, linear=lin,
                     extra=None if ig is None else _ig_fields(ig, args.ig_baseline, x))
        written.append(path)
    if args.format == "json" and not demo:
        path = os.path.join(args.out, "explanations.json")
        payload = {"model": os.path.basename(model), "target": args.target, "rules": rules,
                   "temperature": args.temperature, "inputs": []}
        for i, name in enumerate(names):
            payload["inputs"].append({
                "name": name, "logits": lin.logits[i].tolist(), "value": float(lin.value[i]),
                "bias_x": float(lin.bias_x[i]), "w": lin.w[i].tolist(),
                "beta": {r: results[r][i].beta.tolist() for r in rules}})
        with open(path, "w") as fh:
            json.dump(payload, fh)
        written.append(path)
    if (args.figure or demo) and images.shape != x.shape:
        print(f"note: no figure: beta over {net.start} does not have the images' shape",
              file=sys.stderr)
    elif args.figure or demo:
        try:
            from .figures import bbp_figure

            n_fig = min(len(x), args.figure_rows)
            images = images[:n_fig]
            gi = np.stack([results[rules[0]][i].grad_input for i in range(n_fig)])
            betas = {r: np.stack([results[r][i].beta for i in range(n_fig)]) for r in rules}
            preds = np.argmax(lin.logits[:n_fig], axis=1)
            row_labels = [f"label {labels[i]}, pred {preds[i]}" if labels is not None
                          else f"{names[i][:14]}\npred {preds[i]}" for i in range(n_fig)]
            path = os.path.join(args.out, "bbp.png")
            extra = None if ig is None else {
                "exact IG": np.stack([g.attributions for g in ig[:n_fig]])}
            bbp_figure(path, images, gi, betas, row_labels,
                       title=f"BBp, T={args.temperature}: {os.path.basename(model)}",
                       extra_maps=extra)
            written.append(path)
        except ImportError as exc:
            print(f"note: no figure: {exc}", file=sys.stderr)
    for p in written:
        print(f"wrote {p}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- certify
def _boundary_text(net, b):
    """A binding constraint, its node numbered as in the full model (``net`` may be cut
    at a start node; ``net.origin`` maps back)."""
    if b is None:
        return "none"
    node = net.nodes[b.node]
    index = b.node if net.origin is None else net.origin[b.node]
    what = (f"breakpoint {b.value:g}" if b.kind == "breakpoint"
            else f"candidate {b.value} overtakes")
    return f"node {index} ({node.op}) element {b.element}: {what}"


def cmd_certify(args):
    net = _load(args.model, args.input_shape)
    x, names = read_inputs(args.inputs, net.input_shape, args.size, args.mean, args.std,
                           args.layout)
    s = resolve_start(net, args.start)
    z0 = from_start(net, np.full(net.input_shape, float(args.baseline)), s)[1]
    rows, report = [], []
    for i in progress(range(len(x)), desc="certify"):
        r = region(net, x[i], args.target, start=s)
        sub = r.network
        entry = {"input": names[i], "pred": int(np.argmax(r.trace.logits[0]))}
        row = [names[i], entry["pred"]]
        for norm in ("l2", "linf"):
            rad = r.radius(norm, method=args.method)
            entry[norm] = {"radius": rad.value, "method": rad.method,
                           "binding": _boundary_text(sub, rad.binding),
                           "constraints": rad.n_constraints}
            row += [rad.value, _boundary_text(sub, rad.binding)]
        seg = r.segment(z0 - r.x)
        entry["segment_to_baseline"] = {"t_lo": seg.t_lo, "t_hi": seg.t_hi,
                                        "binding": _boundary_text(sub, seg.hi)}
        row += [min(seg.t_hi, 1.0), _boundary_text(sub, seg.hi)]
        rows.append(row)
        report.append(entry)
    if args.json:
        print(json.dumps({"model": args.model, "method": args.method,
                          "baseline": float(args.baseline), "start": s,
                          "inputs": report}, indent=1))
        return 0
    kind = "radius" if args.method == "exact" else "radius >="
    print(f"model: {args.model}  ({len(net.nodes)} nodes, input {net.input_shape})")
    if s:
        print(f"from node {s} ({net.nodes[s].name!r}): balls and segments in its output z")
    print(f"linear region R(x) of each input (SPEC 7): the largest L2 / L-inf ball inside "
          f"it ({'exact' if args.method == 'exact' else 'a sound lower bound'}), and how "
          f"far towards the constant input {float(args.baseline):g} it reaches")
    print(text_table(rows, ["input", "pred", f"L2 {kind}", "L2 binding", f"Linf {kind}",
                            "Linf binding", "to baseline", "binding"]))
    return 0


# ---------------------------------------------------------------------------- verify
def cmd_verify(args):
    if getattr(args, "out_dir", None):
        return cmd_run(args)

    report = {"model": args.model}
    try:
        net = _load(args.model, args.input_shape)
    except NotPiecewiseLinearError as exc:
        bad = nonlinear_nodes(args.model)
        report.update(piecewise_linear=False, nonlinear_nodes=[list(b) for b in bad] or
                      [[exc.op_type, exc.node_name]], reason=str(exc).splitlines()[0], ok=False)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{args.model}: NOT piecewise linear")
            for op, name in report["nonlinear_nodes"]:
                print(f"  {op} at node {name!r}")
        return 1
    report["piecewise_linear"] = True
    # Inputs are checked a chunk at a time: --n-random draws each chunk as it goes.
    sources = []
    if args.inputs:
        sources.append(in_chunks(read_inputs([args.inputs], net.input_shape)[0]))
    if args.n_random:
        sources.append(RandomInputs(net.input_shape, args.n_random, seed=args.seed))
    if not sources:
        raise ValueError("nothing to check: give --inputs FILE or --n-random N > 0")
    report.update(verify(args.model, net, _Chained(sources), rules=RULE_NAMES,
                         progress=progress))
    report["nodes"] = [{"name": n.name, "op": n.op, "kind": n.kind, "shape": list(n.shape),
                        "activation": n.activation.name if n.activation else None,
                        "nnz": n.nnz, "bytes": n.nbytes} for n in net.nodes]
    report["notices"] = net.notices
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(net.summary())
        print()
        exact = f"{as_text(TOLERANCE)} x scale"
        rows = [["forward vs onnxruntime", f"{report['forward_error']:.3g} x tolerance",
                 f"rtol {as_text(FORWARD_RTOL)}, atol {as_text(FORWARD_ATOL)} x scale",
                 _ok(report["forward_error"] <= 1)],
                ["w.x + b^x = f(x)", f"{report['linear_error']:.3g}", exact,
                 _ok(report["linear_error"] <= TOLERANCE)]]
        for rule, e in report["bbp_error"].items():
            rows.append([f"BBp completeness ({rule})", f"{e:.3g}", exact, _ok(e <= TOLERANCE)])
        print(text_table(rows, ["check", f"worst over {report['n_inputs']} inputs",
                                "tolerance", "result"]))
        print("verified: OK" if report["ok"] else "verified: FAILED")
    return 0 if report["ok"] else 1


def _ok(b):
    return "ok" if b else "FAIL"


class _Chained:
    """Batches of several sized sources, one after the other (sized, for progress)."""

    def __init__(self, sources):
        self.sources = sources

    def __len__(self):
        return sum(len(s) for s in self.sources)

    def __iter__(self):
        for s in self.sources:
            yield from s


# ----------------------------------------------------------------- oracle / compare
def cmd_oracle(args):
    if getattr(args, "out_dir", None):
        return cmd_run(args)

    net = _load(args.model, args.input_shape)
    x, _ = read_inputs(args.inputs, net.input_shape, args.size, args.mean, args.std,
                       args.layout)
    net, x = from_start(net, x, args.start)
    rules = list(RULE_NAMES) if args.rule == "both" else [args.rule]
    fields = write_oracle(args.output, net, x, args.model, target=args.target, rules=rules,
                          temperatures=args.temperatures, layers=args.layers,
                          progress=progress)
    print(f"wrote {oracle_path(args.output)}: {len(x)} inputs, {len(fields)} fields "
          f"(rules {', '.join(rules)}; T = {', '.join(map(str, args.temperatures))})"
          + (f"; from {net.start}, x holds its output" if net.start.index else ""))
    return 0


def cmd_compare(args):
    rows = compare(args.golden, args.candidate, args.rtol, args.atol)
    ok = all(r["ok"] for r in rows)
    if args.json:
        print(json.dumps({"ok": ok, "rtol": args.rtol, "atol": args.atol, "fields": rows},
                         indent=2))
    else:
        table = [[r["field"], "x".join(map(str, r["shape"])) or "()",
                  "-" if r["max_abs"] is None else f"{r['max_abs']:.3g}",
                  "-" if r["max_rel"] is None else f"{r['max_rel']:.3g}",
                  ("ok" if r["ok"] else "FAIL") + (f" ({r['why']})" if r["why"] else "")]
                 for r in rows]
        print(text_table(table, ["field", "shape", "max abs err", "max rel err", "result"]))
        print(f"{sum(r['ok'] for r in rows)} of {len(rows)} fields pass "
              f"(rtol {args.rtol:g}, atol {args.atol:g}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


# ------------------------------------------------------- evaluate / bias-report
def _labelled_data(path, net, n=None, need_labels=True):
    """Arrays ``x`` (n, *input_shape) and ``y`` (n,) of an .npz file (``y`` optional
    unless ``need_labels``); the first ``n`` only if given."""
    z = read_npz(path, "data file")
    if "x" not in z:
        raise ValueError(f"{path}: expected an .npz with arrays x (n, "
                         f"{', '.join(map(str, net.input_shape))}) and y (n,)")
    x = np.asarray(z["x"])
    y = np.asarray(z["y"]) if "y" in z else None
    if need_labels and y is None:
        raise ValueError(f"{path}: no labels: the .npz needs an array y (n,) of class indices")
    if n is not None:
        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        x, y = x[:n], (None if y is None else y[:n])
    if x.ndim != len(net.input_shape) + 1 or x.shape[1:] != tuple(net.input_shape):
        raise ValueError(f"{path}: x has shape {x.shape}, expected (n, "
                         f"{', '.join(map(str, net.input_shape))})")
    if y is not None:
        y = check_labels(y, len(x), net.n_outputs, where=f"{path}: y")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{path}: x must be numeric, got dtype {x.dtype}")
    return x.astype(np.float64), y


def cmd_evaluate(args):
    if getattr(args, "out_dir", None):
        return cmd_run(args)
    from .evaluate import boxplot, evaluate

    net = _load(args.model)
    x, y = _labelled_data(args.data, net, args.n, need_labels=False)
    res = evaluate(args.model, x, args.methods, labels=y, net=net, baseline=args.baseline,
                   ties=args.ties, never_flip=args.never_flip, noise_pool=args.noise_pool,
                   seed=args.seed, chunk=args.chunk)
    written = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        written += [res.to_csv(os.path.join(args.out, "evaluation.csv")),
                    res.to_json(os.path.join(args.out, "evaluation.json"), args.metric)]
        try:
            written.append(boxplot(res, os.path.join(args.out, "evaluation.png"),
                                   metrics=("de_minus", "de_delta", "e_minus"),
                                   title=os.path.basename(args.model)))
        except ImportError as exc:
            print(f"note: no figure: {exc}", file=sys.stderr)
    if args.json:
        d = res.to_dict(args.metric)
        d.pop("images")
        d["written"] = written
        print(json.dumps(d, indent=2))
        return 0
    _print_evaluation(args, res)
    for p in written:
        print(f"wrote {p}")
    return 0


def _print_evaluation(args, res):
    """The tables of ``refbbp evaluate`` (also after a data-set run)."""
    comps = res.comparisons(args.metric)
    base = f"{args.baseline:g}" if isinstance(args.baseline, float) else args.baseline
    print(f"model: {args.model}  ({res.n} images, baseline {base}, ties "
          f"{args.ties}, never-flip {args.never_flip}, noise pool {args.noise_pool}, seed "
          f"{args.seed}; {res.config['forward_passes']:,} forward passes)")
    rows, header = res.table()
    print(text_table(rows, header))
    print()
    print(f"Wilcoxon signed-rank tests on {args.metric}, paired per image (median of a - b):")
    print(text_table([[c["a"], c["b"], c["median_difference"], c["statistic"],
                       f"{c['pvalue']:.3g}", c["n"]] for c in comps],
                     ["a", "b", "median diff", "statistic", "p-value", "n"]))


def cmd_bias_report(args):
    if getattr(args, "out_dir", None):
        return cmd_run(args)

    net = _load(args.model)
    x, y = _labelled_data(args.data, net, args.n, need_labels=True)
    rep = bias_importance(net, x, y, scales=args.scales, shifts=args.shifts,
                          batch_size=args.batch_size, start=args.start)
    if args.json:
        print(json.dumps({"model": args.model, **rep.to_dict()}, indent=2))
        return 0
    _print_bias_report(args, rep)
    return 0


def _print_bias_report(args, rep):
    """The tables of ``refbbp bias-report`` (also after a data-set run)."""
    print(f"model: {args.model}  ({rep.n} labelled inputs)")
    rows, header = rep.table()
    print(text_table(rows, header))
    b = rep.bias_abs
    print(f"predicted class: median |b^x| {b['median_abs_bias']:.3g}, median |W^x x| "
          f"{b['median_abs_wx']:.3g}, median |b^x| / (|W^x x| + |b^x|) "
          f"{b['median_bias_share']:.3g}")
    for line in rep.notes():
        print(line)
    if rep.scaled or rep.shifted:
        print()
        rows, header = rep.robustness_table()
        print(text_table(rows, header))


# ------------------------------------------------------------------- dataset runs
def _run_task(args):
    """The runner's task, options and input source of a command's arguments."""
    rule = getattr(args, "rule", "both")
    if args.command == "explain":
        return "explain", dict(target=args.target, rule=rule, temperature=args.temperature,
                               start=args.start, method=args.method,
                               ig_baseline=args.ig_baseline), args.inputs
    if args.command == "oracle":
        return "oracle", dict(target=args.target, rule=rule, temperatures=args.temperatures,
                              layers=args.layers, start=args.start), args.inputs
    if args.command == "verify":
        if not args.inputs:
            raise ValueError("verify --out-dir runs over a data set: give --inputs SOURCE")
        return "verify", dict(rule="both"), [args.inputs]
    if args.command == "evaluate":
        return "evaluate", dict(methods=args.methods, baseline=args.baseline, ties=args.ties,
                                never_flip=args.never_flip, noise_pool=args.noise_pool,
                                seed=args.seed, chunk=args.chunk), [args.data]
    return "bias-report", dict(scales=args.scales, shifts=args.shifts,
                               batch_size=args.batch_size, start=args.start), [args.data]


def cmd_run(args):
    """A command over a data set with the sharded runner (``--out-dir``)."""
    from .runs import run
    from .runs.executors import make_executor

    task, options, inputs = _run_task(args)
    if len(inputs) != 1:
        raise ValueError(f"--out-dir runs over one input source (a folder of images, a .npy, "
                         f"an .npz or a Zarr array), got {len(inputs)}")
    executor = make_executor(args.workers, args.scheduler, args.threads)
    image = {k: getattr(args, k) for k in ("size", "mean", "std", "layout") if hasattr(args, k)}
    regular_file(args.model, "model", max_bytes=MAX_MODEL_BYTES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run(task, args.model, inputs[0], args.out_dir, executor=executor,
                chunk_size=args.chunk_size, resume=args.resume, progress=None,
                input_shape=getattr(args, "input_shape", None), n=getattr(args, "n", None),
                image_options=image, **options)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    if task == "oracle":
        from .io.oracle import oracle_path, save_oracle
        fields = {k: v for k, v in r.rows().items() if k != "index"}
        net = _load(args.model, getattr(args, "input_shape", None)).from_node(args.start)
        save_oracle(oracle_path(args.output), net, fields, args.model, args.target,
                    options["rule"] if options["rule"] != "both" else list(RULE_NAMES),
                    args.temperatures)
        r.written.append(oracle_path(args.output))
    failed = r.failed
    summary = r.summary
    if getattr(args, "json", False):
        print(json.dumps({"run": args.out_dir, "task": task, "summary": summary,
                          "failed": {str(k): v for k, v in failed.items()},
                          "written": r.written}, indent=2))
    else:
        print(f"run: {args.out_dir}  ({task}, {r.n} inputs, chunks of {args.chunk_size}, "
              f"{executor.name}; {r.n - len(failed)} done, {len(failed)} failed)")
        if task == "evaluate":
            _print_evaluation(args, r.task.evaluation(r.rows(), r))
        elif task == "bias-report":
            _print_bias_report(args, r.task.report(r.rows()))
        else:
            rows = [[k, json.dumps(v)] for k, v in summary.items() if k not in ("images",)]
            print(text_table(rows, ["summary", "value"]))
        for i, f in sorted(failed.items())[:20]:
            print(f"failed: input {i} ({f['input']}): {f['error']}")
        if len(failed) > 20:
            print(f"... and {len(failed) - 20} more failed inputs (see manifest.json)")
        for p in r.written:
            print(f"wrote {p}")
    return 0 if summary.get("ok", True) and not failed else 1


def cmd_check_run(args):
    from .runs import check_run

    problems = check_run(args.run_dir)
    if args.json:
        print(json.dumps({"run": args.run_dir, "ok": not problems, "problems": problems},
                         indent=2))
    else:
        for p in problems:
            print(f"{args.run_dir}: {p}")
        print(f"{args.run_dir}: " + ("OK: complete, every shard present and intact"
                                    if not problems else f"FAILED: {len(problems)} problem(s)"))
    return 0 if not problems else 1


def _add_run_options(p):
    g = p.add_argument_group("data-set runs (sharded, resumable; see README, Datasets and "
                             "Dask)")
    g.add_argument("--out-dir", default=None,
                   help="run over a data set (a folder of images, .npy, .npz or Zarr) and "
                        "write shards and a manifest to this folder")
    g.add_argument("--chunk-size", type=_count, default=64, help="inputs per shard (64)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir where it stopped")
    g.add_argument("--workers", type=_count, default=None,
                   help="compute on a local Dask cluster of N worker processes "
                        "(pip install \"refbbp[dask]\")")
    g.add_argument("--scheduler", default=None,
                   help="compute on the Dask cluster at this address (tcp://host:8786)")
    g.add_argument("--threads", type=_count, default=None,
                   help="kernel threads per chunk (default: all in-process, 1 per Dask "
                        "worker)")


# ------------------------------------------------------------------------------ main
def _add_input_options(p):
    p.add_argument("--size", type=_count, nargs=2, metavar=("H", "W"),
                   help="resize images to H x W (default: the model's input size)")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0],
                   help="per-channel mean subtracted from images scaled to [0, 1]")
    p.add_argument("--std", type=float, nargs="+", default=[1.0],
                   help="per-channel std images are divided by")
    p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw",
                   help="where the model expects image channels (default nchw)")
    p.add_argument("--input-shape", type=_count, nargs="+", default=None,
                   help="shape of one input without batch axis, for models with symbolic dims")


def build_parser():
    parser = _Parser(
        prog="refbbp", description="Exact local linear models and bias attribution (BBp) "
        "for piecewise-linear ONNX models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")

    p = sub.add_parser("demo", help="explain bundled digits with the bundled model")
    p.add_argument("--out", default="refbbp-demo", help="output folder (default ./refbbp-demo)")
    p.add_argument("--temperature", type=_temperature, default=1.0)
    p.add_argument("--figure-rows", type=_count, default=8,
                   help="inputs shown in the figure")
    common(p)
    p.set_defaults(func=lambda a: cmd_explain(a, demo=True), target=None, rule="both",
                   format="npz", figure=True, method="bbp", ig_baseline=0.0, start=None)

    p = sub.add_parser("explain", help="bias attribution of inputs")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("inputs", nargs="+", help=".npy/.npz arrays or image files")
    p.add_argument("--target", type=_target, default=None,
                   help="class index, 'pred' (default) or 'top2' (top-1 minus top-2 logit)")
    p.add_argument("--rule", choices=RULE_NAMES + ("both",), default="both")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="softmax temperature T > 0, 0 (hard) or inf (uniform); default 1")
    p.add_argument("--out", default="refbbp-out", help="output folder (default ./refbbp-out)")
    p.add_argument("--format", choices=("npz", "json"), default="npz")
    p.add_argument("--figure", action="store_true", help="write bbp.png (needs matplotlib)")
    p.add_argument("--start", default=None, metavar="NODE",
                   help="explain from this cut node's output instead of the input (SPEC 8): "
                        "a node index or name, or 'after-normalisation'")
    p.add_argument("--figure-rows", type=_count, default=8,
                   help="inputs shown in the figure")
    p.add_argument("--method", choices=("bbp", "ig"), default="bbp",
                   help="'ig': also exact Integrated Gradients (SPEC 7) beside BBp, in the "
                        "table, the NPZ and the figure")
    p.add_argument("--ig-baseline", type=float, default=0.0,
                   help="the constant input IG starts from (default 0), in the model's input "
                        "space (after --mean/--std)")
    _add_input_options(p)
    _add_run_options(p)
    common(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("certify", help="the linear region around each input: L2 and L-inf "
                       "radii, binding constraints, the segment towards a baseline")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("inputs", nargs="+", help=".npy/.npz arrays or image files")
    p.add_argument("--method", choices=("exact", "bound"), default="exact",
                   help="'exact' (about n_inputs forward passes per input) or 'bound' (a "
                        "sound lower bound, about one forward pass)")
    p.add_argument("--baseline", type=float, default=0.0,
                   help="constant input the segment heads towards (default 0)")
    p.add_argument("--start", default=None, metavar="NODE",
                   help="the region over this cut node's output instead of the input "
                        "(SPEC 8): a node index or name, or 'after-normalisation'")
    p.add_argument("--target", type=_target, default=None,
                   help="class index, 'pred' (default) or 'top2'")
    p.add_argument("--json", action="store_true")
    _add_input_options(p)
    common(p)
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("verify", help="check a model: piecewise linear, exact, matches onnxruntime")
    p.add_argument("model")
    p.add_argument("--inputs", help="a .npy/.npz file (or image) of inputs to check on")
    p.add_argument("--n-random", type=lambda s: _count(s, 0, MAX_RANDOM_INPUTS),
                   default=8, help=f"also check N random inputs uniform in [0, 1) (default 8, "
                   f"at most {MAX_RANDOM_INPUTS:,}; drawn and checked a chunk at a time)")
    p.add_argument("--seed", type=lambda s: _count(s, 0), default=0)
    p.add_argument("--input-shape", type=_count, nargs="+", default=None)
    p.add_argument("--json", action="store_true")
    _add_run_options(p)
    common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("oracle", help="write golden float64 outputs for other implementations")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True,
                   help="the .npz file to write (.npz is appended to a name without it, "
                        "as numpy.savez does)")
    p.add_argument("--target", type=_target, default=None)
    p.add_argument("--rule", choices=RULE_NAMES + ("both",), default="both")
    p.add_argument("--temperatures", type=_temperature, nargs="+", default=[1.0])
    p.add_argument("--layers", action="store_true", help="also every node's h, g, b^x, beta")
    p.add_argument("--start", default=None, metavar="NODE",
                   help="explain from this cut node's output instead of the input (SPEC 8): "
                        "a node index or name, or 'after-normalisation'")
    _add_input_options(p)
    _add_run_options(p)
    common(p)
    p.set_defaults(func=cmd_oracle)

    p = sub.add_parser("compare", help="compare a candidate oracle file with a golden one")
    p.add_argument("golden")
    p.add_argument("candidate")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-9)
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="evaluate saliency methods by pixel removal "
                       "(companion paper section 4)")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("data", help=".npz with arrays x (n, *input_shape) and, optionally, y (n,)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"{', '.join(method_syntaxes())} "
                        f"(default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--n", type=int, default=None, help="only the first N images")
    p.add_argument("--out", default=None,
                   help="folder for evaluation.csv, evaluation.json and evaluation.png")
    p.add_argument("--metric", default="de_delta",
                   choices=("e_minus", "e_plus", "e_delta", "de_minus", "de_plus", "de_delta"),
                   help="metric of the Wilcoxon tests (default de_delta)")
    p.add_argument("--baseline", type=_baseline, default="0",
                   help="value of removed pixels: a number (default 0), 'mean' (per-channel "
                        "mean of the images), 'blur' or 'blur:SIGMA' (a Gaussian-blurred "
                        f"copy of the image, sigma {BLUR_SIGMA:g} pixels by default)")
    p.add_argument("--ties", choices=TIES, default="index",
                   help="order of equally salient pixels: pixel index (default) or a "
                        "random permutation per image (seeded by --seed)")
    p.add_argument("--never-flip", choices=NEVER_FLIP, default="count-as-1",
                   help="an image whose class never changes: e = 1 (default), or left out "
                        "of that method's statistics (the count is reported)")
    p.add_argument("--noise-pool", type=_count, default=1, metavar="K",
                   help="noise baseline: the mean of e over the maps of K other images "
                        "(default 1)")
    p.add_argument("--seed", type=lambda s: _count(s, 0), default=0,
                   help="seed of the noise maps and 'random'")
    p.add_argument("--chunk", type=_count, default=32,
                   help="prefixes scored per scan and round")
    p.add_argument("--json", action="store_true")
    _add_run_options(p)
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bias-report", help="accuracy of the logits, of W^x x alone, of b^x "
                       "alone and with every bias zeroed (BBp Table 1)")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("data", help=".npz with arrays x (n, *input_shape) and y (n,) labels")
    p.add_argument("--scales", type=float, nargs="+", default=[],
                   help="also accuracy on x * a for each a")
    p.add_argument("--shifts", type=float, nargs="+", default=[],
                   help="also accuracy on x + c for each c")
    p.add_argument("--n", type=int, default=None, help="only the first N inputs")
    p.add_argument("--batch-size", type=_count, default=256)
    p.add_argument("--start", default=None, metavar="NODE",
                   help="also 'only W^z z' and 'only b^z' from z, the output of this cut "
                        "node (SPEC 8): a node index or name, or 'after-normalisation'")
    p.add_argument("--json", action="store_true")
    _add_run_options(p)
    common(p)
    p.set_defaults(func=cmd_bias_report)

    p = sub.add_parser("check-run", help="check a run folder: complete, every shard present "
                       "and unaltered")
    p.add_argument("run_dir", help="the --out-dir of a run")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(func=cmd_check_run)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ``refbbp: error:`` line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"refbbp: error: {message} (see {self.prog} --help)\n")


#: Errors refbbp expects on bad input; anything else is reported as unexpected.
_EXPECTED = (RefbbpError, OSError, ValueError, TypeError, MemoryError, ImportError,
             FloatingPointError, NotImplementedError)


def error_message(exc):
    """The one line ``main`` prints (after ``refbbp: error: ``) for an exception."""
    if isinstance(exc, OSError) and not isinstance(exc, RefbbpError) and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        msg = str(exc).strip()
        msg = msg.splitlines()[0] if msg else ""
    if isinstance(exc, MemoryError) and not isinstance(exc, RefbbpError):
        msg = "out of memory" + (f": {msg}" if msg else "")
    if not isinstance(exc, _EXPECTED):
        msg = (f"unexpected {exc.__class__.__name__}" + (f": {msg}" if msg else "")
               + " (rerun with --debug for the traceback)")
    return msg or exc.__class__.__name__


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "input_shape", None):
        args.input_shape = tuple(args.input_shape)
    for name in ("mean", "std"):
        if hasattr(args, name) and len(getattr(args, name)) == 1:
            setattr(args, name, getattr(args, name)[0])
    keep_freed_memory()    # the CLI owns its process: glibc keeps BBp's buffers warm
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("refbbp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line (the contract of the module)
        if args.debug:
            raise
        print(f"refbbp: error: {error_message(exc)}", file=sys.stderr)
        return 2
