"""Window matrices (``refbbp/network/window.py``): storage does not change the numbers
(SPEC section 1).

* Each window matrix unrolls (``to_csr``) to exactly the CSR matrix the converters
  built directly before (``conv_matrix``, ``conv_transpose_matrix``), entry for entry,
  and its matrix-free products agree with the unrolled ones.
* On random networks (tests/strategies.py: groups, dilations, asymmetric pads, auto_pad,
  ceil_mode, count_include_pad, NHWC exports, zero pads before convolutions), a network
  loaded with ``storage="auto"`` and the same network with ``storage="csr"`` agree to
  1e-12 on the forward pass, ``w``, ``b^x`` and every node's beta.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refbbp
from refbbp.network.window import WindowMatrix, window_table
from refbbp.onnx.conv import conv_matrix, conv_transpose_matrix, conv_transpose_window
from refbbp.onnx.windows import SpatialGeometry
from tests.strategies import models

AGREE = 1e-12

pytestmark = pytest.mark.filterwarnings("ignore::refbbp.ImportNotice")


def _c_order_strides(channels, spatial):
    return [int(np.prod(spatial))] + [int(np.prod(spatial[a + 1:])) for a in range(len(spatial))]


@st.composite
def conv_geometries(draw):
    n = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(2, 6)) for _ in range(n))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * n)]
    out = []
    for a in range(n):
        span = spatial[a] + pads[a] + pads[n + a] - ((kernel[a] - 1) * dil[a] + 1)
        if span < 0:
            pads[n + a] += -span
            span = 0
        out.append(span // strides[a] + 1)
    groups = draw(st.sampled_from([1, 2]))
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return spatial, kernel, strides, dil, pads[:n], out, groups, cg, mg


@given(geom=conv_geometries(), seed=st.integers(0, 2**32 - 1))
def test_conv_window_unrolls_to_the_direct_csr(geom, seed):
    spatial, kernel, strides, dil, begin, out, groups, cg, mg = geom
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(groups * mg, cg) + kernel)
    w[rng.random(w.shape) < 0.2] = 0.0                  # kernel zeros stay structural
    ref = conv_matrix(w, spatial, SpatialGeometry(out, begin), strides, dil, groups)
    tables = [window_table(o, k, s, d, b, n) for o, k, s, d, b, n
              in zip(out, kernel, strides, dil, begin, spatial)]
    wm = WindowMatrix(w, groups, tables, spatial, _c_order_strides(groups * cg, spatial), 0,
                      groups * cg * int(np.prod(spatial)))
    _assert_same_matrix(wm, ref, rng)


@given(geom=conv_geometries(), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_window_unrolls_to_the_direct_csr(geom, seed):
    spatial, kernel, strides, dil, begin, _, groups, cg, mg = geom
    rng = np.random.default_rng(seed)
    full = [st_ * (s - 1) + (k - 1) * d + 1 for st_, s, k, d in zip(strides, spatial, kernel, dil)]
    begin = [min(b, f - 1) for b, f in zip(begin, full)]
    out = [f - b for f, b in zip(full, begin)]
    w = rng.normal(size=(groups * cg, mg) + kernel)
    ref = conv_transpose_matrix(w, spatial, out, begin, strides, dil, groups)
    ref.sum_duplicates()
    _assert_same_matrix(conv_transpose_window(w, spatial, out, begin, strides, dil, groups),
                        ref, rng)


def _assert_same_matrix(wm, ref, rng):
    csr = wm.to_csr()
    assert csr.shape == ref.shape and wm.nnz == ref.nnz == csr.nnz
    np.testing.assert_array_equal(csr.indptr, ref.indptr)
    np.testing.assert_array_equal(csr.indices, ref.indices)
    np.testing.assert_array_equal(csr.data, ref.data)
    u = rng.normal(size=(2, wm.shape[1]))
    np.testing.assert_allclose(wm.matmul_rows(u), (ref @ u.T).T, rtol=AGREE, atol=AGREE)
    g = rng.normal(size=(2, wm.shape[0]))
    np.testing.assert_allclose(wm.rmatmul_rows(g), (ref.T @ g.T).T, rtol=AGREE, atol=AGREE)
    for p in rng.integers(0, wm.shape[0], size=5):
        cols, vals = wm.row(p)
        lo, hi = ref.indptr[p], ref.indptr[p + 1]
        np.testing.assert_array_equal(cols, ref.indices[lo:hi])
        np.testing.assert_array_equal(vals, ref.data[lo:hi])
    assert wm.max_row == int(np.diff(ref.indptr).max(initial=0))


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(initial=0.0), np.finfo(float).tiny)
    np.testing.assert_allclose(a, b, rtol=0, atol=AGREE * scale, err_msg=what)


@given(example=models(), rule=st.sampled_from(["sign", "deviation"]))
def test_window_and_csr_storage_give_the_same_numbers(example, rule):
    model, x = example
    auto = refbbp.load(model)
    csr = refbbp.load(model, storage="csr")
    assert [n.shape for n in auto.nodes] == [n.shape for n in csr.nodes]
    assert all(set(n.describe_storage().split(",")) <= {"-", "dense", "csr"}
               for n in csr.nodes)
    _close(auto.forward(x), csr.forward(x), "forward")
    la, lc = auto.linearize(x), csr.linearize(x)
    _close(la.w, lc.w, "w")
    _close(la.bias_x, lc.bias_x, "bias_x")
    aa = refbbp.bbp(auto, x, rule=rule, return_layers=True)
    ac = refbbp.bbp(csr, x, rule=rule, return_layers=True)
    for k, (ba, bc) in enumerate(zip(aa.node_beta, ac.node_beta)):
        _close(ba, bc, f"beta of node {k}")


def test_window_storage_is_used_for_convolutions_and_pooling():
    """The bundled digits model: every Conv is a window matrix, and so is nothing else."""
    from refbbp import data

    net = refbbp.load(data.model_path())
    for node in net.nodes:
        if node.op == "Conv":
            assert node.describe_storage() == "window", node.name
    assert "window" in net.summary()
    x = data.load_samples()[0][:2]
    explicit = refbbp.load(data.model_path(), storage="csr")
    _close(net.forward(x), explicit.forward(x), "forward")


def test_unknown_storage_is_refused():
    from refbbp import data

    with pytest.raises(ValueError, match="storage must be one of 'auto', 'csr'"):
        refbbp.load(data.model_path(), storage="dense")


def test_node_to_csr_is_the_explicit_form():
    """Node.to_csr(): every weight matrix explicit (window unrolled, dense with every
    entry, zeros included), equal to what storage="csr" loads."""
    from refbbp import data

    auto = refbbp.load(data.model_path())
    csr = refbbp.load(data.model_path(), storage="csr")
    for na, nc in zip(auto.nodes, csr.nodes):
        for a, c in zip(na.to_csr(), nc.to_csr()):
            assert a.format == "csr" and a.shape == c.shape and a.nnz == c.nnz
            np.testing.assert_array_equal(a.indices, c.indices)
            np.testing.assert_allclose(a.data, c.data, rtol=1e-15, atol=0)
    dense = next(n for n in auto.nodes if n.describe_storage() == "dense")
    assert dense.to_csr()[0].nnz == dense.weights[0].size


def test_large_kernels_take_the_general_row_path(rng):
    """A 9x9 kernel lists 81 positions per row, more than the kernel's flat table
    (WINDOW_SPOTS = 64): its rows go through the general emit-then-process path, with the
    same numbers as the unrolled matrix."""
    from tests.helpers import make_model, make_node

    w = rng.normal(0, 0.1, (3, 2, 9, 9))
    model = make_model([make_node("Conv", ["x", "W"], ["c"], pads=[4, 4, 4, 4]),
                        make_node("Relu", ["c"], ["r"]), make_node("Flatten", ["r"], ["f"]),
                        make_node("Gemm", ["f", "V", "b"], ["y"], transB=1)],
                       {"x": (2, 10, 10)}, ["y"],
                       {"W": w, "V": rng.normal(0, 0.1, (4, 300)), "b": rng.normal(size=4)})
    x = rng.normal(size=(2, 2, 10, 10))
    auto, csr = refbbp.load(model), refbbp.load(model, storage="csr")
    assert auto.nodes[1].describe_storage() == "window" and auto.nodes[1].weights[0].max_row == 162
    for rule in ("sign", "deviation"):
        a, c = refbbp.bbp(auto, x, rule=rule), refbbp.bbp(csr, x, rule=rule)
        assert a.completeness().ok()
        for k, (ba, bc) in enumerate(zip(a.node_beta, c.node_beta)):
            _close(ba, bc, f"beta of node {k}")
