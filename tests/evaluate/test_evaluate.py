"""The pixel-removal evaluation (SPEC section 5; companion paper section 4).

The first flip is found exactly: ``first_flips`` (chunks of prefixes scored in order,
unchanged images skipped) is checked against a brute-force scan that scores every
prefix on its own, on a hand-made model whose prediction flips and flips back (where
a bisection would fail) and on random CNNs, for several chunk sizes.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import scipy.stats

import refbbp
from refbbp import evaluate as ev
from refbbp.explain.decompose import decompose
from refbbp.explain.saliency import gradient_map
from tests.helpers import make_model
from tests.models import build_cnn, build_resnet, onnx_node

CHUNKS = [1, 2, 3, 5, 64]


# ---------------------------------------------------------------- a flip-flop model
# Input (1, 2, 6): 12 pixels, one channel. Logits f0 = u . x + c, f1 = 0, so the class is
# 0 while the margin u . x_m + c > 0. x is 1 everywhere except pixels 5 and 9, which are
# already 0 (the baseline): removing them changes nothing.
U = np.array([0.5, 1.0, -2.0, 0.25, 1.0, 3.0, -1.0, 2.0, 1.0, 5.0, 1.0, 1.0])
C = -3.5
X_FLIP = np.ones(12)
X_FLIP[[5, 9]] = 0.0
# Removing pixels 0, 1, 2, ... in order, the margin c + sum of the remaining u_p x_p is
# m = 0: 1.25, 1: 0.75, 2: -0.25 (class 1: the first flip), 3: 1.75 (back to class 0),
# 4: 1.5, 5: 0.5, 6: 0.5, 7: 1.5, 8: -0.5 (flips again), 9: -1.5, 10: -1.5, 11: -2.5,
# 12: -3.5. All values are exact in float32, and no margin is 0 (no tie).
FLIP_MARGINS = [1.25, 0.75, -0.25, 1.75, 1.5, 0.5, 0.5, 1.5, -0.5, -1.5, -1.5, -2.5, -3.5]


def flip_flop_model():
    w = np.stack([U, np.zeros(12)])
    nodes = [onnx_node("Flatten", ["x"], "f", axis=1),
             onnx_node("Gemm", ["f", "W", "b"], "logits", transB=1)]
    model = make_model(nodes, {"x": (1, 2, 6)}, ["logits"],
                       {"W": w, "b": np.array([C, 0.0])})
    return model, X_FLIP.reshape(1, 1, 2, 6)


def brute_force(score, x, k, order, baseline=0.0):
    """Score every prefix on its own (batch of one), in order; the first flip."""
    c = x.shape[0] if x.ndim >= 2 else 1
    px = x.reshape(c, -1).copy()
    base = np.broadcast_to(np.asarray(baseline, np.float64), x.shape).reshape(c, -1)
    preds = []
    first = None
    for m in range(1, px.shape[1] + 1):
        px[:, order[m - 1]] = base[:, order[m - 1]]
        p = int(np.argmax(score(px.reshape((1,) + x.shape))[0]))
        preds.append(p)
        if p != k and first is None:
            first = (m, 1.0 - np.linalg.norm(px) / np.linalg.norm(x))
    if first is None:
        first = (px.shape[1], 1.0 - np.linalg.norm(px) / np.linalg.norm(x))
    return first, preds


def test_flip_flop_model_margins():
    model, x = flip_flop_model()
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    margins = []
    px = x.reshape(-1).copy()
    for m in range(13):
        lg = score(px.reshape(1, 1, 2, 6))[0]
        margins.append(lg[0] - lg[1])
        if m < 12:
            px[m] = 0.0
    np.testing.assert_array_equal(margins, FLIP_MARGINS)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_first_flip_is_exact_when_the_class_flips_back(chunk):
    model, x = flip_flop_model()
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    order = np.arange(12)
    (m_bf, e_bf), preds = brute_force(score, x[0], 0, order)
    # the class flips at m = 2, comes back at 3 and flips again at 8
    assert preds[:8] == [0, 1, 0, 0, 0, 0, 0, 1]
    assert m_bf == 2
    res = ev.first_flips(score, x, np.array([0]), order[None], chunk=chunk)
    assert res["removed"][0] == 2 and res["flipped"][0]
    np.testing.assert_allclose(res["e"][0], e_bf, rtol=1e-15)
    np.testing.assert_allclose(res["e"][0], 1 - np.sqrt(8) / np.sqrt(10), rtol=1e-15)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_first_flip_matches_brute_force_on_flip_flop_orders(chunk, rng):
    model, x = flip_flop_model()
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    orders = np.stack([np.arange(12), np.arange(12)[::-1]] +
                      [rng.permutation(12) for _ in range(20)])
    res = ev.first_flips(score, x, np.array([0]), orders, np.zeros(len(orders), int),
                         chunk=chunk)
    for j, order in enumerate(orders):
        (m, e), _ = brute_force(score, x[0], 0, order)
        assert res["removed"][j] == m, (j, order)
        np.testing.assert_allclose(res["e"][j], e, rtol=1e-15, atol=0)
    # skipped prefixes: pixels 5 and 9 are already 0, so never scored
    assert np.all(res["scored"] <= 10)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("baseline", ["zero", "array"])
def test_first_flip_matches_brute_force_on_random_cnns(chunk, baseline, rng):
    model, x = build_cnn(rng, channels=2, size=6, batch=4)
    x[:, :, :2, :] = 0.0                 # some pixels already at the zero baseline
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    base = 0.0 if baseline == "zero" else rng.normal(size=x.shape[1:])
    k = np.argmax(score(x), axis=1)
    n_pix = 36
    orders, owner = [], []
    for i in range(len(x)):
        for _ in range(3):
            orders.append(rng.permutation(n_pix))
            owner.append(i)
    orders, owner = np.stack(orders), np.array(owner)
    res = ev.first_flips(score, x, k, orders, owner, baseline=base, chunk=chunk)
    for j in range(len(orders)):
        (m, e), preds = brute_force(score, x[owner[j]], k[owner[j]], orders[j], base)
        assert res["removed"][j] == m
        np.testing.assert_allclose(res["e"][j], e, rtol=1e-14, atol=1e-15)
        assert res["flipped"][j] == any(p != k[owner[j]] for p in preds)


def _constant_class_model(bias0=100.0):
    """Class 0 always wins by a wide margin: the class never changes."""
    nodes = [onnx_node("Flatten", ["x"], "f", axis=1),
             onnx_node("Gemm", ["f", "W", "b"], "logits", transB=1)]
    w = np.full((2, 4), 0.25)
    return make_model(nodes, {"x": (1, 2, 2)}, ["logits"], {"W": w, "b": np.array([bias0, 0])})


@pytest.mark.parametrize("baseline, expected", [(0.0, 1.0), (0.5, 1 - 1.0 / np.sqrt(30))])
def test_never_flipping_removes_every_pixel(baseline, expected):
    model = _constant_class_model()
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])      # ||x|| = sqrt(30)
    res = ev.first_flips(score, x, np.array([0]), np.arange(4)[None], baseline=baseline)
    assert res["removed"][0] == 4 and not res["flipped"][0]
    np.testing.assert_allclose(res["e"][0], expected, rtol=1e-15)


def test_zero_image_has_nan_e():
    model = _constant_class_model()
    net = refbbp.load(model)
    res = ev.first_flips(ev.OnnxScorer(model, net), np.zeros((1, 1, 2, 2)), np.array([0]),
                         np.arange(4)[None])
    assert np.isnan(res["e"][0]) and res["scored"][0] == 0 and not res["flipped"][0]


def test_first_flips_validates_its_input():
    model = _constant_class_model()
    net = refbbp.load(model)
    score = ev.OnnxScorer(model, net)
    x = np.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        ev.first_flips(score, x, np.array([0]), np.arange(4)[None], chunk=0)
    with pytest.raises(ValueError, match="orders have 5 pixels"):
        ev.first_flips(score, x, np.array([0]), np.arange(5)[None])


# ------------------------------------------------------------------ order and noise
@pytest.mark.parametrize("direction, expected", [("+", [1, 3, 0, 2, 4]),
                                                 ("-", [4, 0, 2, 1, 3])])
def test_removal_order_breaks_ties_by_pixel_index(direction, expected):
    s = np.array([0.5, 1.0, 0.5, 1.0, 0.0])
    np.testing.assert_array_equal(ev.removal_order(s, direction), expected)


@pytest.mark.parametrize("s, direction, match", [
    (np.array([1.0, np.nan]), "+", "NaN or infinite"),   # a broken map
    (np.array([1.0, np.inf]), "-", "NaN or infinite"),
    (np.array([1.0, 2.0]), "up", "direction must be"),   # not + or -
])
def test_removal_order_rejects(s, direction, match):
    with pytest.raises(ValueError, match=match):
        ev.removal_order(s, direction)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_point(n):
    p = ev.derangement(n, seed=7)
    assert sorted(p) == list(range(n))
    assert np.all(p != np.arange(n))
    np.testing.assert_array_equal(p, ev.derangement(n, seed=7))


def test_derangement_depends_on_seed_and_needs_two_images():
    assert not np.array_equal(ev.derangement(50, 0), ev.derangement(50, 1))
    with pytest.raises(ValueError, match="at least 2 images"):
        ev.derangement(1)


# ------------------------------------------------------------------------ statistics
def test_wilcoxon_matches_scipy(rng):
    a, b = rng.normal(size=40), rng.normal(0.3, 1, size=40)
    res = ev.wilcoxon_test(a, b)
    ref = scipy.stats.wilcoxon(a - b)
    assert res["statistic"] == ref.statistic and res["pvalue"] == ref.pvalue
    assert res["n"] == 40 and res["n_nonzero"] == 40
    assert res["median_difference"] == np.median(a - b)


def test_wilcoxon_drops_nan_and_handles_no_difference():
    a = np.array([1.0, 2.0, np.nan, 4.0])
    res = ev.wilcoxon_test(a, a)
    assert res == {"n": 3, "n_nonzero": 0, "median_difference": 0.0, "statistic": 0.0,
                   "pvalue": 1.0}
    res = ev.wilcoxon_test(np.array([1.0, 2.0, np.nan, 5.0, 0.0]),
                           np.array([0.0, 2.0, 1.0, 1.0, 1.0]))
    assert res["n"] == 4 and res["n_nonzero"] == 3


# ------------------------------------------------------------------------- evaluate
@pytest.fixture
def small_cnn(rng):
    model, x = build_resnet(rng, channels=1, size=6, batch=6)
    return model, x, refbbp.load(model)


METHODS = ["gradient", "fullgrad", "layers-all", "layers-top2", "random"]


def test_evaluate_metrics_are_consistent(small_cnn):
    model, x, net = small_cnn
    res = ev.evaluate(model, x, METHODS, labels=np.arange(6) % 3, net=net, progress=False)
    assert res.methods == METHODS and res.n == 6
    assert sorted(res.noise_source) == list(range(6))
    assert np.all(res.noise_source != np.arange(6))
    np.testing.assert_array_equal(res.predicted,
                                  np.argmax(ev.OnnxScorer(model, net)(x), axis=1))
    for m in METHODS:
        d = res.metrics[m]
        np.testing.assert_array_equal(d["e_delta"], d["e_minus"] - d["e_plus"])
        np.testing.assert_array_equal(d["e_delta_xi"], d["e_minus_xi"] - d["e_plus_xi"])
        for k in ("minus", "plus", "delta"):
            np.testing.assert_array_equal(d[f"de_{k}"], d[f"e_{k}"] - d[f"e_{k}_xi"])
        for s in ev.SCANS:
            e = d[f"e_{s}"]
            assert np.all((e >= 0) & (e <= 1))
            # a scan that never flips removed every pixel (one may also flip at the last)
            assert np.all(d[f"removed_{s}"][~d[f"flipped_{s}"]] == 36)
            assert np.all(d[f"flipped_{s}"][d[f"removed_{s}"] < 36])


def test_evaluate_scans_match_brute_force(small_cnn):
    """Every e of evaluate() equals a brute-force scan with the method's map."""
    model, x, net = small_cnn
    res = ev.evaluate(model, x, ["gradient"], net=net, keep_maps=True, progress=False)
    score = ev.OnnxScorer(model, net)
    maps = res.maps["gradient"]
    np.testing.assert_allclose(maps, gradient_map(decompose(net, x, target=res.predicted)),
                               rtol=1e-13, atol=1e-15)
    d = res.metrics["gradient"]
    for i in range(len(x)):
        k, j = res.predicted[i], res.noise_source[i]
        for name, src, direction in (("minus", i, "-"), ("plus", i, "+"),
                                     ("minus_xi", j, "-"), ("plus_xi", j, "+")):
            (m, e), _ = brute_force(score, x[i], k, ev.removal_order(maps[src], direction))
            assert d[f"removed_{name}"][i] == m
            np.testing.assert_allclose(d[f"e_{name}"][i], e, rtol=1e-14, atol=1e-15)


