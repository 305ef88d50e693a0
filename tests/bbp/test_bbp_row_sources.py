"""The row sources of the kernel (refbbp/_core.pyx ``NodeRows``: CSR arrays, a dense
matrix, a window matrix, several of them stacked), each built as production builds it
(``refbbp.bbp.structure.node_structure`` of a node of a small Network).

What each is tested against:

* rows -- ``_core.emit_row`` against the matrices themselves: ``WindowMatrix.row``
  (bitwise, every row), the CSR arrays and the dense rows, input by input with the
  column offsets of the stacked inputs; ``_core.emit_all`` against the ``emit_row``s.
* reverse pass (``kernels.reverse_node``) -- the BBp messages against the dense
  replicated reference ``dense_bbp_node`` of tests/bbp/test_bbp_kernels.py on the
  unrolled, stacked matrix (``WindowMatrix.to_csr``, every dense entry structural); the
  gradient messages against ``(slope * g) @ A`` (to 1e-12 relative to
  ``|slope * g| @ |A|``); a window source against a CSR source of its ``to_csr()``:
  bitwise for layouts that list a row's columns in increasing order (NCHW and a box cut
  out of it), to 1e-12 for the others (NHWC, a reversed axis); rows with nothing to send
  skipped (block flags, untouched accumulators); bitwise the same over 1, 2 and 3
  threads.
* forward pass (``_core.rows_forward_memview``) -- against ``A @ u + bias`` of the
  unrolled matrix (to 1e-13 relative to ``|A| @ |u| + |bias|``), bitwise the same for
  any block count and thread count; its status table.
* safety -- the forward entry point refuses workspace rows shorter than a row (as the
  reverse one does), and ``NodeRows`` refuses more sources than it was made for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from refbbp import _core
from refbbp.bbp.kernels import reverse_node
from refbbp.bbp.structure import node_structure
from refbbp.network import Network, Node
from refbbp.network.window import WindowMatrix, window_table
from refbbp.onnx.conv import grid_strides
from tests.bbp.test_bbp_kernels import (AGREE, RULES, dense_bbp_node, reverse_workspace,
                                        structure_of)

GRAD = 1e-12      # gradient messages vs (slope * g) @ A, relative to |slope * g| @ |A|
FORWARD = 1e-13   # forward pass vs A @ u + bias, relative to |A| @ |u| + |bias|

# Layouts of the node a window matrix reads. "Ordered" ones list each row's columns in
# increasing order, as the unrolled CSR matrix does: the same entries in the same order.
LAYOUTS = ["nchw", "box", "nhwc", "flipped"]
ORDERED = {"nchw", "box"}


# ------------------------------------------------------------------ test data
def random_window(rng, n_axes, layout="nchw", groups=1, row_scale=False, mg=None):
    """A random convolution as a WindowMatrix: random kernel size, stride, dilation and
    padding per axis, kernel zeros (structural), over the input layout ``layout``:

    * ``"nchw"``: the node is the (C, *spatial) grid in C order;
    * ``"box"``: the (C, *spatial) box inside a (C + 1, *(spatial + 2)) node (a Slice,
      or the inside of a zero Pad): ``base`` > 0 and unread columns;
    * ``"nhwc"``: the node is the (*spatial, C) grid (seen through a Transpose);
    * ``"flipped"``: NCHW with the last spatial axis reversed (a negative stride).

    In the last two layouts the rows do not list their columns in increasing order (the
    geometry is constrained so that some row has several entries out of order).
    ``mg``: output channels per group (default: 1 to 3, below the vectorised pass's
    minimum, so that the rows go one by one).
    """
    top = 6 if n_axes < 3 else 4
    spatial = [int(s) for s in rng.integers(2, top + 1, n_axes)]
    kernel = [int(k) for k in rng.integers(1, 4, n_axes)]
    stride = [int(s) for s in rng.integers(1, 4, n_axes)]
    dil = [int(d) for d in rng.integers(1, 3, n_axes)]
    pads = [int(p) for p in rng.integers(0, 3, 2 * n_axes)]
    if layout not in ORDERED:       # some row has 3 positions along the last axis ...
        spatial[-1], kernel[-1], stride[-1], dil[-1] = max(spatial[-1], 3), 3, 1, 1
    out = []
    for a in range(n_axes):
        span = spatial[a] + pads[a] + pads[n_axes + a] - ((kernel[a] - 1) * dil[a] + 1)
        out.append(max(span, 0) // stride[a] + 1)
    tables = [window_table(o, k, s, d, b, n) for o, k, s, d, b, n
              in zip(out, kernel, stride, dil, pads[:n_axes], spatial)]
    cg = int(rng.integers(1, 4))
    mg = int(rng.integers(1, 4)) if mg is None else mg
    if layout == "nhwc":            # ... and 2 channels: NHWC rows are then not sorted
        cg = max(cg, 2)
    c = groups * cg
    w = rng.normal(size=(groups * mg, cg) + tuple(kernel))
    w[rng.random(w.shape) < 0.2] = 0.0                  # kernel zeros stay structural
    size = c * int(np.prod(spatial))
    if layout == "nchw":
        strides, base, n_cols = grid_strides(c, spatial), 0, size
    elif layout == "box":
        big = [s + 2 for s in spatial]
        strides = grid_strides(c + 1, big)
        base = strides[0] + sum(strides[1:])            # element (1, 1, ..., 1)
        n_cols = (c + 1) * int(np.prod(big))
    elif layout == "nhwc":
        steps = grid_strides(1, spatial + [c])[1:]      # C-order steps of (*spatial, C)
        strides, base, n_cols = [steps[-1]] + steps[:-1], 0, size
    elif layout == "flipped":
        strides = grid_strides(c, spatial)
        base = (spatial[-1] - 1) * strides[-1]
        strides[-1] = -strides[-1]
        n_cols = size
    n_rows = groups * mg * int(np.prod(out))
    scale = rng.uniform(0.2, 2.0, n_rows) if row_scale else None
    return WindowMatrix(w, groups, tables, spatial, strides, base, n_cols, scale)


def structure(weights):
    """The NodeStructure refbbp.bbp builds for an affine node reading one input per
    weight matrix (input i of size ``weights[i].shape[1]``)."""
    sizes = [w.shape[1] for w in weights]
    nodes = [Node("x", "input", "Input", (sizes[0],))]
    for i, s in enumerate(sizes[1:], 1):                # further inputs read node 0
        nodes.append(Node(f"u{i}", "affine", "Gemm", (s,), [0], [np.zeros((s, sizes[0]))]))
    n_rows = weights[0].shape[0]
    nodes.append(Node("n", "affine", "Test", (n_rows,), list(range(len(sizes))),
                      list(weights)))
    net = Network(nodes, len(nodes) - 1, (sizes[0],))
    return node_structure(net, len(nodes) - 1)


def unrolled(weights):
    """The stacked matrix as one CSR matrix (sorted indices), kernel zeros and every
    dense entry structural: built from the matrices, not from the kernel's rows."""
    parts = []
    for w in weights:
        if isinstance(w, WindowMatrix):
            parts.append(w.to_csr())
        elif sp.issparse(w):
            parts.append(sp.csr_array(w))
        else:
            n, m = w.shape
            parts.append(sp.csr_array((np.asarray(w, np.float64).ravel(),
                                       np.tile(np.arange(m), n), np.arange(0, n * m + 1, m)),
                                      shape=w.shape))
    a = sp.csr_array(sp.hstack(parts, format="csr"))
    a.sort_indices()
    return a


