"""The saliency-method registry (refbbp/evaluate/registry.py): every method is named
once, and validation, error messages, dispatch and the CLI default all read it."""

from __future__ import annotations

import numpy as np
import pytest

import refbbp
from refbbp import evaluate as ev
from refbbp.evaluate.registry import lookup, resolve
from tests.models import build_resnet

SYNTAXES = ["gradient", "fullgrad", "fullgrad-official", "fullgrad-official-2019",
            "layers-all", "layers-topK", "layers-from:N", "activity:N", "biasgrad:N", "bias",
            "bias-deviation", "random"]


def test_valid_names_come_from_the_registry():
    assert ev.method_syntaxes() == SYNTAXES
    with pytest.raises(ValueError, match="unknown method") as info:
        lookup("nonsense")
    assert ", ".join(SYNTAXES) + ", or a callable" in str(info.value)


@pytest.mark.parametrize("name, key, decomposition, args", [
    ("gradient", "gradient", True, ()),
    ("fullgrad-official", "fullgrad-official", True, ()),
    ("layers-all", "layers-", True, ("all", True)),
    ("layers-top3-noinput", "layers-", True, ("top3", False)),
    ("layers-from:7", "layers-", True, (7, True)),
    ("activity:4", "activity:", True, (4,)),
    ("biasgrad:12", "biasgrad:", True, (12,)),
    ("bias", "bias", False, ()),
    ("bias-deviation", "bias-deviation", False, ()),
    ("random", "random", False, ()),
])
def test_lookup(name, key, decomposition, args):
    entry, got = lookup(name)
    assert entry.key == key and entry.decomposition == decomposition and got == args
    assert entry.description and "\n" not in entry.description


@pytest.mark.parametrize("name, match", [
    ("layers-", "not understood"),
    ("layers-top", "not understood"),
    ("layers-from:", "not understood"),
    ("layers-all-noinput-noinput", "not understood"),
    ("activity:", "needs a node index"),
    ("biasgrad:-1", "needs a node index"),
    ("Gradient", "unknown method"),          # names are case-sensitive
    (3, "unknown method"),                   # neither a name nor a callable
])
def test_lookup_rejects(name, match):
    with pytest.raises(ValueError, match=match):
        resolve([name])


def test_default_methods_are_registered_and_the_cli_default():
    from refbbp.cli import build_parser

    for name in ev.DEFAULT_METHODS:
        lookup(name)
    args = build_parser().parse_args(["evaluate", "model.onnx", "data.npz"])
    assert args.methods == list(ev.DEFAULT_METHODS)


def test_a_registered_method_is_usable_by_name(rng):
    model, x = build_resnet(rng, channels=1, size=6, batch=4)
    net = refbbp.load(model)

    def first_pixel(net_, xs, classes, rng_, *args):
        s = np.zeros((len(xs),) + tuple(net_.input_shape[1:]))
        s[:, 0, 0] = 1.0
        return s

    ev.register("first-pixel", "the top-left pixel only")(first_pixel)
    try:
        assert ev.method_syntaxes()[-1] == "first-pixel"
        res = ev.evaluate(model, x, ["first-pixel", "gradient"], net=net, keep_maps=True,
                          progress=False)
        assert res.methods == ["first-pixel", "gradient"]
        np.testing.assert_array_equal(res.maps["first-pixel"][:, 0, 0], 1.0)
        with pytest.raises(ValueError, match="registered twice"):
            ev.register("first-pixel", "again")(first_pixel)
    finally:
        del ev.METHODS["first-pixel"]
    with pytest.raises(ValueError, match="unknown method"):
        lookup("first-pixel")


def test_random_maps_do_not_depend_on_batching(rng):
    """One generator over consecutive batches draws what one call on all draws."""
    model, x = build_resnet(rng, channels=1, size=6, batch=5)
    net = refbbp.load(model)
    whole = ev.saliency_maps(net, x, ["random"], seed=9)["random"]
    gen = np.random.default_rng(9)
    parts = [ev.saliency_maps(net, x[a:a + 2], ["random"], rng=gen)["random"]
             for a in range(0, 5, 2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