def test_evaluate_does_not_depend_on_chunk_or_group(small_cnn):
    model, x, net = small_cnn
    ref = ev.evaluate(model, x, METHODS, net=net, chunk=1, group=6, progress=False)
    for chunk, group in ((4, 2), (1000, 5)):
        res = ev.evaluate(model, x, METHODS, net=net, chunk=chunk, group=group,
                          progress=False)
        for m in METHODS:
            for k in ev.METRICS:
                np.testing.assert_array_equal(res.metrics[m][k], ref.metrics[m][k])


def test_evaluate_seed_changes_noise_and_random_maps(small_cnn):
    model, x, net = small_cnn
    a = ev.evaluate(model, x, ["random"], net=net, seed=1, keep_maps=True, progress=False)
    b = ev.evaluate(model, x, ["random"], net=net, seed=1, keep_maps=True, progress=False)
    c = ev.evaluate(model, x, ["random"], net=net, seed=2, keep_maps=True, progress=False)
    np.testing.assert_array_equal(a.maps["random"], b.maps["random"])
    assert not np.array_equal(a.maps["random"], c.maps["random"])
    assert not np.array_equal(a.noise_source, c.noise_source)


def test_evaluate_accepts_callables_and_a_network(small_cnn):
    model, x, net = small_cnn

    def corner(net_, xs, classes):
        """A map that puts everything in the top-left corner (input-shaped)."""
        s = np.zeros_like(xs)
        s[:, :, 0, 0] = -3.0   # |.| summed over channels
        return s

    res = ev.evaluate(net, x, ["gradient", corner], keep_maps=True, progress=False)
    assert res.methods == ["gradient", "corner"]
    assert res.config["scorer"] == "custom"
    np.testing.assert_array_equal(res.maps["corner"][:, 0, 0], 3.0)