def csr_order(st):
    """The permutation from the kernel's entry order (``st.entry_start``) to the order of
    the sorted CSR matrix: ``ext_csr = ext[csr_order(st)]``."""
    cols, _ = st.entries()
    row = np.repeat(np.arange(st.n_rows), np.diff(st.entry_start))
    return np.lexsort((cols, row))


def random_values(rng, st, zero_input=0.3, dead_rows=0.2):
    """Random node values for a structure, as tests/bbp/test_bbp_kernels.random_node
    makes them: zero inputs, rows with slope 0, zero bias and beta, user scores and
    weights summing to 1 over each row's non-zero components, by the kernel's entries."""
    n_rows, n_cols = st.n_rows, st.n_cols
    cols, w = st.entries()
    row = np.repeat(np.arange(n_rows), np.diff(st.entry_start))
    u = rng.normal(size=n_cols)
    u[rng.random(n_cols) < zero_input] = 0.0
    slope = rng.choice([1.0, 0.5, -0.7], n_rows)
    slope[rng.random(n_rows) < dead_rows] = 0.0
    bias_x, beta, g = (rng.normal(size=n_rows) for _ in range(3))
    for v in (bias_x, beta, g):
        v[rng.random(n_rows) < 0.2] = 0.0
    kappa = slope[row] * w * u[cols]
    weights = np.zeros(st.nnz)
    for p in range(n_rows):
        lo, hi = st.entry_start[p], st.entry_start[p + 1]
        nz = np.flatnonzero(kappa[lo:hi]) + lo
        if nz.size:
            x = rng.normal(size=nz.size)
            weights[nz] = x - (x.sum() - 1.0) / nz.size
    return dict(u=u, slope=slope, bias_x=bias_x, h=rng.normal(size=n_rows), g=g, beta=beta,
                scores=rng.normal(size=st.nnz) * 3, weights=weights)


