"""What a chunk of a run computes, per task, with the functions the CLI commands call.

Each task is one class: its ``options`` (all of them go to the manifest), its ``stages``,
``compute(state, stage, x, labels, extra)`` -- the arrays of a chunk of inputs -- and
``summary(rows)``, the reduction over the whole run's shards.

* ``explain``: the local linear model and BBp of every input for each rule
  (:func:`explain_inputs`, as ``refbbp explain``), with each input's completeness error;
  from a start node (:func:`refbbp.network.start.from_start`, SPEC 8) and with exact
  IG (:func:`exact_ig`, :func:`ig_fields`) if asked.
* ``oracle``: the golden fields of :func:`refbbp.io.oracle.oracle_fields` (from a start
  node if asked).
* ``verify``: :func:`refbbp.io.verify.verify` of each chunk; the run's worst errors are
  the worst over its chunks.
* ``evaluate``: two stages. ``maps``: each image's class and saliency maps
  (:func:`refbbp.evaluate.protocol.group_maps`; the ``"random"`` maps are drawn from the
  one seeded generator advanced to the chunk's first image, so they are those of the
  whole set). ``scans``: the removal scans (:func:`~refbbp.evaluate.protocol.removal_metrics`)
  of each image with its own maps and the maps of its noise sources among the *whole*
  set (:func:`refbbp.evaluate.noise_sources`, known up front from ``n``, the pool size
  and the seed): the driver reads the partners' maps from the first stage's shards and
  sends them with the chunk. The options that depend on the whole set are settled by the
  driver: the ``"mean"`` baseline once before the run (:meth:`Evaluate.prepare`,
  :func:`~refbbp.evaluate.options.channel_means` over the inputs that can be read,
  recorded as the option ``baseline_values``), random tie keys drawn in turn from the
  one stream (:func:`~refbbp.evaluate.options.tie_key_stream`) and sent with each chunk;
  a ``"blur"`` baseline is per image, computed in the chunk. The result does not depend
  on the executor or the number of workers; it equals :func:`refbbp.evaluate.evaluate`
  with the same options bit for bit when the chunk size is a multiple of ``group`` (32),
  the groups ``evaluate`` uses.
* ``bias-report``: :func:`refbbp.studies.bias_study.bias_rows` per chunk (predicted
  class of each variant, from ``x`` and, with a start node, from ``z``, ``|b^x|``,
  ``|W^x x|``), reduced by :func:`~refbbp.studies.bias_study.report_from_rows` over the
  whole set (accuracies, agreements, ``argmax_b`` counts).

Float64 passes over a batch may differ in the last bits with the batch's size (BLAS), so
a run's numbers depend on its chunk size (recorded in the manifest; resuming with another
is refused), never on the executor, the number of workers or threads, or on resuming.
"""

from __future__ import annotations

import numpy as np

from .._progress import progress
from ..bbp import bbp
from ..bbp.rules import RULE_NAMES
from ..evaluate import DEFAULT_METHODS, noise_sources
from ..evaluate.options import (baseline_images, channel_means, check_never_flip,
                                check_ties, parse_baseline, tie_key_stream)
from ..evaluate.protocol import (finish_evaluation, group_maps, n_pixels, random_draws,
                                 removal_metrics)
from ..errors import RunError
from ..evaluate.registry import resolve
from ..io.oracle import beta_key, oracle_fields
from ..io.verify import verify
from ..network.region import integrated_gradients
from ..network.start import from_start, resolve_start
from ..studies.bias_study import bias_rows, report_from_rows, start_of
from ..tolerance import TOLERANCE

__all__ = ["TASKS", "exact_ig", "explain_inputs", "ig_fields", "make_task"]


def exact_ig(net, x, lin, baseline, enabled=None):
    """Exact Integrated Gradients of every input, explaining the vector ``v`` BBp
    explained (``lin.target``), from a constant ``baseline`` input."""
    x0 = np.full(net.input_shape, float(baseline))
    return [integrated_gradients(net, x[i], baseline=x0, target=lin.target[i])
            for i in progress(range(len(x)), desc="exact IG", enabled=enabled)]


def ig_fields(ig, baseline, x):
    """The NPZ fields of exact IG (``refbbp/io/oracle.py``'s docstring)."""
    return {"ig": np.stack([g.attributions for g in ig]),
            "ig_baseline": np.full(x.shape, float(baseline)),
            "ig_pieces": np.array([g.n_pieces for g in ig], np.float64),
            "ig_completeness_error": np.array([g.completeness_error for g in ig])}