@pytest.mark.parametrize("methods, match", [
    (["gradient", "nonsense"], "unknown method"),          # not a method
    (["layers-bottom"], "not understood"),                 # bad layer selection
    (["activity:x"], "needs a node index"),                # node index missing
    (["gradient", "gradient"], "must be distinct"),        # the same name twice
    ([], "no methods"),
    ([lambda n, x, c: np.zeros((1, 2))], "returned maps of shape"),   # wrong shape
    ([lambda n, x, c: np.full(x.shape, np.nan)], "NaN or infinite"),  # broken maps
])
def test_evaluate_rejects_bad_methods(methods, match, small_cnn):
    model, x, net = small_cnn
    with pytest.raises(ValueError, match=match):
        ev.evaluate(model, x, methods, net=net, progress=False)


def test_evaluate_rejects_bad_inputs(small_cnn):
    model, x, net = small_cnn
    with pytest.raises(ValueError, match="batch of images"):
        ev.evaluate(model, x[0], ["gradient"], net=net)
    with pytest.raises(ValueError, match="at least 2 images"):
        ev.evaluate(model, x[:1], ["gradient"], net=net)
    with pytest.raises(ValueError, match="labels must be integers of shape"):
        ev.evaluate(model, x, ["gradient"], net=net, labels=[1, 2])
    with pytest.raises(refbbp.InputShapeError):
        ev.evaluate(model, x[:, :, :3], ["gradient"], net=net)