def reverse(st, v, rule="sign", temperature=1.0, g=True, ext=None, rows=None, n_threads=1):
    """reverse_node on the values ``v``: (grad, received, fallback)."""
    if ext is None:
        ext = {"scores": v["scores"], "weights": v["weights"]}.get(rule)
    return reverse_node(st, st.rows if rows is None else rows, v["u"], v["slope"],
                        v["bias_x"], v["h"], v["g"] if g else None, v["beta"],
                        rule_code=RULES[rule], temperature=temperature, n_threads=n_threads,
                        ext=ext)


def assert_grad(grad, a, v):
    """``grad`` is ``(slope * g) @ A`` to GRAD relative."""
    sg = v["slope"] * v["g"]
    want = sg @ a.toarray()
    bound = GRAD * (np.abs(sg) @ np.abs(a.toarray())) + 1e-300
    assert grad.dtype == np.float64 and grad.shape == want.shape
    assert np.all(np.abs(grad - want) <= bound)


def assert_matches_reference(st, a, v, rule, temperature, received, fallback):
    """``received`` and ``fallback`` agree with the dense replicated reference on the
    unrolled matrix ``a`` (as test_kernel_matches_dense_reference)."""
    ext = {"scores": v["scores"], "weights": v["weights"]}.get(rule)
    ext = None if ext is None else ext[csr_order(st)]
    want, want_fb = dense_bbp_node(a, v["u"], v["slope"], v["bias_x"], v["h"], v["beta"],
                                   rule, temperature, ext)
    scale = np.abs(v["beta"]).sum() * (1 + np.abs(v["weights"]).max(initial=0))
    np.testing.assert_allclose(received, want, rtol=0, atol=AGREE * scale)
    np.testing.assert_array_equal(fallback, want_fb)


def forward(rows, u, bias, blocks=1, max_row=1, n_threads=1):
    y = np.full(rows.n_rows, np.nan)
    cols = np.empty((blocks, max(max_row, 1)), np.int64)
    w = np.empty((blocks, max(max_row, 1)))
    status = _core.rows_forward_memview(rows, u, bias, y, cols, w, n_threads)
    assert status == _core.STATUS_OK
    return y


def one_of_each(rng, kind):
    """The weight matrices of a node of one kind of source (several for "stacked")."""
    if kind == "csr":
        a = sp.random(40, 30, density=0.3, random_state=rng, format="csr",
                      data_rvs=lambda n: rng.normal(size=n))
        a.data[rng.random(a.nnz) < 0.1] = 0.0            # explicit zeros stay structural
        return [sp.csr_array(a)]
    if kind == "dense":
        d = rng.normal(size=(20, 15))
        d[rng.random(d.shape) < 0.2] = 0.0               # every entry is structural
        return [d]
    if kind.startswith("window"):
        return [random_window(rng, 2, kind.split("-")[1], groups=2, row_scale=True)]
    return stacked_weights(rng)


def stacked_weights(rng, layout="nhwc"):
    """Three inputs of three kinds: a CSR diagonal (explicit zeros, an empty row), a
    window matrix and a dense matrix."""
    wm = random_window(rng, 2, layout, groups=2, row_scale=True)
    n = wm.shape[0]
    diag = rng.normal(size=n - 1)
    diag[rng.random(n - 1) < 0.2] = 0.0                  # explicit zeros, structural
    csr = sp.csr_array((diag, np.arange(1, n), np.r_[0, np.arange(n)]), shape=(n, n))
    dense = rng.normal(size=(n, 7))
    dense[rng.random(dense.shape) < 0.2] = 0.0
    return [csr, wm, dense]