def explain_inputs(net, x, target, rules, temperature, progress_desc="explain",
                   enabled=None):
    """BBp of every input for every rule, with the completeness errors of each.

    Returns
    -------
    lin : LocalLinearModel
        ``net.linearize(x, target)``.
    results : dict of str to list of Attribution
    errors : list of dict of str to float
        Per input, the worst completeness error of each rule.
    """
    results = {r: [] for r in rules}
    errors = []
    lin = net.linearize(x, target)
    for i in progress(range(len(x)), desc=progress_desc, enabled=enabled):
        row = {}
        for rule in rules:
            # lin.target[i] is the vector v explained for input i, whatever the spec.
            att = bbp(net, x[i], target=lin.target[i], rule=rule, temperature=temperature)
            results[rule].append(att)
            row[rule] = att.completeness().worst
        errors.append(row)
    return lin, results, errors


def _rules(rule):
    return list(RULE_NAMES) if rule == "both" else ([rule] if isinstance(rule, str)
                                                    else list(rule))


class Task:
    """A task of the runner (module docstring). Subclasses set ``name``, ``stages``
    and ``needs_labels`` and define ``compute`` and ``summary``."""

    name = ""
    stages = ("main",)
    needs_labels = False
    uses_runtime = False

    def __init__(self, **options):
        self.options = options

    def prepare(self, net, source):
        """Called by the driver before the run with the network and the whole input
        source: checks the options against them and adds what is computed from them
        once (recorded in the manifest, e.g. the evaluation's dataset-mean baseline)."""

    def extra(self, stage, lo, hi, run):
        """Per-input arrays the driver sends with chunk ``lo:hi`` of ``stage``."""
        return {}

    #: Prefixes of the fields :meth:`summary` reads (None: all).
    summary_fields = None

    def skip(self, stage, failed, n):
        """Inputs of the whole set (``n``) that ``stage`` cannot compute, ``{i: error}``,
        given the inputs ``failed`` so far (by default, those)."""
        return {i: e["error"] for i, e in failed.items()}

    def compute(self, state, stage, x, labels, extra):
        raise NotImplementedError

    def summary(self, rows, run):
        raise NotImplementedError

    def finish(self, run):
        """Files written when the run is complete (default none)."""
        return []


class Explain(Task):
    name = "explain"
    summary_fields = ("completeness/", "ig_completeness_error")

    def __init__(self, target=None, rule="both", temperature=1.0, start=None, method="bbp",
                 ig_baseline=0.0):
        if method not in ("bbp", "ig"):
            raise ValueError(f"method must be 'bbp' or 'ig', got {method!r}")
        super().__init__(target=target, rules=_rules(rule), temperature=float(temperature),
                         start=start, method=method, ig_baseline=float(ig_baseline))

    def prepare(self, net, source):
        resolve_start(net, self.options["start"])         # a bad start is refused up front

    def compute(self, state, stage, x, labels, extra):
        o = self.options
        net, x = from_start(state["net"], x, o["start"])
        lin, results, errors = explain_inputs(net, x, o["target"], o["rules"],
                                              o["temperature"], enabled=False)
        betas = {beta_key(r, o["temperature"]): np.stack([a.beta for a in results[r]])
                 for r in o["rules"]}
        out = oracle_fields(net, x, o["target"], o["rules"], (o["temperature"],),
                            betas=betas, linear=lin)
        for r in o["rules"]:
            out[f"completeness/{r}"] = np.array([e[r] for e in errors])
        if o["method"] == "ig":
            out.update(ig_fields(exact_ig(net, x, lin, o["ig_baseline"], enabled=False),
                                 o["ig_baseline"], x))
        return out, {}

    def summary(self, rows, run):
        worst = {r: float(rows[f"completeness/{r}"].max(initial=0.0))
                 for r in self.options["rules"]}
        out = {"n_done": int(len(rows["index"])), "completeness_error": worst}
        if self.options["method"] == "ig":
            out["ig_completeness_error"] = float(
                rows.get("ig_completeness_error", np.zeros(0)).max(initial=0.0))
        out["ok"] = all(e <= TOLERANCE for e in [*worst.values(),
                                                 out.get("ig_completeness_error", 0.0)])
        return out


class Oracle(Explain):
    name = "oracle"
    summary_fields = ()

    def __init__(self, target=None, rule="both", temperatures=(1.0,), layers=False,
                 start=None):
        Task.__init__(self, target=target, rules=_rules(rule),
                      temperatures=[float(t) for t in temperatures], layers=bool(layers),
                      start=start)

    def compute(self, state, stage, x, labels, extra):
        o = self.options
        net, x = from_start(state["net"], x, o["start"])
        return oracle_fields(net, x, o["target"], o["rules"], o["temperatures"],
                             o["layers"]), {}

    def summary(self, rows, run):
        return {"n_done": int(len(rows["index"])), "ok": True}


