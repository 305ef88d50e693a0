"""refbbp on the PyTorch-exported fixtures in ``tests/fixtures`` (built by
``tests/fixtures/make_fixtures.py``; PyTorch is not needed to run these tests).

For every committed ``NAME.EXPORTER.onnx`` with its ``NAME.npz`` (sample inputs ``x`` and
PyTorch's float32 outputs ``y``):

* ``refbbp.load`` works and reads the input shape;
* the float64 forward pass agrees with onnxruntime and with PyTorch to float32
  accuracy (SPEC section 2: rtol 1e-4, atol 1e-5 times the output scale);
* the local linear model is exact (``lin.check() <= 1e-9``), its gradient is the
  directional derivative of the network, and its bias matches the frozen network at 0;
* the exports of one module by different exporters load into the same network (SPEC
  section 1, canonical form): same nodes, same matrices, same logits, same ``w`` and
  ``b^x``, to float64 rounding when the files hold the same float32 parameters
  (``legacy``, ``dynamo``) and to float32 rounding when the exporter folded BatchNorm
  itself (``dynamo_opt``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import refbbp
from tests.helpers import run_ort

FIXTURES = Path(__file__).parents[1] / "fixtures"
FILES = sorted(FIXTURES.glob("*.onnx"))
MODELS = sorted({p.name.split(".")[0] for p in FILES})

# Exporters whose files hold the module's own float32 parameters (BatchNorm not folded
# by the exporter): refbbp must turn them into networks equal to float64 rounding.
EXACT_EXPORTERS = ("legacy", "dynamo")
EXACT_RTOL = 1e-9
# dynamo_opt: the exporter folded BatchNorm into the convs in float32.
FLOAT32_RTOL = 1e-5

# Fixtures refbbp cannot load yet: file name -> reason. Strict, so that a fix shows up.
KNOWN_FAILURES = {}


def _marks(*names):
    reasons = [KNOWN_FAILURES[n] for n in names if n in KNOWN_FAILURES]
    if not reasons:
        return ()
    return (pytest.mark.xfail(reason="; ".join(reasons), raises=refbbp.UnsupportedOpError,
                              strict=True),)


def _file_params():
    return [pytest.param(p, id=p.name.removesuffix(".onnx"), marks=_marks(p.name))
            for p in FILES]


def _pair_params():
    out = []
    for model in MODELS:
        kinds = sorted(p.name.split(".")[1] for p in FILES if p.name.startswith(model + "."))
        for a, b in itertools.combinations(kinds, 2):
            names = (f"{model}.{a}.onnx", f"{model}.{b}.onnx")
            out.append(pytest.param(model, a, b, id=f"{model}-{a}-{b}", marks=_marks(*names)))
    return out


_cache = {}


def load(path):
    path = Path(path)
    if path not in _cache:
        _cache[path] = refbbp.load(path)
    return _cache[path]


def samples(path):
    data = np.load(FIXTURES / (Path(path).name.split(".")[0] + ".npz"))
    return data["x"], data["y"]


def assert_float32_close(actual, desired):
    """SPEC section 2: rtol 1e-4, atol 1e-5 times the output scale."""
    scale = np.abs(desired).max()
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5 * scale)


def assert_rel_close(actual, desired, rtol):
    actual, desired = np.asarray(actual), np.asarray(desired)
    scale = max(np.abs(desired).max(), np.finfo(float).tiny)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


def test_fixtures_present():
    assert len(MODELS) >= 4, MODELS
    for model in MODELS:
        assert (FIXTURES / f"{model}.npz").exists()
        for kind in EXACT_EXPORTERS:
            assert (FIXTURES / f"{model}.{kind}.onnx").exists()


@pytest.mark.parametrize("path", _file_params())
def test_load(path):
    net = load(path)
    x, y = samples(path)
    assert net.input_shape == x.shape[1:]
    assert net.n_outputs == y.shape[1]
    assert net.batch_axis
    assert net.notices == []
    assert net.nodes[0].kind == "input"
    assert all(n.kind in ("affine", "max") for n in net.nodes[1:])


@pytest.mark.parametrize("path", _file_params())
def test_forward_matches_onnxruntime_and_torch(path):
    net = load(path)
    x, y_torch = samples(path)
    out = net.forward(x)
    assert out.dtype == np.float64 and out.shape == y_torch.shape
    y_ort = run_ort(path, x)
    assert_float32_close(out, y_ort)
    assert_float32_close(out, y_torch)
    # one input without a batch axis gives the same row (BLAS may round differently)
    assert_rel_close(net.forward(x[0]), out[0], 1e-12)


@pytest.mark.parametrize("path", _file_params())
def test_linear_model_exact(path):
    net = load(path)
    x, _ = samples(path)
    for target in (None, "top2", 0, np.linspace(-1.0, 1.0, net.n_outputs)):
        lin = refbbp.linearize(net, x, target=target)
        assert lin.check() <= 1e-9
        assert lin.w.shape == x.shape
        np.testing.assert_allclose(lin.value, np.einsum("bo,bo->b", lin.target, lin.logits))
        # the bias of all outputs at once: the network with the pattern frozen, at 0
        b_all = lin.bias_x_all()
        assert_rel_close(np.einsum("bo,bo->b", lin.target, b_all), lin.bias_x, 1e-9)


@pytest.mark.parametrize("path", _file_params())
def test_gradient_is_directional_derivative(path):
    """``w`` predicts f along a random direction, as long as the activation pattern holds."""
    net = load(path)
    x, _ = samples(path)
    x = x.astype(np.float64)
    rng = np.random.default_rng(0)
    lin = refbbp.linearize(net, x)
    d = rng.standard_normal(x.shape)
    eps = 1e-3
    for _ in range(40):
        t = net.trace(x + eps * d)
        same = all(
            (a is None or np.array_equal(a, b)) for a, b in
            zip(lin.trace.pieces + lin.trace.selected, t.pieces + t.selected))
        if same:
            break
        eps /= 2
    assert same, "no step keeps the activation pattern"
    f_new = np.einsum("bo,bo->b", lin.target, t.logits)
    pred = lin.value + eps * (lin.w * d).reshape(len(x), -1).sum(1)
    assert_rel_close(f_new, pred, 1e-9)


def _same_matrix(a, b, rtol):
    """Same storage, same structure, values within ``rtol`` (window matrices compared
    unrolled)."""
    assert type(a) is type(b)
    if hasattr(a, "to_csr"):
        a, b = a.to_csr(), b.to_csr()
    if sp.issparse(a):
        a, b = a.tocsr(), b.tocsr()
        a.sort_indices(), b.sort_indices()
        assert a.nnz == b.nnz
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        a, b = a.data, b.data
    assert_rel_close(a, b, rtol)


def assert_same_network(net_a, net_b, rtol):
    """Same nodes (kind, shape, wiring, activation, storage) and matrices within ``rtol``.

    ``Node.op`` (a label for people) may differ: GlobalAveragePool vs ReduceMean.
    """
    assert len(net_a.nodes) == len(net_b.nodes), (net_a.summary(), net_b.summary())
    assert net_a.output == net_b.output
    for k, (a, b) in enumerate(zip(net_a.nodes, net_b.nodes)):
        where = f"node {k}: {a.name} ({a.op}) vs {b.name} ({b.op})"
        assert (a.kind, a.shape, a.inputs) == (b.kind, b.shape, b.inputs), where
        assert (a.activation is None) == (b.activation is None), where
        if a.activation is not None:
            assert a.activation.name == b.activation.name, where
            for attr in ("breaks", "slopes", "offsets"):
                np.testing.assert_allclose(getattr(a.activation, attr),
                                           getattr(b.activation, attr), rtol=1e-7,
                                           err_msg=where)
        if a.kind == "max":
            np.testing.assert_array_equal(a.window, b.window, err_msg=where)
            continue
        assert a.describe_storage() == b.describe_storage(), where
        assert a.nnz == b.nnz, where
        for wa, wb in zip(a.weights, b.weights):
            _same_matrix(wa, wb, rtol)
        assert_rel_close(a.bias, b.bias, rtol)


@pytest.mark.parametrize("model, kind_a, kind_b", _pair_params())
def test_exporters_agree(model, kind_a, kind_b):
    exact = kind_a in EXACT_EXPORTERS and kind_b in EXACT_EXPORTERS
    rtol = EXACT_RTOL if exact else FLOAT32_RTOL
    net_a = load(FIXTURES / f"{model}.{kind_a}.onnx")
    net_b = load(FIXTURES / f"{model}.{kind_b}.onnx")
    x, _ = samples(FIXTURES / f"{model}.npz")
    assert_rel_close(net_a.forward(x), net_b.forward(x), rtol)
    lin_a, lin_b = refbbp.linearize(net_a, x), refbbp.linearize(net_b, x)
    np.testing.assert_array_equal(lin_a.target, lin_b.target)
    for i in range(len(x)):
        assert_rel_close(lin_a.w[i], lin_b.w[i], rtol)
    assert_rel_close(lin_a.bias_x, lin_b.bias_x, rtol)
    assert_same_network(net_a, net_b, rtol)