KINDS = ["csr", "dense", "window-nchw", "window-nhwc", "stacked"]


# ------------------------------------------------------------------ the rows
WINDOW_CASES = [   # (spatial axes, layout, groups, row_scale)
    (1, "nchw", 1, False), (2, "nchw", 2, False), (3, "nchw", 1, True),
    (2, "nchw", 3, True), (1, "box", 2, True), (2, "box", 1, False), (3, "box", 2, False),
    (1, "nhwc", 2, True), (2, "nhwc", 1, False), (3, "nhwc", 2, True),
    (1, "flipped", 3, False), (2, "flipped", 1, True), (3, "flipped", 1, False),
]
WINDOW_IDS = [f"{n}d-{lay}-g{gr}" + ("-scaled" if rs else "") for n, lay, gr, rs in WINDOW_CASES]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=WINDOW_IDS)
def test_window_emit_row_is_the_matrix_row(rng, case):
    """The kernel's generated rows are WindowMatrix.row, bitwise, for every row; the
    structure's entry_start counts them."""
    wm = random_window(rng, *case)
    st = structure([wm])
    assert st.parts[0][0] == "window" and st.nnz == wm.nnz
    assert st.max_row == wm.max_row
    for p in range(wm.shape[0]):
        cols, w = _core.emit_row(st.rows, p)
        want_cols, want_w = wm.row(p)
        assert cols.dtype == np.int64 and w.dtype == np.float64
        assert np.array_equal(cols, want_cols)
        assert np.array_equal(w.view(np.uint64), want_w.view(np.uint64))
        assert st.entry_start[p + 1] - st.entry_start[p] == cols.size


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("case", WINDOW_CASES, ids=WINDOW_IDS)
def test_window_reverse_matches_unrolled_csr(rng, case, rule):
    """A window source gives what a CSR source of its to_csr() gives: bitwise when the
    rows list the same entries in the same order, else to 1e-12; gradient included."""
    wm = random_window(rng, *case)
    st = structure([wm])
    a = wm.to_csr()
    csr = structure_of(a, blocks=st.n_blocks)
    csr.rows.set_interleave(st.rows.interleave)        # the same visiting order
    assert st.rows.interleave == wm.out_channels
    assert csr.n_blocks == st.n_blocks and csr.nnz == st.nnz
    v = random_values(rng, st)
    order = csr_order(st)
    for temperature in (1.0, 0.3):
        got = reverse(st, v, rule, temperature)
        ext = {"scores": v["scores"], "weights": v["weights"]}.get(rule)
        want = reverse(csr, v, rule, temperature, ext=None if ext is None else ext[order])
        if case[1] in ORDERED:
            assert np.array_equal(order, np.arange(st.nnz))
            for x, y in zip(got, want):
                assert np.array_equal(x.view(np.uint64), y.view(np.uint64))
        else:
            assert not np.array_equal(order, np.arange(st.nnz))   # another order
            scale = np.abs(v["beta"]).sum() * (1 + np.abs(v["weights"]).max(initial=0))
            np.testing.assert_allclose(got[1], want[1], rtol=0, atol=AGREE * scale)
            np.testing.assert_array_equal(got[2], want[2])
            assert_grad(got[0], a, v)
        assert_matches_reference(st, a, v, rule, temperature, got[1], got[2])


VECTOR_CASES = [   # (spatial axes, layout, groups, output channels per group)
    (2, "nchw", 1, 4), (1, "nchw", 2, 7), (2, "box", 1, 13), (3, "nchw", 1, 5),
    (2, "nhwc", 2, 6), (1, "flipped", 1, 9), (2, "nchw", 1, 66), (1, "nhwc", 1, 130),
]


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0, np.inf])
@pytest.mark.parametrize("rule", ["sign", "deviation"])
@pytest.mark.parametrize("case", VECTOR_CASES,
                         ids=[f"{n}d-{lay}-g{gr}-m{mg}" for n, lay, gr, mg in VECTOR_CASES])