class Verify(Task):
    name = "verify"
    summary_fields = ("batch/",)
    uses_runtime = True

    def __init__(self, rule="both", temperature=1.0):
        super().__init__(rules=_rules(rule), temperature=float(temperature))

    def compute(self, state, stage, x, labels, extra):
        rep = verify(state["proto"], state["net"], x, rules=self.options["rules"],
                     temperature=self.options["temperature"])
        batch = {k: rep[k] for k in ("forward_error", "forward_max_abs", "linear_error")}
        batch.update({f"bbp_error/{r}": e for r, e in rep["bbp_error"].items()})
        return {}, batch

    def summary(self, rows, run):
        def worst(k):
            return float(rows[f"batch/{k}"].max(initial=0.0))
        rep = {"n_inputs": int(len(rows["index"])), "forward_error": worst("forward_error"),
               "forward_max_abs": worst("forward_max_abs"),
               "linear_error": worst("linear_error"),
               "bbp_error": {r: worst(f"bbp_error/{r}") for r in self.options["rules"]}}
        rep["ok"] = bool(rep["n_inputs"] > 0 and rep["forward_error"] <= 1
                         and rep["linear_error"] <= TOLERANCE
                         and all(e <= TOLERANCE for e in rep["bbp_error"].values()))
        return rep


class BiasReport(Task):
    name = "bias-report"
    needs_labels = True

    def __init__(self, scales=(), shifts=(), batch_size=256, start=None):
        super().__init__(scales=[float(a) for a in scales], shifts=[float(c) for c in shifts],
                         batch_size=int(batch_size), start=start)
        self.n_outputs, self.start = None, None

    def prepare(self, net, source):
        self.n_outputs, self.start = net.n_outputs, start_of(net, self.options["start"])

    def compute(self, state, stage, x, labels, extra):
        o = self.options
        rows = bias_rows(state["net"], x, scales=o["scales"], shifts=o["shifts"],
                         batch_size=o["batch_size"], progress=False, start=o["start"])
        rows["label"] = np.asarray(labels, np.int64)
        return rows, {}

    def report(self, rows):
        """The :class:`~refbbp.studies.bias_study.BiasReport` of the run's rows (after
        :meth:`prepare`; a reopened run has its report as ``summary``)."""
        if self.n_outputs is None:
            raise RunError("the bias report of a run is made by run(); a reopened run "
                           "(open_run) has it as .summary")
        o = self.options
        return report_from_rows(rows, rows["label"], n_outputs=self.n_outputs,
                                start=self.start, scales=o["scales"], shifts=o["shifts"])

    def summary(self, rows, run):
        return self.report(rows).to_dict()


