"""Building a :class:`~refbbp.Network` from ONNX ops: tensors as views, and the
canonical-form folding rules of SPEC section 1.

During import every ONNX tensor that depends on the input is a :class:`Var`: for each
of its elements, which node element it is (``src``, ``idx``) or, with ``src == -1``, the
constant it holds (``const``, e.g. padding). Index ops only relabel elements, so they
are applied to the element ids and leave no node behind; the nodes that consume a view
get matrices whose columns are mapped through it, and any constant elements of the view
go into their bias.

Folding (the canonical form) is one mechanism: an elementwise affine op
``z = s * t + c`` on a tensor ``t`` folds into the node ``t`` views when the view is a
one-to-one relabelling of that whole node, the node is a matrix op or an elementwise
node, it has no activation yet, and no other consumer reads it (directly or through
index ops). Otherwise the op becomes an elementwise node of its own, into which
later elementwise ops fold in turn (so Sub/Mul/Add written out equals one
BatchNormalization). Folding only ever goes backwards into a producer, never forwards
into a following (possibly zero-padded) convolution.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import MemoryBudgetError
from ..network.nodes import Node
from ..network.window import MAX_AXES as WINDOW_MAX_AXES
from ..network.window import WindowMatrix

__all__ = ["STORAGES", "Builder", "Var", "diagonal"]

#: How convolutions and pooling are stored: ``"auto"`` as window matrices (kernel and
#: geometry, rows generated when needed) wherever the input is a plain grid of one node,
#: ``"csr"`` always unrolled (the reference form; small networks only).
STORAGES = ("auto", "csr")

#: Bytes per node element of one explanation, counted in the memory budget: its float64
#: value, pre-activation, gradient, local bias, beta and received beta.
VECTOR_BYTES = 6 * 8


class Var:
    """An input-dependent tensor: a view on node elements, with constants mixed in.

    Attributes
    ----------
    shape : tuple of int
    src : ndarray of int64, shape (n,)
        Node each element comes from, ``-1`` for a constant element.
    idx : ndarray of int64, shape (n,)
        Element of that node (0 for constants).
    const : ndarray of float64, shape (n,)
        Value of constant elements (0 elsewhere).
    """

    __slots__ = ("shape", "src", "idx", "const")

    def __init__(self, shape, src, idx, const=None):
        self.shape = tuple(int(s) for s in shape)
        self.src = np.asarray(src, np.int64).ravel()
        self.idx = np.asarray(idx, np.int64).ravel()
        self.const = (np.zeros(self.src.size) if const is None
                      else np.asarray(const, np.float64).ravel())
        assert self.src.size == self.idx.size == self.const.size == self.size, (
            self.shape, self.src.size)

    @classmethod
    def of_node(cls, k, shape):
        n = int(np.prod(shape, dtype=np.int64))
        return cls(shape, np.full(n, k), np.arange(n))

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def select(self, ids, shape, fill=0.0):
        """The view whose element ``j`` is element ``ids[j]`` of this one (``-1``: the
        constant ``fill``)."""
        ids = np.asarray(ids, np.int64).ravel()
        pad = ids < 0
        safe = np.where(pad, 0, ids)
        src = np.where(pad, -1, self.src[safe])
        idx = np.where(pad, 0, self.idx[safe])
        const = np.where(pad, fill, self.const[safe])
        return Var(shape, src, idx, const)

    @staticmethod
    def concat(parts):
        """The elements of several views (or constant arrays) one after the other,
        as a flat view: the element table index ops are applied to."""
        vs = [p if isinstance(p, Var) else Var(np.shape(p), np.full(np.size(p), -1),
                                                np.zeros(np.size(p)), p) for p in parts]
        n = sum(v.size for v in vs)
        return Var((n,), np.concatenate([v.src for v in vs]), np.concatenate([v.idx for v in vs]),
                   np.concatenate([v.const for v in vs]))

    def sources(self):
        return np.unique(self.src[self.src >= 0])


def diagonal(values):
    """A CSR diagonal matrix that keeps zero entries as structural non-zeros."""
    n = len(values)
    return sp.csr_array((np.asarray(values, np.float64), np.arange(n, dtype=np.int32),
                         np.arange(n + 1, dtype=np.int32)), shape=(n, n))


def _constant_part(name, const):
    """The bias part of a node that constant input elements (a Pad's value, a constant
    in a Concat) contribute."""
    return (f"{name}/constant inputs", "Constant", const)


def _scale_rows(a, s):
    if isinstance(a, WindowMatrix):
        return a.scaled_rows(s)
    if sp.issparse(a):
        a = a.copy()
        a.data *= np.repeat(s, np.diff(a.indptr))
        return a
    return a * s[:, None]


class Builder:
    """Collects the nodes of a network while an importer walks an ONNX graph.

    Parameters
    ----------
    max_bytes : int
        Budget for the matrices of all nodes together plus the per-node vectors of one
        explanation (:data:`VECTOR_BYTES` per element); a node that would exceed it is
        refused with :class:`~refbbp.errors.MemoryBudgetError` before it is allocated.
    """

    def __init__(self, input_shape, input_name="input", max_bytes=4 << 30, storage="auto"):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(map(repr, STORAGES))}, "
                             f"got {storage!r}")
        self.storage = storage
        self.max_bytes = int(max_bytes)
        self.total_bytes = 0
        size = int(np.prod(input_shape, dtype=np.int64))
        self.reserve(input_name, size * VECTOR_BYTES)
        self.total_bytes = size * VECTOR_BYTES
        self.nodes = [Node(input_name, "input", "Input", input_shape)]
        # open: no activation yet and nobody else reads the pre-activation value.
        # foldable: a matrix op or an elementwise node (accepts elementwise folds).
        self.open = [False]
        self.foldable = [False]

    # ------------------------------------------------------------ bookkeeping
    def reserve(self, name, nbytes):
        """Refuse a layer whose estimated size would exceed the memory budget."""
        if self.total_bytes + nbytes > self.max_bytes:
            raise MemoryBudgetError(
                f"layer {name!r} needs about {int(nbytes):,} bytes "
                f"({nbytes / 2**20:,.1f} MiB), and the network "
                f"already holds {self.total_bytes / 2**20:,.1f} MiB: over the budget of "
                f"max_bytes={self.max_bytes:,} ({self.max_bytes / 2**20:,.1f} MiB; it "
                f"covers the layers' matrices and the per-node vectors of one explanation, "
                f"{VECTOR_BYTES} bytes per element). Pass a larger max_bytes= to load() "
                f"to allow it.")

    def _add(self, node, open_, foldable):
        nbytes = node.nbytes + node.size * VECTOR_BYTES
        self.reserve(node.name, nbytes)
        self.total_bytes += nbytes
        self.nodes.append(node)
        self.open.append(open_)
        self.foldable.append(foldable)
        return len(self.nodes) - 1

    def seal(self, var):
        """Mark the nodes ``var`` views as read by more than one consumer."""
        for k in var.sources():
            self.open[k] = False

    def whole(self, var):
        """``(k, perm)`` if ``var`` is a one-to-one relabelling of all of node ``k``
        (element ``e`` of ``var`` is element ``perm[e]`` of the node), else ``None``."""
        if var.size == 0 or var.src[0] < 0 or not np.all(var.src == var.src[0]):
            return None
        k = int(var.src[0])
        if self.nodes[k].size != var.size:
            return None
        if np.bincount(var.idx, minlength=var.size).max() != 1:
            return None
        return k, var.idx

    # ------------------------------------------------------------- node types
    def affine(self, parts, bias, shape, op, name, foldable=False, activation=None):
        """Add ``y = sum_j M_j t_j + bias`` for views ``t_j`` and matrices ``M_j``.

        Parameters
        ----------
        parts : list of (Var, matrix)
            ``M_j`` has shape ``(prod(shape), t_j.size)``, dense or CSR.
        bias : ndarray, shape (prod(shape),) or broadcastable
        foldable : bool
            True for matrix ops and elementwise nodes (SPEC section 1).

        Returns
        -------
        Var
            A view of the new node.
        """
        m = int(np.prod(shape, dtype=np.int64))
        bias = np.broadcast_to(np.asarray(bias, np.float64), (m,)).copy()
        bias_parts = [(name, op, bias.copy())]
        by_src = {}
        for var, mat in parts:
            assert mat.shape == (m, var.size), (name, mat.shape, (m, var.size))
            for k in var.sources():
                a = self._columns_to_node(mat, var, int(k), name)
                by_src[k] = a if k not in by_src else by_src[k] + a
            cmask = var.src < 0
            if cmask.any() and np.any(var.const[cmask] != 0):
                cols = np.flatnonzero(cmask)
                const = np.asarray(mat[:, cols] @ var.const[cols]).ravel()
                bias += const
                bias_parts.append(_constant_part(name, const))
        inputs = sorted(by_src)
        weights = [by_src[k] for k in inputs]
        for w in weights:
            if sp.issparse(w):
                w.sort_indices()
        node = Node(name, "affine", op, shape, [int(k) for k in inputs], weights, bias, activation,
                    bias_parts=bias_parts if len(bias_parts) > 1 else None)
        k = self._add(node, activation is None, foldable and activation is None)
        return Var.of_node(k, shape)

    def window(self, var, wm, bias, shape, op, name, foldable=False):
        """Add ``y = A t + bias`` for a window matrix ``A`` over the view ``t``.

        Parameters
        ----------
        var : Var
            ``t``, of shape ``(1, C, *spatial)`` (leading axes of size 1 allowed).
        wm : WindowMatrix
            ``A`` over ``var`` itself: channel-major C-order columns (``base = 0``,
            ``strides`` of the C-order layout, ``n_cols = var.size``).

        Kept as a window matrix over the node ``var`` views when ``var`` is a grid of
        that node (:meth:`grid_view`), ``storage="auto"`` and it has at most
        ``MAX_AXES`` spatial axes; otherwise unrolled to CSR (the budget is checked
        before) and added by :meth:`affine`.

        Returns
        -------
        Var
        """
        grid = (None if self.storage == "csr" or len(wm.tables) > WINDOW_MAX_AXES
                else self.grid_view(var, len(wm.tables)))
        if grid is None:
            self.reserve(name, wm.nnz * 12 + (wm.shape[0] + 1) * 8)
            return self.affine([(var, wm.to_csr())], bias, shape, op, name, foldable)
        k, base, strides, lo, hi = grid
        # Positions of the view -> positions of the node's grid (outside the box: none).
        tables = [np.where((t >= start) & (t < stop), t - start, -1)
                  for t, start, stop in zip(wm.tables, lo, hi)]
        extent = [stop - start for start, stop in zip(lo, hi)]
        on_node = WindowMatrix(wm.kernel, wm.groups, tables, extent, strides, base,
                               self.nodes[k].size, wm.row_scale)
        m = int(np.prod(shape, dtype=np.int64))
        bias = np.broadcast_to(np.asarray(bias, np.float64), (m,)).copy()
        bias_parts = None
        if np.any(var.const != 0):   # constant elements around the grid (a Pad's value)
            const = wm.matmul_rows(np.where(var.src < 0, var.const, 0.0)[None])[0]
            bias_parts = [(name, op, bias.copy()), _constant_part(name, const)]
            bias += const
        node = Node(name, "affine", op, shape, [k], [on_node], bias, bias_parts=bias_parts)
        k = self._add(node, True, foldable)
        return Var.of_node(k, shape)

    def grid_view(self, var, n_spatial):
        """Whether ``var`` reads one node as a grid, and how.

        ``var`` of shape ``(..., C, S_1, ..., S_n)`` is a grid of node ``k`` when, inside
        a box ``lo <= y < hi`` of its spatial positions, element ``(c, y)`` is element
        ``base + c * strides[0] + sum_a (y_a - lo_a) * strides[a + 1]`` of node ``k`` --
        distinct elements for distinct ``(c, y)`` -- and every element outside the box
        is a constant: any axis order of the node (a Transpose), a box cut out of it (a
        Slice) or padded around it (a Pad).

        Returns
        -------
        tuple or None
            ``(k, base, strides, lo, hi)``.
        """
        n = n_spatial
        grid = var.shape[-(n + 1):]
        if len(var.shape) < n + 1 or any(d != 1 for d in var.shape[:-(n + 1)]):
            return None
        src = var.src.reshape(grid)
        inside = src >= 0
        if not inside.any():
            return None
        lo, hi = [], []
        for a in range(n):
            hit = np.flatnonzero(inside.any(axis=tuple(j for j in range(n + 1) if j != a + 1)))
            lo.append(int(hit[0]))
            hi.append(int(hit[-1]) + 1)
        box = (slice(None),) + tuple(slice(lo_, hi_) for lo_, hi_ in zip(lo, hi))
        if not inside[box].all() or np.count_nonzero(inside) != inside[box].size:
            return None
        k = int(src[box].flat[0])
        if not np.all(src[box] == k):
            return None
        ib = var.idx.reshape(grid)[box]
        base = int(ib.flat[0])
        strides = []
        for ax in range(n + 1):
            step = [0] * (n + 1)
            if ib.shape[ax] > 1:
                step[ax] = 1
                strides.append(int(ib[tuple(step)]) - base)
            else:
                strides.append(0)
        expect = np.full(ib.shape, base, np.int64)
        for ax, st in enumerate(strides):
            shape = [1] * (n + 1)
            shape[ax] = ib.shape[ax]
            expect = expect + (np.arange(ib.shape[ax], dtype=np.int64) * st).reshape(shape)
        if not np.array_equal(expect, ib):
            return None
        # distinct elements for distinct (c, y): an affine map with these extents
        if np.bincount(ib.ravel() - ib.min(), minlength=1).max(initial=0) > 1:
            return None
        return k, base, strides, lo, hi

    def _columns_to_node(self, mat, var, k, name):
        """The columns of ``mat`` that read node ``k``, as a matrix over node ``k``."""
        n_k = self.nodes[k].size
        cols = np.flatnonzero(var.src == k)
        tgt = var.idx[cols]
        if sp.issparse(mat):
            mat = mat.tocsr()
            keep_col = np.full(var.size, -1, np.int64)
            keep_col[cols] = tgt
            new_cols = keep_col[mat.indices]
            keep = new_cols >= 0
            rows = np.repeat(np.arange(mat.shape[0]), np.diff(mat.indptr))[keep]
            counts = np.bincount(rows, minlength=mat.shape[0])
            indptr = np.concatenate([[0], np.cumsum(counts)])
            self.reserve(name, keep.sum() * 12 + indptr.size * 4)
            a = sp.csr_array((mat.data[keep], new_cols[keep].astype(np.int32),
                              indptr.astype(np.int32)), shape=(mat.shape[0], n_k))
            if np.bincount(tgt, minlength=n_k).max(initial=0) > 1:
                a.sum_duplicates()
            return a
        self.reserve(name, mat.shape[0] * n_k * 8)
        if len(cols) == var.size == n_k and np.array_equal(tgt, np.arange(n_k)) and \
                isinstance(mat, np.ndarray) and mat.dtype == np.float64 and \
                mat.flags.c_contiguous:
            return mat                         # the view is the node itself: no copy
        a = np.zeros((mat.shape[0], n_k))
        if np.bincount(tgt, minlength=n_k).max(initial=0) <= 1:
            a[:, tgt] = mat[:, cols]
        else:
            sel = sp.csr_array((np.ones(len(cols)), (np.arange(len(cols)), tgt)),
                               shape=(len(cols), n_k))
            a = np.asarray((sel.T @ mat[:, cols].T).T)
        return a

    def elementwise(self, var, scale, shift, op, name):
        """``z = scale * t + shift`` elementwise over the elements of ``var``.

        Folds into the node ``var`` views when the canonical form allows it (module
        docstring); otherwise adds an elementwise node.
        """
        scale = np.broadcast_to(np.asarray(scale, np.float64), (var.size,))
        shift = np.broadcast_to(np.asarray(shift, np.float64), (var.size,))
        if np.all(scale == 1) and np.all(shift == 0):
            return var
        w = self.whole(var)
        if w is not None and self.open[w[0]] and self.foldable[w[0]]:
            k, perm = w
            node = self.nodes[k]
            s = np.empty(node.size)
            t = np.empty(node.size)
            s[perm], t[perm] = scale, shift
            node.weights = [_scale_rows(a, s) for a in node.weights]
            if np.any(t != 0) or node.bias_parts is not None:
                # where the bias comes from (Node.bias_parts): each part carried through
                # the fold, and the shift as a part of its own
                parts = [(n_, o_, s * p_) for n_, o_, p_ in node.bias_terms()]
                if np.any(t != 0):
                    parts.append((name, op, t))
                added = 8 * node.size * (len(parts) - len(node.bias_parts or ()))
                self.reserve(node.name, added)
                self.total_bytes += added
                node.bias_parts = parts
            node.bias = s * node.bias + t
            node.weights_changed()
            if name not in node.name.split("+"):
                node.name = f"{node.name}+{name}"
            return var
        return self.affine([(var, diagonal(scale))], shift, var.shape, op, name, foldable=True)

    def activate(self, var, activation, name):
        """Apply an elementwise piecewise-linear activation (given over ``var``'s
        elements): attached to the node ``var`` views when it is open, else on a new
        identity node."""
        w = self.whole(var)
        if w is not None and self.open[w[0]] and self.nodes[w[0]].kind == "affine":
            k, perm = w
            node = self.nodes[k]
            node.activation = activation.permuted(np.argsort(perm))
            self.open[k] = self.foldable[k] = False
            self.total_bytes += activation.nbytes
            if name not in node.name.split("+"):
                node.name = f"{node.name}+{name}"
            return var
        n = var.size
        return self.affine([(var, diagonal(np.ones(n)))], 0.0, var.shape, activation.name,
                           name, activation=activation)

    def max_pool(self, var, window, shape, name, op="MaxPool"):
        """A max node: ``h[p] = max over window[p]`` of ``var``'s elements (``-1``: padding).

        When the candidates come from several nodes or include constants, a gather node
        copies them first (:meth:`candidates`; constants become its bias), so that the
        max node reads one node."""
        window = np.asarray(window, np.int64)
        srcs = np.unique(var.src[window[window >= 0]])
        if srcs.size == 0:
            raise ValueError(f"max node {name!r}: no output element has a candidate")
        if srcs.size > 1 or srcs[0] < 0:
            var, window = self.candidates(var, window)
            var = self.identity(var, name + "/gather")
            srcs = var.src[:1]
        node_window = np.where(window >= 0, var.idx[np.maximum(window, 0)], -1)
        node = Node(name, "max", op, shape, [int(srcs[0])], window=node_window)
        return Var.of_node(self._add(node, False, False), shape)

    @staticmethod
    def candidates(var, window):
        """The candidates of a max node in one canonical order, however the view was
        written (``Max(a, b)`` or ``ReduceMax`` over a stack of ``a`` and ``b``).

        Parameters
        ----------
        var : Var
        window : ndarray of int64, shape (n_out, K)
            Elements of ``var`` (``-1``: padding).

        Returns
        -------
        (Var, ndarray)
            A flat view holding each distinct candidate once -- constants first, by
            value, then node elements by node and element -- and ``window`` remapped
            onto it (padding stays ``-1``). Tie order is the window's, not the view's.
        """
        window = np.asarray(window, np.int64)
        used = np.unique(window[window >= 0])
        src, idx, const = var.src[used], var.idx[used], var.const[used]
        is_node = src >= 0
        keys = np.stack([is_node.astype(np.float64), src.astype(np.float64),
                         idx.astype(np.float64), np.where(is_node, 0.0, const)], axis=1)
        distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
        pos = np.full(var.size, -1, np.int64)
        pos[used] = inverse.ravel()
        if len(distinct) == var.size and np.array_equal(pos, np.arange(var.size)):
            return var, window      # already canonical: keep its shape
        view = Var((len(distinct),), distinct[:, 1].astype(np.int64),
                   distinct[:, 2].astype(np.int64), distinct[:, 3])
        return view, np.where(window >= 0, pos[np.maximum(window, 0)], -1)

    def identity(self, var, name, op="Gather"):
        """A node that copies ``var`` (a selection matrix, constants as bias)."""
        return self.affine([(var, diagonal(np.ones(var.size)))], 0.0, var.shape, op, name)

    def finish(self, var, name):
        """The node holding ``var`` in element order, creating a copy node if needed."""
        w = self.whole(var)
        if w is not None and w[0] > 0 and np.array_equal(w[1], np.arange(var.size)):
            return w[0]
        return int(self.identity(var, name, "Output").src[0])