def test_window_vector_pass_matches_unrolled_csr(rng, case, rule, temperature):
    """The vectorised pass (_vector.h: a window node with at least 4 output channels
    per group, a built-in rule) gives what the row-by-row pass gives on the unrolled
    CSR matrix, to 1e-12: tiles of up to 64 channels (66 and 130 cross them), groups,
    channels not a multiple of 4, dead rows, zero inputs, rows with beta and no non-zero
    component (SPEC 3.6), gradient-only rows; its fallbacks are the same numbers, and
    its bits the same over 1, 2 and 3 threads."""
    n_axes, layout, groups, mg = case
    wm = random_window(rng, n_axes, layout, groups, mg=mg)
    st = structure([wm])
    assert st.rows.vector_workspace() != (0, 0) or not _core.VECTOR_PASS
    a = wm.to_csr()
    csr = structure_of(a, blocks=st.n_blocks)
    assert csr.rows.vector_workspace() == (0, 0)
    v = random_values(rng, st, zero_input=0.4, dead_rows=0.3)
    got = reverse(st, v, rule, temperature)
    want = reverse(csr, v, rule, temperature)
    scale = np.abs(v["beta"]).sum()
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=AGREE * scale)
    np.testing.assert_array_equal(got[2], want[2])
    assert_grad(got[0], a, v)
    assert_matches_reference(st, a, v, rule, temperature, got[1], got[2])
    for n_threads in (2, 3):
        other = reverse(st, v, rule, temperature, n_threads=n_threads)
        for x, y in zip(got, other):
            assert np.array_equal(x.view(np.uint64), y.view(np.uint64))


def test_vector_exp_is_within_an_ulp_of_exp():
    """The vectorised pass's exponential (x <= 0): exp(0) is exactly 1, and over
    [-746, 0] (subnormal results included) it is within 1 ulp of NumPy's exp (which is
    within 1 ulp of the exact value)."""
    if not _core.VECTOR_PASS:
        pytest.skip("kernel built without the vectorised pass")
    x = np.concatenate([-np.geomspace(1e-300, 746, 200_000), -np.linspace(0, 746, 100_001),
                        [0.0, -0.0, -1e-320, -708.4, -709.8, -744.9, -745.2, -746.0]])
    got = _core.exp_nonpos(x)
    want = np.exp(x)
    assert got[x == 0].tolist() == [1.0] * int(np.sum(x == 0))
    ulp = np.abs(got - want) / np.spacing(np.maximum(want, np.finfo(float).tiny * 2**-52))
    assert ulp.max() <= 1.0, (float(ulp.max()), float(x[np.argmax(ulp)]))


def test_vector_exp_short_path_is_bitwise_the_general_one(rng):
    """For x in [-600, 0] the pass's exponential takes a shorter path (2^n put into the
    table's exponent): the same bits as its general path, at random points, at the
    multiples of ln2 / 64 and halfway between them (and their neighbours), and down to
    the smallest subnormal inputs."""
    if not _core.VECTOR_PASS:
        pytest.skip("kernel built without the vectorised pass")
    k = rng.integers(-55400, 1, 200_000) * (np.log(2) / 64)
    h = k + np.log(2) / 128
    x = np.concatenate([-rng.uniform(0, 600, 300_000), -np.geomspace(5e-324, 600, 100_000),
                        k, np.nextafter(k, 0), np.nextafter(k, -1), h, np.nextafter(h, 0),
                        np.nextafter(h, -1), -np.arange(601.0), [-0.0, 0.0]])
    x = x[(x >= -600) & (x <= 0)]
    got = _core.exp_nonpos(x)
    assert np.array_equal(got.view(np.uint64), _core.exp_nonpos(x, far=True).view(np.uint64))


@pytest.mark.parametrize("case", WINDOW_CASES, ids=WINDOW_IDS)
def test_window_forward_matches_unrolled_csr(rng, case):
    """rows_forward_memview on a window source is to_csr() @ u + bias, and the same bits
    for any block and thread count."""
    wm = random_window(rng, *case)
    st = structure([wm])
    a = wm.to_csr()
    u = rng.normal(size=a.shape[1])
    bias = rng.normal(size=a.shape[0])
    y = forward(st.rows, u, bias, max_row=st.max_row)
    want = a @ u + bias
    assert np.all(np.abs(y - want) <= FORWARD * (abs(a) @ np.abs(u) + np.abs(bias)))
    for blocks, n_threads in ((3, 1), (5, 2), (7, 3)):
        other = forward(st.rows, u, bias, blocks, st.max_row, n_threads)
        assert np.array_equal(y.view(np.uint64), other.view(np.uint64))


