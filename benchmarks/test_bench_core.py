"""pytest-benchmark version of ``bench_core.py``::

    pytest benchmarks/test_bench_core.py --benchmark-group-by=param:m

refbbp forward and linearize, onnxruntime forward and (if installed) PyTorch's gradient
pass for the models of ``models.py``, one input each. One model is built and loaded at
a time (the fixture is module-scoped and parametrized).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

import refbbp  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0x5EED)


@pytest.fixture(scope="module", params=models.MODELS, ids=lambda m: f"{m=}")
def built(request, tmp_path_factory):
    import onnxruntime as ort

    name = request.param
    path, module, shape = models.build(name, tmp_path_factory.mktemp(name))
    net = refbbp.load(path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    yield SimpleNamespace(name=name, net=net, sess=sess, module=module, shape=shape)


def _input(built, rng):
    return rng.standard_normal(built.shape)


def test_refbbp_forward(benchmark, built, rng):
    x = _input(built, rng)
    benchmark.group = built.name
    built.net.forward(x)  # warm-up
    y = benchmark(built.net.forward, x)
    assert y.shape == (built.net.n_outputs,)


def test_refbbp_linearize(benchmark, built, rng):
    x = _input(built, rng)
    benchmark.group = built.name
    refbbp.linearize(built.net, x)  # warm-up (builds the cached transposes)
    lin = benchmark(refbbp.linearize, built.net, x)
    assert lin.check() <= 1e-9


def test_ort_forward(benchmark, built, rng):
    x = _input(built, rng).astype(np.float32)[None]
    benchmark.group = built.name
    feed = {built.sess.get_inputs()[0].name: x}
    built.sess.run(None, feed)  # warm-up
    benchmark(built.sess.run, None, feed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_gradient(benchmark, built, rng, dtype):
    torch = pytest.importorskip("torch")
    if built.module is None:
        pytest.skip("model built without torch")
    module = copy.deepcopy(built.module).to(getattr(torch, dtype))
    x = torch.from_numpy(_input(built, rng).astype(dtype))
    benchmark.group = built.name

    def grad_pass():
        xt = x.clone().requires_grad_(True)
        module(xt[None])[0, 0].backward()
        return xt.grad

    grad_pass()  # warm-up
    benchmark(grad_pass)