class Evaluate(Task):
    name = "evaluate"
    stages = ("maps", "scans")
    uses_runtime = True

    def __init__(self, methods=DEFAULT_METHODS, baseline=0.0, ties="index",
                 never_flip="count-as-1", noise_pool=1, seed=0, chunk=32, group=32,
                 max_batch=4096, baseline_values=None):
        methods = list(methods)
        if not methods:
            raise ValueError("no methods to evaluate")
        resolve(methods)                              # a bad name is refused up front
        if parse_baseline(baseline)[0] == "value":    # JSON for the manifest
            baseline = np.asarray(parse_baseline(baseline)[1], np.float64)
            baseline = float(baseline) if baseline.ndim == 0 else baseline.tolist()
        super().__init__(methods=methods, baseline=baseline, ties=check_ties(ties),
                         never_flip=check_never_flip(never_flip), noise_pool=int(noise_pool),
                         seed=int(seed), chunk=int(chunk), group=int(group),
                         max_batch=int(max_batch), baseline_values=baseline_values)

    def prepare(self, net, source):
        o = self.options
        noise_sources(len(source), o["noise_pool"], o["seed"])    # refused up front
        kind = parse_baseline(o["baseline"])[0]
        if kind == "value":                                       # its shape, likewise
            baseline_images(self._baseline(), np.zeros((0,) + tuple(net.input_shape)))
        if kind == "mean":
            # the mean over the whole set, once, from the images that can be read
            def read(a, b):
                x, _, unread = source.read(a, b)
                ok = [i for i in range(len(x)) if i not in unread
                      and np.all(np.isfinite(x[i]))]
                return x[ok]
            o["baseline_values"] = [float(v) for v in channel_means(read, len(source))]

    def _baseline(self):
        b = self.options["baseline"]
        return np.asarray(b, np.float64) if isinstance(b, list) else b

    def _baseline_images(self, x):
        return baseline_images(self._baseline(), x, self.options["baseline_values"])

    def names(self):
        return [name for name, _, _ in resolve(self.options["methods"])]

    def partners(self, n):
        """Each image's noise sources, shape (n, noise_pool), as :func:`evaluate` pairs
        them (:func:`~refbbp.evaluate.noise_sources` of the whole set)."""
        return noise_sources(n, self.options["noise_pool"], self.options["seed"])

    def skip(self, stage, failed, n):
        out = super().skip(stage, failed, n)
        if stage == "scans" and failed:
            perm = self.partners(n)
            for i in np.flatnonzero(np.isin(perm, list(failed)).any(axis=1)):
                bad = [int(j) for j in perm[i] if int(j) in failed]
                out.setdefault(int(i), f"its noise source, input {bad[0]}, failed")
        return out

    def extra(self, stage, lo, hi, run):
        if stage == "maps":
            return {"first": np.arange(lo, hi)}
        perm = self.partners(run.n)[lo:hi]
        own = run.rows("maps", np.arange(lo, hi))
        partner = run.rows("maps", perm.ravel())
        out = {"predicted": own["predicted"]}
        for m in self.names():
            out[f"map/{m}"] = own[f"map/{m}"]
            out[f"partner/{m}"] = partner[f"map/{m}"].reshape(
                perm.shape + own[f"map/{m}"].shape[1:])
        if self.options["ties"] == "random":
            out["ties"] = self._tie_keys(run, lo, hi)
        return out

    def _tie_keys(self, run, lo, hi):
        """Rows ``lo:hi`` of :func:`~refbbp.evaluate.options.tie_keys` of the whole set,
        drawn in turn on the driver (chunks are sent in order: one pass over the keys)."""
        pos, keys = run.cache.get("ties", (None, None))
        if pos is None or pos > lo:
            shape = run.manifest.data["model"]["input_shape"]
            pos, keys = 0, tie_key_stream(n_pixels(shape), self.options["seed"])
        for _ in range(lo - pos):
            next(keys)
        out = np.stack([next(keys) for _ in range(hi - lo)])
        run.cache["ties"] = (hi, keys)
        return out

    def compute(self, state, stage, x, labels, extra):
        o = self.options
        net, score = state["net"], state["scorer"]
        if stage == "maps":
            predicted = np.argmax(score(x), axis=1)
            rng = np.random.default_rng(o["seed"])
            rng.bit_generator.advance(int(extra["first"][0]) * random_draws(net, o["methods"]))
            maps = group_maps(net, x, o["methods"], predicted, o["group"], rng)
            return {"predicted": predicted, **{f"map/{m}": v for m, v in maps.items()}}, {}
        names = self.names()
        metrics = removal_metrics(score, x, extra["predicted"], names,
                                  {m: extra[f"map/{m}"] for m in names},
                                  {m: extra[f"partner/{m}"] for m in names},
                                  baseline=self._baseline_images(x)[0],
                                  ties=extra.get("ties"), never_flip=o["never_flip"],
                                  chunk=o["chunk"], max_batch=o["max_batch"])
        out = {"predicted": extra["predicted"]}
        if labels is not None:
            out["label"] = np.asarray(labels, np.int64)
        for m in names:
            out.update({f"metric/{m}/{k}": v for k, v in metrics[m].items()})
        return out, {}

    def evaluation(self, rows, run):
        """The :class:`~refbbp.evaluate.Evaluation` of the run's inputs done."""
        o, names = self.options, self.names()
        metrics = {m: {k.split("/", 2)[2]: v for k, v in rows.items()
                       if k.startswith(f"metric/{m}/")} for m in names}
        shape = tuple(run.manifest.data["model"]["input_shape"])
        return finish_evaluation(names, metrics, rows["predicted"], rows.get("label"),
                                 self.partners(run.n)[rows["index"]],
                                 model_name=run.manifest.data["model"]["file"],
                                 baseline_config=self._baseline_images(
                                     np.zeros((0,) + shape))[1],
                                 ties=o["ties"], never_flip=o["never_flip"], seed=o["seed"],
                                 chunk=o["chunk"], custom_scorer=False)

    def summary(self, rows, run):
        res = self.evaluation(rows, run)
        d = res.to_dict()
        d.pop("images", None)
        return d

    def finish(self, run):
        import os

        res = self.evaluation(run.rows("scans"), run)
        return [res.to_csv(os.path.join(run.folder, "evaluation.csv")),
                res.to_json(os.path.join(run.folder, "evaluation.json"))]


TASKS = {t.name: t for t in (Explain, Oracle, Verify, Evaluate, BiasReport)}


def make_task(name, **options):
    """The task ``name`` (``explain``, ``oracle``, ``verify``, ``evaluate``,
    ``bias-report``) with its options."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name](**options)
