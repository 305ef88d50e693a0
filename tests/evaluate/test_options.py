"""The evaluation options (refbbp.evaluate.options): removal baseline, tie-break,
never-flip handling and the noise pool, on tiny models whose outcomes are worked out by
hand, and the defaults against results stored before the options existed.

The hand model ``sum_model(c)``: input (1, 1, 4); logits ``f0 = x0 + x1 + x2 + x3 - c``,
``f1 = 0``; so the class is 0 while the pixel sum exceeds ``c``. The method ``itself``
ranks pixels by their value (the map is the image).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import refbbp
from refbbp import evaluate as ev
from refbbp.evaluate.options import baseline_images, parse_baseline, tie_keys
from tests.evaluate.test_evaluate import brute_force
from tests.helpers import make_model
from tests.models import build_resnet, onnx_node

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "default_path.npz")


def sum_model(c=5.0):
    nodes = [onnx_node("Flatten", ["x"], "f", axis=1),
             onnx_node("Gemm", ["f", "W", "b"], "logits", transB=1)]
    w = np.stack([np.ones(4), np.zeros(4)])
    return make_model(nodes, {"x": (1, 1, 4)}, ["logits"], {"W": w, "b": np.array([-c, 0.0])})


def itself(net, x, classes):
    """The map is the image: the largest pixel is the most salient."""
    return x[:, 0]


# A = [4, 3, 2, 1]: class 0 (sum 10 > 5). B = [1, 1, 1, 1]: class 1 (sum 4 < 5).
X_AB = np.array([[4.0, 3, 2, 1], [1, 1, 1, 1]]).reshape(2, 1, 1, 4)


def run(x, methods=(itself,), **opts):
    return ev.evaluate(sum_model(), x, list(methods), progress=False, **opts)


# ------------------------------------------------------------------------ defaults
def test_default_options_reproduce_the_stored_results():
    """The defaults (baseline 0, index ties, count-as-1, one noise map) give, bit for bit,
    the results stored by the code before the options existed (commit 443c8b7: 12
    bundled samples, bundled model, four methods)."""
    ref = np.load(REFERENCE)
    x, _ = refbbp.data.load_samples()
    methods = ["gradient", "layers-top2", "bias", "random"]
    res = ev.evaluate(refbbp.data.model_path(), x[:12], methods, progress=False)
    explicit = ev.evaluate(refbbp.data.model_path(), x[:12], methods, baseline=0,
                           ties="index", never_flip="count-as-1", noise_pool=1,
                           progress=False)
    np.testing.assert_array_equal(res.predicted, ref["predicted"])
    np.testing.assert_array_equal(res.noise_source, ref["noise_source"])
    compared = 0
    for m in methods:
        for key in res.metrics[m]:
            if f"{m}|{key}" in ref:
                stored = ref[f"{m}|{key}"]
                assert res.metrics[m][key].dtype == stored.dtype
                np.testing.assert_array_equal(res.metrics[m][key], stored)
                compared += 1
            np.testing.assert_array_equal(explicit.metrics[m][key], res.metrics[m][key])
    assert compared == 4 * (len(ev.METRICS) + 3 * len(ev.SCANS))
    assert res.config["baseline"] == 0.0 and res.config["ties"] == "index"
    assert res.config["never_flip"] == "count-as-1" and res.config["noise_pool"] == 1


def test_hand_model_flips_where_worked_out():
    """Zero baseline: A's +s removes 4, 3 (sum 3: flips at m = 2), its -s removes 1, 2, 3
    (sum 4: m = 3). B (class 1) can only lose mass: it never flips and counts as e = 1."""
    res = run(X_AB)
    d = res.metrics["itself"]
    assert list(res.predicted) == [0, 1]
    assert d["removed_plus"][0] == 2 and d["removed_minus"][0] == 3
    assert d["e_plus"][0] == 1 - math.sqrt(5) / math.sqrt(30)
    assert d["e_minus"][0] == 1 - 4 / math.sqrt(30)
    for s in ev.SCANS:
        assert not d[f"flipped_{s}"][1] and d[f"e_{s}"][1] == 1.0
    assert not d["excluded"].any()


# ------------------------------------------------------------------------ baseline
def test_mean_baseline_is_the_per_channel_mean_and_changes_the_flips():
    """The mean of A and B is 14 / 8 = 1.75 per pixel. B's removed pixels rise to 1.75:
    after two the sum is 5.5 > 5, so B flips to class 0 at m = 2; A's +s removes 4, 3,
    2, 1 -> 1.75 (sums 7.75, 6.5, 6.25, 7): it never flips."""
    res = run(X_AB, baseline="mean")
    assert res.config["baseline"] == "mean" and res.config["baseline_values"] == [1.75]
    d = res.metrics["itself"]
    assert d["removed_minus"][1] == 2 and d["flipped_minus"][1]
    assert d["e_minus"][1] == 1 - math.sqrt(2 * 1.75 ** 2 + 2) / 2
    assert not d["flipped_plus"][0] and d["e_plus"][0] == 1.0


def test_mean_baseline_equals_the_explicit_per_channel_array(rng):
    model, x = build_resnet(rng, channels=2, size=6, batch=5)
    means = x.mean(axis=(0, 2, 3))
    a = ev.evaluate(model, x, ["gradient", "random"], baseline="mean", progress=False)
    b = ev.evaluate(model, x, ["gradient", "random"], baseline=means[:, None, None],
                    progress=False)
    assert a.config["baseline_values"] == [float(v) for v in means]
    assert b.config["baseline"] == "array of shape (2, 1, 1)"
    for m in a.methods:
        for k in ev.METRICS:
            np.testing.assert_array_equal(a.metrics[m][k], b.metrics[m][k])


def test_blur_baseline_values():
    """'blur:S' is scipy's Gaussian filter per channel (sigma 0 across channels),
    mode 'nearest', truncate 4: a constant channel stays constant, and an impulse far
    from the edges spreads into the normalised kernel exp(-d^2 / 2 S^2), |d| <= 4 S."""
    x = np.zeros((1, 2, 1, 21))
    x[0, 0, 0, 10] = 1.0
    x[0, 1] = 3.0
    values, config = baseline_images("blur:1.5", x)
    assert config == {"baseline": "blur", "blur": {"sigma": 1.5, "mode": "nearest",
                                                   "truncate": 4.0}}
    d = np.arange(-6, 7)                                  # 4 * 1.5 = 6
    kernel = np.exp(-d ** 2 / (2 * 1.5 ** 2))
    kernel /= kernel.sum()
    expected = np.zeros(21)
    expected[4:17] = kernel
    np.testing.assert_allclose(values[0, 0, 0], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(values[0, 1], 3.0, rtol=1e-15)
    assert baseline_images("blur", x)[1]["blur"]["sigma"] == ev.BLUR_SIGMA
    np.testing.assert_array_equal(
        baseline_images("blur:1.5", x)[0][0],
        gaussian_filter(x[0], (0, 1.5, 1.5), mode="nearest", truncate=4.0))


def test_blur_baseline_removed_pixels_take_the_blurred_value(rng):
    """Each image's removed pixels take its own blurred copy's values: evaluate's e
    equals a one-prefix-at-a-time scan with that per-image baseline."""
    model, x = build_resnet(rng, channels=1, size=6, batch=4)
    res = ev.evaluate(model, x, ["gradient"], baseline="blur:1", keep_maps=True,
                      progress=False)
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    d, maps = res.metrics["gradient"], res.maps["gradient"]
    for i in range(len(x)):
        blurred = gaussian_filter(x[i], (0, 1, 1), mode="nearest", truncate=4.0)
        for s, direction in (("minus", "-"), ("plus", "+")):
            order = ev.removal_order(maps[i], direction)
            (m, e), _ = brute_force(score, x[i], res.predicted[i], order, blurred)
            assert d[f"removed_{s}"][i] == m
            if d[f"flipped_{s}"][i]:
                np.testing.assert_allclose(d[f"e_{s}"][i], e, rtol=1e-14, atol=1e-15)


def test_first_flips_takes_one_baseline_per_image():
    """A baseline of the images' shape gives each image its own; removing every pixel
    of B = [1, 1, 1, 1] towards [2, 2, 2, 2] flips it at m = 1 (sum 5 is not > 5; the
    first maximum is class 0), and A towards 0 as before (m = 2)."""
    model = sum_model()
    score = ev.OnnxScorer(model, refbbp.load(model))
    base = np.stack([np.zeros((1, 1, 4)), np.full((1, 1, 4), 2.0)])
    res = ev.first_flips(score, X_AB, np.array([0, 1]), np.tile(np.arange(4), (2, 1)),
                         baseline=base)
    assert list(res["removed"]) == [2, 1] and res["flipped"].all()
    assert res["e"][1] == 1 - math.sqrt(4 + 3) / 2


@pytest.mark.parametrize("baseline, error, match", [
    ("median", ValueError, "baseline must be a number, an array, 'mean'"),
    ("blur:-1", ValueError, "sigma must be a positive number"),
    ("blur:abc", ValueError, "sigma must be a positive number"),
    (float("nan"), ValueError, "baseline must be finite"),
    (True, TypeError, "baseline must be real numbers"),
    (np.zeros(3), ValueError, "does not broadcast to the input shape"),
])
def test_bad_baselines_are_refused(baseline, error, match):
    with pytest.raises(error, match=match):
        run(X_AB, baseline=baseline)


def test_parse_baseline():
    assert parse_baseline(0) == ("value", 0.0)
    assert parse_baseline("mean") == ("mean", None)
    assert parse_baseline("blur:0.5") == ("blur", 0.5)


# ---------------------------------------------------------------------------- ties
def flat(net, x, classes):
    """Every pixel equally salient: the order is the tie-break alone."""
    return np.zeros((len(x), 1, 4))


def test_random_ties_are_seeded_permutations_per_image():
    keys = tie_keys("random", 5, 7, seed=3)
    assert keys.shape == (5, 7)
    assert all(sorted(r) == list(range(7)) for r in keys)
    np.testing.assert_array_equal(keys, tie_keys("random", 5, 7, seed=3))
    assert not np.array_equal(keys, tie_keys("random", 5, 7, seed=4))
    assert tie_keys("index", 5, 7, seed=3) is None


def test_removal_order_breaks_ties_by_the_key():
    s = np.array([0.5, 1.0, 0.5, 1.0, 0.0])
    key = np.array([4, 3, 2, 1, 0])
    np.testing.assert_array_equal(ev.removal_order(s, "+", key), [3, 1, 2, 0, 4])
    np.testing.assert_array_equal(ev.removal_order(s, "-", key), [4, 2, 0, 3, 1])
    np.testing.assert_array_equal(ev.removal_order(s, "+", np.arange(5)),
                                  ev.removal_order(s, "+"))
    with pytest.raises(ValueError, match="tie_key has shape"):
        ev.removal_order(s, "+", key[:3])


def test_random_ties_reproducible_and_different_from_index_ties():
    """A flat map is all ties. Index ties remove A = [4, 3, 2, 1] from the left (4, 3:
    flips at m = 2); random ties follow the image's key, the same key for +s and -s (so
    e_plus = e_minus), and the same seed gives the same result. With seed 0, A's key
    orders its pixels 1, 3, 2, 0: removing 3, 1, 2 (sums 7, 6, 4) flips at m = 3."""
    x = np.array([[4.0, 3, 2, 1], [3, 4, 1, 2], [1, 2, 3, 4]]).reshape(3, 1, 1, 4)
    idx = run(x, [flat])
    a = run(x, [flat], ties="random", seed=0)
    b = run(x, [flat], ties="random", seed=0)
    keys = tie_keys("random", 3, 4, seed=0)
    score = ev.OnnxScorer(sum_model(), refbbp.load(sum_model()))
    for i in range(3):
        (m_idx, _), _ = brute_force(score, x[i], 0, np.arange(4))
        (m_key, e_key), _ = brute_force(score, x[i], 0, np.argsort(keys[i]))
        assert idx.metrics["flat"]["removed_minus"][i] == m_idx
        assert a.metrics["flat"]["removed_minus"][i] == m_key
        assert a.metrics["flat"]["removed_plus"][i] == m_key
        assert a.metrics["flat"]["e_minus"][i] == e_key
    assert idx.metrics["flat"]["removed_minus"][0] == 2
    np.testing.assert_array_equal(np.argsort(keys[0]), [1, 3, 2, 0])
    assert a.metrics["flat"]["removed_minus"][0] == 3
    assert a.metrics["flat"]["e_minus"][0] == 1 - 4 / math.sqrt(30)
    for k in ev.METRICS:
        np.testing.assert_array_equal(a.metrics["flat"][k], b.metrics["flat"][k])
    assert not np.array_equal(a.metrics["flat"]["removed_minus"],
                              idx.metrics["flat"]["removed_minus"])
    assert a.config["ties"] == "random" and a.config["tie_break"].startswith("random")


def test_random_ties_leave_maps_and_noise_sources_alone(rng):
    """Random ties draw from their own stream: the 'random' maps and the noise sources
    are those of index ties."""
    model, x = build_resnet(rng, channels=1, size=6, batch=4)
    a = ev.evaluate(model, x, ["random"], keep_maps=True, progress=False)
    b = ev.evaluate(model, x, ["random"], ties="random", keep_maps=True, progress=False)
    np.testing.assert_array_equal(a.maps["random"], b.maps["random"])
    np.testing.assert_array_equal(a.noise_source, b.noise_source)


def test_bad_ties_and_never_flip_are_refused():
    with pytest.raises(ValueError, match="ties must be one of 'index', 'random'"):
        run(X_AB, ties="shuffle")
    with pytest.raises(ValueError, match="never_flip must be one of 'count-as-1', 'exclude'"):
        run(X_AB, never_flip="drop")


# ---------------------------------------------------------------------- never flip
def test_exclude_drops_exactly_the_never_flip_images():
    """Zero baseline: the class-1 images (B, D) can only lose mass and never flip; under
    'exclude' their metrics are NaN, the summary and the table count 2, the Wilcoxon
    pairs lose them; A and C keep the values of 'count-as-1'."""
    x = np.array([[4.0, 3, 2, 1], [1, 1, 1, 1], [3, 3, 0.5, 0.5], [0, 1, 2, 0]])
    x = x.reshape(4, 1, 1, 4)
    keep = run(x, [itself, flat])
    drop = run(x, [itself, flat], never_flip="exclude")
    for m in ("itself", "flat"):
        np.testing.assert_array_equal(drop.metrics[m]["excluded"], [False, True, False, True])
        assert not keep.metrics[m]["excluded"].any()
        for k in ev.METRICS:
            assert np.isnan(drop.metrics[m][k][[1, 3]]).all()
            np.testing.assert_array_equal(drop.metrics[m][k][[0, 2]],
                                          keep.metrics[m][k][[0, 2]])
        summ = drop.summary()[m]
        assert summ["excluded"] == 2 and summ["e_minus"]["n"] == 2
        assert keep.summary()[m]["excluded"] == 0 and keep.summary()[m]["e_minus"]["n"] == 4
    assert drop.config["excluded"] == {"itself": 2, "flat": 2}
    assert drop.compare("itself", "flat", "e_minus")["n"] == 2
    rows, header = drop.table()
    assert header[-1] == "excluded" and [r[-1] for r in rows] == [2, 2]
    assert "excluded" not in keep.table()[1]
    # rows: per image, per method
    assert [r["excluded"] for r in drop.rows()] == [False, False, True, True] * 2


def test_exclude_counts_a_noise_scan_that_never_flips():
    """Under the mean baseline (1.75) only A's +s never flips (see
    test_mean_baseline_...); with 'exclude' that alone drops A, and B stays."""
    res = run(X_AB, baseline="mean", never_flip="exclude")
    d = res.metrics["itself"]
    np.testing.assert_array_equal(d["excluded"], [True, False])
    assert np.isnan(d["e_minus"][0]) and np.isfinite(d["e_minus"][1])


def test_never_flip_counts_as_1_with_any_baseline():
    """A never-flipping scan used to get e with every pixel removed,
    1 - ||baseline|| / ||x||, which is 1 only for the zero baseline: with baseline 0.5,
    B = [1, 1, 1, 1] got 0.5 (the best e_minus became ordinary). It now counts as e = 1,
    as documented, with every baseline."""
    res = run(X_AB, baseline=0.5)
    d = res.metrics["itself"]
    for s in ev.SCANS:
        assert not d[f"flipped_{s}"][1] and d[f"e_{s}"][1] == 1.0


# ---------------------------------------------------------------------- noise pool
@pytest.mark.parametrize("n, k", [(2, 1), (5, 1), (5, 2), (5, 4), (30, 7)])
def test_noise_sources_are_other_distinct_images(n, k):
    src = ev.noise_sources(n, k, seed=5)
    assert src.shape == (n, k)
    np.testing.assert_array_equal(src[:, 0], ev.derangement(n, seed=5))
    assert np.all(src != np.arange(n)[:, None])                 # never its own
    assert all(len(set(r)) == k for r in src)                    # k distinct maps
    for j in range(k):                                           # each used k times
        assert sorted(src[:, j]) == list(range(n))


def test_noise_pool_must_leave_other_images():
    with pytest.raises(ValueError, match="noise_pool must be between 1 and 1"):
        run(X_AB, noise_pool=2)
    with pytest.raises(TypeError, match="noise_pool must be an int"):
        run(X_AB, noise_pool=1.0)


def test_noise_pool_averages_e_over_k_other_maps(rng):
    """k = 1 is the derangement, bit for bit; for k = 3 e(x, xi) is the mean of the
    brute-force e over the three maps of noise_sources, and the own-map metrics do not
    change."""
    model, x = build_resnet(rng, channels=1, size=6, batch=5)
    one = ev.evaluate(model, x, ["gradient"], keep_maps=True, progress=False)
    one_explicit = ev.evaluate(model, x, ["gradient"], noise_pool=1, progress=False)
    three = ev.evaluate(model, x, ["gradient"], noise_pool=3, progress=False)
    for k in ev.METRICS:
        np.testing.assert_array_equal(one.metrics["gradient"][k],
                                      one_explicit.metrics["gradient"][k])
    src = ev.noise_sources(5, 3, seed=0)
    np.testing.assert_array_equal(three.noise_source, src)
    np.testing.assert_array_equal(one.noise_source, src[:, 0])
    score = ev.OnnxScorer(model, refbbp.load(model))
    maps, d = one.maps["gradient"], three.metrics["gradient"]
    for i in range(5):
        for s, direction in (("minus", "-"), ("plus", "+")):
            es, ms = [], []
            for j in src[i]:
                (m, e), preds = brute_force(score, x[i], one.predicted[i],
                                            ev.removal_order(maps[j], direction))
                es.append(e if any(p != one.predicted[i] for p in preds) else 1.0)
                ms.append(m)
            np.testing.assert_allclose(d[f"e_{s}_xi"][i], np.mean(es), rtol=1e-14,
                                       atol=1e-15)
            assert d[f"removed_{s}_xi"][i] == sum(ms)
            assert d[f"e_{s}"][i] == one.metrics["gradient"][f"e_{s}"][i]
    np.testing.assert_array_equal(d["de_minus"], d["e_minus"] - d["e_minus_xi"])
    assert three.config["noise_pool"] == 3
    assert three.rows()[0]["noise_source"] == " ".join(map(str, src[0]))


# ----------------------------------------------------------------------- recording
def test_results_record_every_option(tmp_path):
    res = run(X_AB, baseline="blur:1", ties="random", never_flip="exclude", seed=2)
    path = res.to_json(tmp_path / "e.json")
    config = json.loads(path.read_text())["config"]
    assert config["baseline"] == "blur" and config["blur"]["sigma"] == 1.0
    assert config["ties"] == "random" and config["never_flip"] == "exclude"
    assert config["noise_pool"] == 1 and config["seed"] == 2
    assert config["excluded"] == {"itself": int(res.metrics["itself"]["excluded"].sum())}
