"""Nothing a user does to a network from outside may crash the kernel (or the forward
pass before it): regression tests of refbbp/bbp/structure.py's *Safety* contract and of
``n_threads`` capping (refbbp/bbp/kernels.py).

The kernel trusts its CSR structures (it never re-checks a column index), so each node's
structure owns read-only copies of what it indexes with, checked when it is built, and
``refbbp.bbp`` compares the node's matrices with those copies before every forward pass.
The crash tests run in a subprocess, so that a segmentation fault fails the test
instead of killing pytest; the subprocess prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import refbbp
from refbbp.bbp import structure
from refbbp.bbp.kernels import available_cpus
from refbbp.bbp.structure import node_structure

from . import bbp_models as M

HERE = os.path.dirname(os.path.abspath(__file__))

# The script a subprocess runs: bbp once, EDIT the network, bbp again. Prints either
# {"outcome": "ValueError", "message": ...} or {"outcome": "ok", "same": ...}, where
# "same" compares every node's beta with that of a fresh network given the same edit
# before refbbp ever saw it (the attribution of the edited network).
_EDIT_SCRIPT = """
import json, sys
import numpy as np
import scipy.sparse as sp
sys.path.insert(0, {here!r})
import bbp_models as M
import refbbp

def make():
    return M.load(M.cnn_bn_maxpool(np.random.default_rng(7)), storage="csr")

def edit(net):
    k = next(k for k, n in enumerate(net.nodes) if any(sp.issparse(w) for w in n.weights))
    d = next(k for k, n in enumerate(net.nodes)
             if n.weights and isinstance(n.weights[0], np.ndarray))
    node, dense = net.nodes[k], net.nodes[d]
    w, n_cols = node.weights[0], net.nodes[node.inputs[0]].size
{edit}
    return k, node.name

x = np.random.default_rng(1).normal(size=(2,) + make().input_shape)
net = make()
first = refbbp.bbp(net, x, n_threads=2)
k, name = edit(net)
try:
    att = refbbp.bbp(net, x, n_threads=2)
except ValueError as e:
    print(json.dumps({{"outcome": "ValueError", "message": str(e), "k": k, "name": name}}))
    sys.exit(0)
fresh = make()
edit(fresh)
want = refbbp.bbp(fresh, x, n_threads=2)
print(json.dumps({{
    "outcome": "ok", "k": k, "name": name,
    "same": all(np.array_equal(a, b) for a, b in zip(att.node_beta, want.node_beta)),
    "complete": bool(att.completeness().ok()),
    "changed": not np.array_equal(att.beta, first.beta)}}))