# ------------------------------------------------------- dense and stacked inputs
def test_stacked_emit_row_lists_input_by_input(rng):
    """A node reading a CSR, a window and a dense input: each row lists the CSR entries,
    then the window's, then the dense row, with the stacked column offsets (bitwise)."""
    weights = stacked_weights(rng)
    csr, wm, dense = weights
    st = structure(weights)
    assert [kind for kind, _ in st.parts] == ["csr", "window", "dense"]
    off = np.cumsum([0] + [w.shape[1] for w in weights])
    assert np.array_equal(st.offsets, off)
    for p in range(st.n_rows):
        lo, hi = csr.indptr[p], csr.indptr[p + 1]
        wc, wv = wm.row(p)
        want_cols = np.concatenate([csr.indices[lo:hi], wc + off[1],
                                    np.arange(dense.shape[1]) + off[2]])
        want_w = np.concatenate([csr.data[lo:hi], wv, dense[p]])
        cols, w = _core.emit_row(st.rows, p)
        assert np.array_equal(cols, want_cols)
        assert np.array_equal(w.view(np.uint64), want_w.view(np.uint64))
    assert st.entry_start[1] - st.entry_start[0] == wm.row(0)[0].size + dense.shape[1]
    assert 0 not in st.empty_rows                       # row 0: no CSR entry, still a row


@pytest.mark.parametrize("kind", KINDS)
def test_emit_all_is_the_rows_concatenated(rng, kind):
    st = structure(one_of_each(rng, kind))
    cols, w = np.full(st.nnz, -1, np.int64), np.full(st.nnz, np.nan)
    _core.emit_all(st.rows, st.entry_start, cols, w)
    rows = [_core.emit_row(st.rows, p) for p in range(st.n_rows)]
    assert np.array_equal(cols, np.concatenate([c for c, _ in rows]))
    assert np.array_equal(w.view(np.uint64), np.concatenate([x for _, x in rows]).view(np.uint64))
    assert np.array_equal(np.diff(st.entry_start), [c.size for c, _ in rows])
    got = st.entries()
    assert np.array_equal(got[0], cols) and np.array_equal(got[1], w, equal_nan=True)


def test_emit_row_refuses_rows_outside():
    st = structure([np.ones((3, 2))])
    for p in (-1, 3):
        with pytest.raises(IndexError):
            _core.emit_row(st.rows, p)


@pytest.mark.parametrize("temperature", [0.0, 1.0, np.inf], ids=lambda t: f"T={t}")
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", KINDS)
def test_sources_match_dense_reference(rng, kind, rule, temperature):
    """reverse_node on every kind of source, and on three stacked, agrees with the dense
    reference on the unrolled stacked matrix; everything beta sent arrived."""
    weights = one_of_each(rng, kind)
    st = structure(weights)
    a = unrolled(weights)
    assert a.shape == (st.n_rows, st.n_cols) and a.nnz == st.nnz
    v = random_values(rng, st)
    grad, received, fallback = reverse(st, v, rule, temperature)
    assert_matches_reference(st, a, v, rule, temperature, received, fallback)
    scale = np.abs(v["beta"]).sum() * (1 + np.abs(v["weights"]).max(initial=0))
    assert abs(received.sum() - v["beta"].sum()) <= 1e-12 * scale
    assert_grad(grad, a, v)


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_forward_is_the_unrolled_product(rng, kind):
    weights = one_of_each(rng, kind)
    st = structure(weights)
    a = unrolled(weights)
    u = rng.normal(size=st.n_cols)
    bias = rng.normal(size=st.n_rows)
    y = forward(st.rows, u, bias, max_row=st.max_row)
    assert np.all(np.abs(y - (a @ u + bias)) <= FORWARD * (abs(a) @ np.abs(u) + np.abs(bias)))