def test_activity_and_biasgrad_methods(small_cnn):
    model, x, net = small_cnn
    dec = decompose(net, x)
    n_h = dec.spatial_layers()[-1]
    n_b = [la.index for la in dec.layers if la.a_b is not None and la.spatial][0]
    res = ev.evaluate(model, x, [f"activity:{n_h}", f"biasgrad:{n_b}",
                                 f"layers-from:{n_h}-noinput", "fullgrad-official"],
                      net=net, progress=False)
    assert res.methods[0] == f"activity:{n_h}"
    with pytest.raises(ValueError, match="no spatial"):
        ev.evaluate(model, x, [f"activity:{net.output}"], net=net, progress=False)


def test_results_files(small_cnn, tmp_path):
    model, x, net = small_cnn
    res = ev.evaluate(model, x, METHODS, labels=np.zeros(6, int), net=net, progress=False)
    res.to_csv(tmp_path / "e.csv")
    with open(tmp_path / "e.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * len(METHODS)
    first = rows[0]
    assert first["method"] == "gradient" and first["image"] == "0"
    assert float(first["de_delta"]) == res.metrics["gradient"]["de_delta"][0]
    res.to_json(tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["n_images"] == 6 and data["methods"] == METHODS
    assert data["config"]["tie_break"].startswith("pixel index")
    comp = data["comparisons"]["de_delta"]
    assert len(comp) == len(METHODS) * (len(METHODS) - 1) // 2
    assert {"statistic", "pvalue", "n", "median_difference"} <= set(comp[0])
    assert data["summary"]["gradient"]["e_minus"]["median"] == pytest.approx(
        float(np.median(res.metrics["gradient"]["e_minus"])), rel=1e-15)
    rows, header = res.table()
    assert len(rows) == len(METHODS) and header[0] == "method"


def test_compare_rejects_unknown_names(small_cnn):
    model, x, net = small_cnn
    res = ev.evaluate(model, x, ["gradient", "random"], net=net, progress=False)
    c = res.compare("gradient", "random", "e_minus")
    assert c["a"] == "gradient" and c["n"] == 6
    with pytest.raises(ValueError, match="no method"):
        res.compare("gradient", "fullgrad")
    with pytest.raises(ValueError, match="unknown metric"):
        res.compare("gradient", "random", "e_sideways")


def test_boxplot(small_cnn, tmp_path):
    pytest.importorskip("matplotlib")
    model, x, net = small_cnn
    res = ev.evaluate(model, x, METHODS, net=net, progress=False)
    path = ev.boxplot(res, str(tmp_path / "box.png"), metrics=("de_minus", "e_plus"),
                      title="test")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_boxplot_without_matplotlib(small_cnn, tmp_path, monkeypatch):
    model, x, net = small_cnn
    res = ev.evaluate(model, x, ["random", "gradient"], net=net, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'refbbp\[figures\]'"):
        ev.boxplot(res, str(tmp_path / "box.png"))


@pytest.mark.parametrize("method, rule", [("bias", "sign"), ("bias-deviation", "deviation")])
def test_bias_methods_use_bbp(method, rule, rng):
    """"bias" is BBp's attribution (sign rule, T = 1), |beta| summed over channels."""
    from refbbp.bbp import bbp

    model, x = build_cnn(rng, channels=2, size=6, batch=3)
    net = refbbp.load(model)
    classes = np.array([0, 2, 1])
    maps = ev.saliency_maps(net, x, [method], classes=classes)[method]
    for i in range(len(x)):
        beta = bbp(net, x[i], target=int(classes[i]), rule=rule, temperature=1.0).beta
        np.testing.assert_allclose(maps[i], np.abs(beta).sum(0), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_files(tmp_path, rng):
    import onnx

    model, x = build_resnet(rng, channels=1, size=6, batch=5)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=np.arange(5) % 3)
    return str(path), str(data), x


def test_cli_evaluate_table_and_files(cli_files, tmp_path, capsys):
    from refbbp.cli import main

    model, data, _ = cli_files
    out = tmp_path / "out"
    status = main(["evaluate", model, data, "--methods", "gradient", "layers-all", "random",
                   "--n", "4", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    assert "(4 images" in text and "Wilcoxon signed-rank tests on de_delta" in text
    for m in ("gradient", "layers-all", "random"):
        assert m in text
    with open(out / "evaluation.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4 * 3
    assert json.loads((out / "evaluation.json").read_text())["n_images"] == 4


def test_cli_evaluate_json(cli_files, capsys):
    from refbbp.cli import main

    model, data, _ = cli_files
    status = main(["evaluate", model, data, "--methods", "gradient", "random", "--json",
                   "--metric", "e_minus", "--seed", "3"])
    assert status == 0
    d = json.loads(capsys.readouterr().out)
    assert d["methods"] == ["gradient", "random"] and d["n_images"] == 5
    assert d["config"]["seed"] == 3
    assert d["comparisons"]["e_minus"][0]["a"] == "gradient"
    assert "images" not in d


@pytest.mark.parametrize("arrays, extra, match", [
    (None, [], "no such file"),                                    # DATA missing
    ({"images": "x"}, [], "expected an .npz with arrays x"),       # no x array
    ({"x": "x3"}, [], "x has shape"),                              # wrong input shape
    ({"x": "x"}, ["--methods", "nonsense"], "unknown method"),     # bad method
    ({"x": "x"}, ["--n", "0"], "--n must be >= 1"),
    ({"x": "x1"}, [], "at least 2 images"),                        # one image: no noise
    ({"x": "x"}, ["--baseline", "median"], "baseline must be a number"),  # no such baseline
    ({"x": "x"}, ["--baseline", "blur:0"], "sigma must be a positive"),
    ({"x": "x"}, ["--ties", "shuffle"], "invalid choice"),
    ({"x": "x"}, ["--never-flip", "drop"], "invalid choice"),
    ({"x": "x"}, ["--noise-pool", "5"], "noise_pool must be between 1 and 4"),  # 5 images
])
def test_cli_evaluate_bad_input(arrays, extra, match, cli_files, tmp_path, capsys):
    from refbbp.cli import main

    model, _, x = cli_files
    data = tmp_path / "bad.npz"
    if arrays is not None:
        values = {"x": x, "x3": x[:, :, :3], "x1": x[:1]}
        np.savez(data, **{k: values[v] for k, v in arrays.items()})
    argv = (["evaluate", model, str(data), "--methods", "gradient"] + extra
            if "--methods" not in extra else ["evaluate", model, str(data)] + extra)
    try:
        status = main(argv)
    except SystemExit as exc:  # a usage error, caught by argparse
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("refbbp: error:") and match in err
    assert len(err.strip().splitlines()) == 1


def test_cli_evaluate_options(cli_files, capsys):
    """--baseline, --ties, --never-flip and --noise-pool reach evaluate() and are
    recorded in the JSON's config; the table counts the images excluded."""
    from refbbp.cli import main

    model, data, _ = cli_files
    status = main(["evaluate", model, data, "--methods", "gradient", "random", "--json",
                   "--baseline", "mean", "--ties", "random", "--never-flip", "exclude",
                   "--noise-pool", "2"])
    assert status == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["baseline"] == "mean" and len(config["baseline_values"]) == 1
    assert config["ties"] == "random" and config["never_flip"] == "exclude"
    assert config["noise_pool"] == 2 and set(config["excluded"]) == {"gradient", "random"}
    status = main(["evaluate", model, data, "--methods", "gradient", "random",
                   "--baseline", "blur:1.5", "--never-flip", "exclude"])
    text = capsys.readouterr().out
    assert status == 0
    assert "baseline blur:1.5, ties index, never-flip exclude, noise pool 1" in text
    assert "excluded" in text.splitlines()[1]