"""


def run_isolated(script, timeout=300):
    """Run ``script`` in a fresh interpreter; its last stdout line parsed as JSON. A
    crash (segfault, abort) is a non-zero return code and fails the calling test."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"the subprocess died with return code {proc.returncode} (a negative code is a "
        f"signal: -11 SIGSEGV, -6 SIGABRT)\nstdout:\n{proc.stdout}\nstderr:\n"
        f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# (edit of the network after a first bbp call, expected outcome). ``w``: node k's CSR
# weight; ``dense``: a node with a dense weight; ``n_cols``: node k's input size.
EDITS = {
    # Corrupt CSR arrays edited in place: refused, naming the node.
    "indices-huge": ("w.indices[:] = 10**9", "ValueError"),
    "indices-negative": ("w.indices[3] = -1", "ValueError"),
    "indices-n_cols": ("w.indices[-1] = n_cols", "ValueError"),
    "indptr-huge": ("w.indptr[-1] = 10**9", "ValueError"),
    "indptr-decreases": ("w.indptr[2] = w.indptr[3] + 1", "ValueError"),
    "indptr-start": ("w.indptr[0] = 1", "ValueError"),
    # Valid edits in place: the attribution of the edited network.
    "indices-in-bounds": ("w.indices[::7] = (w.indices[::7] + 1) % n_cols", "ok"),
    "indices-duplicate": ("w.indices[1:] = w.indices[:-1].copy()", "ok"),  # unsorted too
    "data": ("w.data[::3] *= -2.0", "ok"),
    "data-zeroed": ("w.data[:] = 0.0", "ok"),
    # Arrays or matrices replaced.
    "data-float32": ("w.data = (w.data * 0.5).astype(np.float32)", "ok"),
    "indices-int64": ("w.indices = w.indices.astype(np.int64)", "ok"),
    "indices-short": ("w.indices = w.indices[:-1].copy()", "ValueError"),
    "new-matrix": ("node.weights[0] = sp.csr_array(w * 1.5)", "ok"),
    "wrong-shape": ("node.weights[0] = sp.random(node.size, n_cols + 1, density=0.2, "
                    "format='csr', random_state=0)", "ValueError"),
    "wrong-shape-dense": ("dense.weights[0] = np.ones((dense.size, 3))", "ValueError"),
    # Dense weights are read in place (by the forward pass, the gradients and the
    # kernel alike): edits must simply be seen.
    "dense-in-place": ("dense.weights[0][:, ::2] *= -0.5", "ok"),
    "dense-reshaped": ("dense.weights[0].shape = dense.weights[0].shape[::-1]",
                       "ValueError"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_csr_indices_after_bbp_never_crash(edit):
    """Edit a node's matrix after a first ``refbbp.bbp`` call (in place, or replace it)
    and call ``bbp`` again: a ValueError naming the node, or the attribution of the
    edited network -- never a crash (structure.py, *Safety*)."""
    code, expected = EDITS[edit]
    script = _EDIT_SCRIPT.format(here=HERE, edit=textwrap.indent(code, " " * 4))
    result = run_isolated(script)
    assert result["outcome"] == expected, result
    if expected == "ValueError":
        assert "node " in result["message"], result
        if edit not in ("wrong-shape-dense", "dense-reshaped"):
            assert f"node {result['k']} ({result['name']!r})" in result["message"], result
    else:
        assert result["same"] and result["complete"], result
        assert result["changed"] or edit == "indices-int64", result


def test_huge_n_threads_is_capped_not_a_crash():
    """n_threads=10**6 used to make OpenMP fail (segfault; 40000: abort). It is capped
    at the CPUs the process may use; the bits are those of one thread."""
    script = f"""
import json, sys
import numpy as np
sys.path.insert(0, {HERE!r})
import bbp_models as M
import refbbp
# A layer big enough for both kernel passes to run in parallel (K * n_cols >= 2**16).
net = M.load(M.mlp(np.random.default_rng(0), sizes=(8192, 256, 3)))
x = np.random.default_rng(1).normal(size=net.input_shape)
one = refbbp.bbp(net, x, n_threads=1)
out = {{"n_threads": []}}
same = True
for n in (10**6, 40000):
    att = refbbp.bbp(net, x, n_threads=n)
    out["n_threads"].append(att.n_threads)
    same &= all(np.array_equal(a, b) for a, b in zip(one.node_beta, att.node_beta))
out["same"] = bool(same)
print(json.dumps(out))
"""
    result = run_isolated(script)
    assert result["same"], result
    assert all(1 <= n <= available_cpus() for n in result["n_threads"]), result


# ------------------------------------------------------------------ in process
@pytest.fixture
def net():
    # The CSR arrays of unrolled convolutions are what these tests edit.
    return M.load(M.cnn_bn_maxpool(np.random.default_rng(7)), storage="csr")


def _csr_node(net):
    return next(k for k, n in enumerate(net.nodes) if any(sp.issparse(w) for w in n.weights))


def _dense_node(net):
    return next(k for k, n in enumerate(net.nodes)
                if n.weights and isinstance(n.weights[0], np.ndarray))


def test_structure_owns_read_only_arrays(net):
    """A CSR node's structure holds its own read-only copies; a single-input dense
    layer's data is a read-only view of the matrix (read in place)."""
    k = _csr_node(net)
    st, w = node_structure(net, k), net.nodes[k].weights[0]
    kind, (data, indices, indptr) = st.parts[0]
    assert kind == "csr"
    for a, user in ((data, w.data), (indices, w.indices), (indptr, w.indptr)):
        assert not a.flags.writeable and not np.shares_memory(a, user)
    with pytest.raises(ValueError, match="read-only"):
        indices[0] = 10**9
    d = _dense_node(net)
    st, w = node_structure(net, d), net.nodes[d].weights[0]
    kind, (matrix,) = st.parts[0]
    assert kind == "dense" and np.shares_memory(matrix, w) and not matrix.flags.writeable
    assert w.flags.writeable                        # the user's matrix is untouched
    assert not (st.entry_start.flags.writeable or st.offsets.flags.writeable)


def test_structure_cache_notices_edits_in_place(net):
    """Unchanged matrices: the same structure. An edit in place: a new structure, and
    the node's cached transposes (Node.weights_t) are dropped with the old one."""
    k = _csr_node(net)
    node = net.nodes[k]
    a = node_structure(net, k)
    assert node_structure(net, k) is a
    node.weights_t                                  # noqa: B018 -- cache the transposes
    node.weights[0].data[0] += 1.0
    b = node_structure(net, k)
    assert b is not a and b.parts[0][1][0][0] == node.weights[0].data[0]
    assert "weights_t" not in node.__dict__
    assert node_structure(net, k) is b


def test_corrupt_matrix_refused_before_the_forward_pass(net):
    """Both backends: the check runs before scipy's products read the matrix."""
    x = np.random.default_rng(1).normal(size=net.input_shape)
    refbbp.bbp(net, x)
    k = _csr_node(net)
    net.nodes[k].weights[0].indices[0] = -5
    for backend in ("cython", "numpy"):
        with pytest.raises(ValueError, match=rf"node {k} \(.*a column index is outside"):
            refbbp.bbp(net, x, backend=backend)


MODELS = {
    "cnn_bn_maxpool": lambda: M.cnn_bn_maxpool(np.random.default_rng(3)),
    "residual": lambda: M.residual(np.random.default_rng(3)),
    "concat": lambda: M.concat(np.random.default_rng(3)),     # a two-input node
    "empty_row_pad": lambda: M.empty_row_pad(np.random.default_rng(3)),
}


@pytest.mark.parametrize("rule", ["sign", "deviation", "scores", "weights"])
@pytest.mark.parametrize("model", list(MODELS))
def test_int64_indices_give_the_same_bits(monkeypatch, model, rule):
    """Structures with int64 indices (forced: INDEX32_LIMIT lowered to 0, as for a layer
    past 2**31 entries) give bitwise the attribution of int32 ones."""
    rule = {"scores": refbbp.deviation_scores,
            "weights": refbbp.weights_rule(
                lambda lay: np.abs(lay.kappa) / lay.row_sum(np.abs(lay.kappa))[lay.row]),
            }.get(rule, rule)
    net32 = M.load(MODELS[model]())
    x = np.random.default_rng(1).normal(size=(2,) + net32.input_shape)
    want = refbbp.bbp(net32, x, rule=rule, n_threads=2)
    monkeypatch.setattr(structure, "INDEX32_LIMIT", 0)
    net64 = M.load(MODELS[model]())
    got = refbbp.bbp(net64, x, rule=rule, n_threads=2)
    widths = {arrays[1].dtype for k in range(1, len(net64.nodes))
              for kind, arrays in node_structure(net64, k).parts if kind in ("csr", "max")}
    assert widths == {np.dtype(np.int64)}
    assert all(np.array_equal(a, b) for a, b in zip(want.node_beta, got.node_beta))
    assert np.array_equal(want.fallback, got.fallback)


@pytest.mark.parametrize("nnz, n_cols, n_rows, dtype", [
    (0, 0, 0, np.int32),
    (2**31 - 1, 10, 5, np.int32),            # the largest int32 indptr value
    (2**31, 10, 5, np.int64),                # more entries than int32 can count
    (10, 2**31, 5, np.int64),                # a column past int32
    (10, 10, 2**31, np.int64),               # a row past int32 (max nodes' entry_row)
])
def test_index_dtype(nnz, n_cols, n_rows, dtype):
    assert structure.index_dtype(nnz, n_cols, n_rows) == np.dtype(dtype)


def _two_input_dense():
    """x -> two Gemm+Relu branches -> Concat -> Gemm: a node with two dense weights."""
    rng = np.random.default_rng(5)
    g = M.Graph((6,))
    a = g.op("Relu", [g.gemm("x", rng.normal(size=(4, 6)), rng.normal(size=4))])
    b = g.op("Relu", [g.gemm("x", rng.normal(size=(3, 6)), rng.normal(size=3))])
    t = g.op("Concat", [a, b], axis=1)
    return M.load(g.model(g.gemm(t, rng.normal(size=(2, 7)), rng.normal(size=2))))


def _float32_first_layer():
    net = M.load(M.mlp(np.random.default_rng(5)))
    net.nodes[1].weights[0] = net.nodes[1].weights[0].astype(np.float32)
    return net


@pytest.mark.parametrize("make, edit", [
    # read in place (single input, C-contiguous float64)
    (lambda: M.load(M.mlp(np.random.default_rng(5))),
     lambda net: net.nodes[1].weights[0].__imul__(-0.5)),
    # copied and compared: stacked with another input, or not float64
    (_two_input_dense, lambda net: net.nodes[3].weights[1].__iadd__(0.25)),
    (_float32_first_layer, lambda net: net.nodes[1].weights[0].__imul__(-0.5)),
], ids=["in-place", "two-inputs", "float32"])
def test_dense_edits_in_place_are_seen(make, edit):
    """Dense weights edited in place after a first bbp call: the next call gives the
    attribution of the edited network, whether the kernel reads the matrix in place or
    a compared copy of it."""
    net = make()
    x = np.random.default_rng(1).normal(size=(3,) + net.input_shape)
    first = refbbp.bbp(net, x)
    edit(net)
    got = refbbp.bbp(net, x)
    fresh = make()
    edit(fresh)
    want = refbbp.bbp(fresh, x)
    assert not np.array_equal(got.beta, first.beta)
    assert all(np.array_equal(a, b) for a, b in zip(got.node_beta, want.node_beta))
    assert got.completeness().ok()