# ------------------------------------------------------------ gradient messages
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_messages(rng, kind):
    """With g, grad = (slope * g) @ A (SPEC 2); without, grad is None and the BBp
    messages are the same bits (they never depend on g)."""
    weights = one_of_each(rng, kind)
    st = structure(weights)
    a = unrolled(weights)
    v = random_values(rng, st)
    grad, received, fallback = reverse(st, v)
    assert_grad(grad, a, v)
    none, received2, fallback2 = reverse(st, v, g=False)
    assert none is None
    assert np.array_equal(received.view(np.uint64), received2.view(np.uint64))
    assert np.array_equal(fallback, fallback2)
    v["beta"][:] = 0.0                                  # gradient only
    grad2, received3, _ = reverse(st, v)
    assert np.array_equal(grad.view(np.uint64), grad2.view(np.uint64))
    assert not received3.any()


def test_rows_with_nothing_to_send_are_skipped(rng):
    """Rows with slope * g = 0 and beta = 0 are skipped: a block of only such rows
    touches neither accumulator (NaN-filled, flags 0); a block whose rows have a
    gradient but no beta sends gradient messages only. The results are unaffected."""
    wm = random_window(rng, 2, "nchw", groups=2)
    st = structure([wm])
    st.rows.set_interleave(0)          # row after row: block k holds the rows third[k]
    n = st.n_rows
    assert n >= 3
    v = random_values(rng, st)
    third = [slice(k * n // 3, (k + 1) * n // 3) for k in range(3)]   # the 3 blocks
    odd = np.arange(n)[third[0]] % 2
    v["g"][third[0]] = odd                              # g = 0 or slope = 0: slope * g = 0
    v["slope"][third[0]] = 1 - odd
    v["beta"][third[0]] = 0.0
    v["g"][third[1]] = 1.0
    v["slope"][third[1]] = -0.5
    v["beta"][third[1]] = 0.0
    status, acc_g, acc_b, used_g, used_b, fb = reverse_workspace(
        st.rows, st.entry_start, v["u"], v["slope"], v["bias_x"], v["h"], v["beta"],
        blocks=3, n_threads=2, g=v["g"])
    assert status == _core.STATUS_OK
    assert list(used_g) == [0, 1, int(np.any(v["slope"][third[2]] * v["g"][third[2]]))]
    assert list(used_b) == [0, 0, int(np.any(v["beta"][third[2]]))]
    assert np.isnan(acc_g[0]).all() and np.isnan(acc_b[:2]).all()
    assert not np.any(fb[third[0]]) and not np.any(fb[third[1]])
    a = wm.to_csr()
    sg = v["slope"] * v["g"]
    np.testing.assert_allclose(acc_g[1], sg[third[1]] @ a.toarray()[third[1]], rtol=1e-12,
                               atol=1e-12 * np.abs(sg[third[1]]).sum())
    grad, received, fallback = reverse(st, v)
    assert_grad(grad, a, v)
    assert_matches_reference(st, a, v, "sign", 1.0, received, fallback)


# ----------------------------------------------------------------- determinism
def test_window_reverse_threads_bitwise(rng):
    """A window source of many rows (K > 3 blocks): the reverse pass gives the same bits
    on 1, 2 and 3 threads, through the entry point and through reverse_node."""
    c, m, side = 8, 16, 12
    tables = [window_table(side, 3, 1, 1, 1, side)] * 2
    wm = WindowMatrix(rng.normal(size=(m, c // 2, 3, 3)), 2, tables, (side, side),
                      grid_strides(c, (side, side)), 0, c * side * side,
                      rng.uniform(0.5, 1.5, m * side * side))
    st = structure([wm])
    assert st.n_blocks > 3 and st.nnz >= 32768          # reverse_node runs threads too
    csr = structure_of(wm.to_csr(), blocks=st.n_blocks)
    csr.rows.set_interleave(st.rows.interleave)        # the same visiting order
    v = random_values(rng, st)
    for rule in RULES:
        ext = {"scores": v["scores"], "weights": v["weights"]}.get(rule)
        runs = [reverse_workspace(st.rows, st.entry_start, v["u"], v["slope"], v["bias_x"],
                                  v["h"], v["beta"], RULES[rule], 1.0, ext, st.n_blocks,
                                  n_threads, g=v["g"])
                for n_threads in (1, 2, 3)]
        for other in runs[1:]:
            assert other[0] == _core.STATUS_OK
            for x, y in zip(runs[0][1:], other[1:]):
                assert x.tobytes() == y.tobytes()     # unused blocks: the same NaNs
        one = reverse(st, v, rule, n_threads=1)
        for n_threads in (2, 3):
            other = reverse(st, v, rule, n_threads=n_threads)
            for x, y in zip(one, other):
                assert np.array_equal(x.view(np.uint64), y.view(np.uint64))
        # NCHW: the unrolled CSR matrix, in the same blocks, gives the same bits.
        for x, y in zip(one, reverse(csr, v, rule, n_threads=2)):
            assert np.array_equal(x.view(np.uint64), y.view(np.uint64))


# ---------------------------------------------------------------------- safety
def _forward_args(**over):
    """Arguments of rows_forward_memview for a 2 x 4 dense source (rows of 4 entries),
    in 2 blocks."""
    rows = _core.NodeRows(2, 4, 1)
    rows.add_dense(np.arange(8.0).reshape(2, 4), 0)
    args = dict(rows=rows, u=np.ones(4), bias=np.zeros(2), y=np.empty(2),
                cols=np.empty((2, 4), np.int64), w=np.empty((2, 4)), n_threads=1)
    args.update(over)
    return args


@pytest.mark.parametrize("over, status", [
    ({}, _core.STATUS_OK),
    ({"u": np.ones(3)}, _core.STATUS_SHAPE),                # one input per column
    ({"bias": np.ones(3)}, _core.STATUS_SHAPE),             # one bias per row
    ({"y": np.empty(1)}, _core.STATUS_SHAPE),               # one output per row
    ({"w": np.empty((1, 4))}, _core.STATUS_SHAPE),          # w: the blocks of cols
    ({"cols": np.empty((0, 4), np.int64),
      "w": np.empty((0, 4))}, _core.STATUS_SHAPE),          # no block at all
    ({"n_threads": 0}, _core.STATUS_THREADS),               # no threads
    ({"n_threads": 10**6}, _core.STATUS_OK),                # capped at the 2 blocks
], ids=["ok", "u", "bias", "y", "w-blocks", "no-blocks", "threads", "threads-huge"])
def test_forward_memview_status(over, status):
    args = _forward_args(**over)
    assert _core.rows_forward_memview(**args) == status
    if status == _core.STATUS_OK:
        assert np.array_equal(args["y"], [6.0, 22.0])


@pytest.mark.parametrize("narrow", ["cols", "w"])
def test_forward_memview_refuses_workspace_shorter_than_a_row(narrow):
    """Workspace rows shorter than the longest row are refused (STATUS_SHAPE), as
    rows_reverse_memview refuses them, and nothing is written past them. The workspace
    is the start of a larger buffer, so that a write past it stays in memory the test
    owns and can be seen."""
    buffers = {"cols": np.full(16, -7, np.int64), "w": np.full(16, -7.0)}
    narrow_view = buffers[narrow][:1].reshape(1, 1)         # 1 column; rows have 4
    other = {"cols": np.empty((1, 4), np.int64), "w": np.empty((1, 4))}
    other[narrow] = narrow_view
    args = _forward_args(**other)
    status = _core.rows_forward_memview(**args)
    assert np.all(buffers[narrow][1:] == -7), "rows_forward_memview wrote past its workspace"
    assert status == _core.STATUS_SHAPE


def test_node_rows_refuses_more_sources_than_declared():
    """NodeRows(n_rows, n_cols, n_sources) holds n_sources sources: one more is refused
    (a ValueError), not written past the end of its array. Run in a child process: the
    heap corruption of the unchecked write can abort the interpreter."""
    child = (
        "import sys, numpy as np\n"
        "from refbbp import _core\n"
        "rows = _core.NodeRows(2, 4, 1)\n"
        "rows.add_dense(np.ones((2, 4)), 0)\n"
        "try:\n"
        "    for _ in range(8):\n"
        "        rows.add_dense(np.ones((2, 4)), 0)\n"
        "except ValueError:\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120, cwd=root)
    assert done.returncode == 0, (f"more sources than declared were accepted (exit "
                                  f"{done.returncode}): {done.stderr[-300:]}")
