"""The results of :func:`refbbp.evaluate.evaluate`: per-image metrics, their summary,
paired Wilcoxon signed-rank tests between methods, CSV/JSON files and a box plot.

Metrics per image and method (:data:`METRICS`): ``e_minus = e(x, -s)``,
``e_plus = e(x, +s)``, ``e_delta = e_minus - e_plus``, the same for the noise map
(suffix ``_xi``) and ``de_* = e_* - e_*_xi``. Each comes from one of the four removal
scans of an image (:data:`SCANS`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..figures import require_matplotlib, save_figure

__all__ = ["METRICS", "SCANS", "Evaluation", "boxplot", "wilcoxon_test"]

METRICS = ("e_minus", "e_plus", "e_delta", "e_minus_xi", "e_plus_xi", "e_delta_xi",
           "de_minus", "de_plus", "de_delta")
SCANS = ("minus", "plus", "minus_xi", "plus_xi")


def wilcoxon_test(a, b):
    """Paired Wilcoxon signed-rank test of ``a`` against ``b`` (two-sided).

    Pairs with a non-finite value are dropped; zero differences are discarded by the
    test (``zero_method="wilcox"``, scipy's default).

    Parameters
    ----------
    a, b : array_like, shape (n,)

    Returns
    -------
    dict
        ``statistic``, ``pvalue``, ``n`` (finite pairs), ``n_nonzero`` (pairs with a
        non-zero difference) and ``median_difference`` (median of ``a - b`` over the
        ``n`` pairs). With no non-zero difference there is no evidence either way:
        ``statistic = 0`` and ``pvalue = 1``.
    """
    # scipy.stats takes about 0.4 s to import: it is imported here, on first use, so that
    # `import refbbp` and every CLI call that does not test stay quick.
    from scipy.stats import wilcoxon

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    nz = int(np.count_nonzero(d))
    res = {"n": int(d.size), "n_nonzero": nz,
           "median_difference": float(np.median(d)) if d.size else float("nan")}
    if nz == 0:
        res.update(statistic=0.0, pvalue=1.0)
    else:
        r = wilcoxon(d)
        res.update(statistic=float(r.statistic), pvalue=float(r.pvalue))
    return res


# ------------------------------------------------------------------------- results
@dataclass(eq=False)
class Evaluation:
    """Results of :func:`refbbp.evaluate.evaluate`.

    Attributes
    ----------
    methods : list of str
    metrics : dict of str to dict of str to ndarray
        ``metrics[method][name]``, shape (n,), for every name in :data:`METRICS`, plus
        ``removed_<scan>`` (pixels removed at the first flip), ``flipped_<scan>`` and
        ``scored_<scan>`` for ``<scan>`` in minus, plus, minus_xi, plus_xi (for a noise
        pool of k > 1 maps: ``removed`` and ``scored`` summed over the pool, ``flipped``
        whether every one flipped), and ``excluded`` (the image is left out of this
        method's statistics: ``never_flip="exclude"`` and a scan never flipped).
    predicted : ndarray of int, shape (n,)
        The class ``k`` of each image (onnxruntime's argmax).
    labels : ndarray of int, shape (n,), or None
    noise_source : ndarray of int, shape (n,) or (n, k)
        The derangement: image ``i``'s noise map is the map of image ``noise_source[i]``;
        with a noise pool of ``k > 1`` maps, row ``i`` lists them.
    config : dict
        Every option (baseline, ties, never_flip, noise_pool, seed, chunk), the model,
        the number of forward passes and the images excluded per method.
    maps : dict of str to ndarray or None
        The saliency maps (n, *map) when ``keep_maps=True``.
    """

    methods: list
    metrics: dict
    predicted: np.ndarray
    labels: np.ndarray
    noise_source: np.ndarray
    config: dict = field(default_factory=dict)
    maps: dict = None

    @property
    def n(self):
        return len(self.predicted)

    def summary(self, metrics=METRICS):
        """Median, quartiles and mean of each metric per method.

        Returns
        -------
        dict of str to dict of str to dict
            ``summary[method][metric] = {"median", "q25", "q75", "mean", "n"}``; also
            ``summary[method]["never_flipped"]`` per scan and
            ``summary[method]["excluded"]``, the images left out (``n`` counts the
            images with a finite value).
        """
        out = {}
        for m in self.methods:
            d = {}
            for k in metrics:
                v = self.metrics[m][k]
                v = v[np.isfinite(v)]
                d[k] = ({"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                         "q75": float(np.percentile(v, 75)), "mean": float(np.mean(v)),
                         "n": int(v.size)} if v.size else
                        {"median": float("nan"), "q25": float("nan"), "q75": float("nan"),
                         "mean": float("nan"), "n": 0})
            d["never_flipped"] = {s: int(np.sum(~self.metrics[m][f"flipped_{s}"]))
                                  for s in SCANS}
            d["excluded"] = int(np.sum(self.metrics[m]["excluded"]))
            out[m] = d
        return out

    def compare(self, a, b, metric="de_delta"):
        """Wilcoxon signed-rank test of method ``a`` against ``b`` on ``metric``, paired
        per image (:func:`wilcoxon_test`); ``median_difference`` is of ``a - b``."""
        for m in (a, b):
            if m not in self.metrics:
                raise ValueError(f"no method {m!r} in this evaluation ({self.methods})")
        if metric not in self.metrics[a]:
            raise ValueError(f"unknown metric {metric!r}: expected one of {METRICS}")
        res = wilcoxon_test(self.metrics[a][metric], self.metrics[b][metric])
        return {"a": a, "b": b, "metric": metric, **res}

    def comparisons(self, metric="de_delta", pairs=None):
        """:meth:`compare` for ``pairs`` (default every pair of methods, in order)."""
        if pairs is None:
            pairs = [(a, b) for i, a in enumerate(self.methods) for b in self.methods[i + 1:]]
        return [self.compare(a, b, metric) for a, b in pairs]

    def rows(self):
        """One dict per (image, method): the CSV rows."""
        rows = []
        keys = list(METRICS) + [f"{w}_{s}" for w in ("removed", "flipped", "scored")
                                for s in SCANS] + ["excluded"]
        for i in range(self.n):
            for m in self.methods:
                r = {"image": i, "label": None if self.labels is None else int(self.labels[i]),
                     "predicted": int(self.predicted[i]),
                     "noise_source": " ".join(map(str, np.atleast_1d(self.noise_source[i])))
                     if np.ndim(self.noise_source) == 2 else int(self.noise_source[i]),
                     "method": m}
                for k in keys:
                    v = self.metrics[m][k][i]
                    r[k] = (bool(v) if k.startswith(("flipped", "excluded")) else
                            int(v) if k.startswith(("removed", "scored")) else float(v))
                rows.append(r)
        return rows

    def to_csv(self, path):
        """Write :meth:`rows` as CSV (one line per image and method)."""
        rows = self.rows()
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    def to_dict(self, metric="de_delta"):
        """Everything as plain Python: config, summary, comparisons on ``metric`` and
        the per-image rows."""
        return {"config": self.config, "methods": list(self.methods), "n_images": self.n,
                "summary": _nan_to_none(self.summary()),
                "comparisons": {k: _nan_to_none(self.comparisons(k)) for k in
                                dict.fromkeys((metric, "de_minus", "e_delta", "e_minus"))},
                "images": _nan_to_none(self.rows())}

    def to_json(self, path, metric="de_delta"):
        """Write :meth:`to_dict` as JSON (NaN written as null)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(metric), fh, indent=1)
        return path

    def table(self, metrics=("e_minus", "e_plus", "e_delta", "de_minus", "de_plus",
                             "de_delta")):
        """Rows ``[method, median of each metric..., never-flipped counts]`` and the
        header, for printing; with ``never_flip="exclude"`` also the images excluded."""
        summ = self.summary(metrics)
        exclude = self.config.get("never_flip") == "exclude"
        header = (["method"] + [f"median {k}" for k in metrics] + ["no flip (-/+)"]
                  + ["excluded"] * exclude)
        rows = [[m] + [summ[m][k]["median"] for k in metrics] +
                [f"{summ[m]['never_flipped']['minus']}/{summ[m]['never_flipped']['plus']}"]
                + [summ[m]["excluded"]] * exclude
                for m in self.methods]
        return rows, header


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------- figure
_LABELS = {"e_minus": "e₋", "e_plus": "e₊", "e_delta": "e_Δ", "de_minus": "δe₋",
           "de_plus": "δe₊", "de_delta": "δe_Δ", "e_minus_xi": "e₋(ξ)",
           "e_plus_xi": "e₊(ξ)", "e_delta_xi": "e_Δ(ξ)"}


def boxplot(evaluation, path, metrics=("de_minus", "e_minus"), methods=None, title=None):
    """A box plot per metric of every method, like the companion paper's Fig. 5/6.

    Boxes span the 25th to 75th percentile with the median marked; whiskers the 10th
    to 90th percentile; outliers are not drawn. Needs matplotlib
    (``pip install 'refbbp[figures]'``).

    Parameters
    ----------
    evaluation : Evaluation
    path : str
        PNG file to write.
    metrics : sequence of str
        One panel each, stacked.
    methods : sequence of str, optional
        Boxes, in order (default every method).
    title : str, optional

    Returns
    -------
    str
        ``path``.
    """
    plt = require_matplotlib()
    methods = list(evaluation.methods if methods is None else methods)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(4.0, 0.9 * len(methods) + 1.5),
                                                       2.6 * len(metrics) + 0.4),
                             squeeze=False)
    for ax, k in zip(axes[:, 0], metrics, strict=True):
        data = [evaluation.metrics[m][k][np.isfinite(evaluation.metrics[m][k])]
                for m in methods]
        ax.boxplot(data, whis=(10, 90), showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#9ecae1"}, medianprops={"color": "#08306b"})
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(_LABELS.get(k, k))
        if k.startswith("de_") or k.endswith("delta"):
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        if k in ("e_plus", "de_plus"):
            ax.invert_yaxis()  # as in the paper: higher is better in every panel
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, title)
