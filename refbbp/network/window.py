"""Window matrices: convolutions and pooling stored by their kernel and geometry.

A convolution's matrix is huge when unrolled (a VGG at 224x224 needs about 90 GB as CSR)
and almost all of it is repetition: every output channel applies the same kernel at
every output position. A :class:`WindowMatrix` stores only that kernel and, per spatial
axis, a small table of which input position each (output position, kernel offset)
reads, and generates each row's entries when a pass needs them (SPEC section 1,
"Storage does not change the numbers").

**The rows.** The matrix has ``M * prod(out)`` rows, row ``p = m * prod(out) + o`` being
output channel ``m`` at output position ``o`` (C order over the spatial axes). Output
channel ``m`` belongs to group ``g = m // (M / groups)`` and reads the ``Cg`` input
channels ``g * Cg + c``. Along spatial axis ``a``, ``tables[a][o_a, k_a]`` is the input
position read at output position ``o_a`` by kernel offset ``k_a``, or ``-1`` where there
is none (padding, a stride that skips it, a position outside the part of the input the
matrix reads). Row ``p``'s structural non-zeros are every ``(c, k_1, ..., k_n)`` whose
positions all exist, valued ``kernel[m, c, k_1, ..., k_n]`` (times ``row_scale[p]`` if
given); kernel entries that are zero stay structural non-zeros (the receptive field,
SPEC 3.6), exactly as in the unrolled CSR matrix (:meth:`WindowMatrix.to_csr`).

**The columns.** Input element ``(c, i_1, ..., i_n)`` is column
``base + c * strides[0] + i_1 * strides[1] + ... + i_n * strides[n]``: any axis order of
the node the matrix reads (NCHW, or NHWC seen through a Transpose), and a box cut out of
it (a Slice, or the inside of a zero Pad). Within a row, entries are listed channel by
channel, then by increasing position along each axis: increasing columns for the usual
NCHW layout.

One class serves Conv (any group count, dilation, stride, padding, 1-D to N-D),
ConvTranspose (its tables map an output position to the input positions that reach it)
and AveragePool (a depthwise all-ones kernel and a per-row ``1 / count``).
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

__all__ = ["GATHER_BYTES", "MAX_AXES", "WindowMatrix", "window_table"]

#: Bytes of the gathered inputs (im2col) one chunk of the forward pass may hold.
GATHER_BYTES = 32 << 20

#: The most spatial axes a window matrix may have for the kernel to generate its rows
#: (1-D to 3-D convolutions); the importer unrolls anything larger to CSR.
MAX_AXES = 3


def window_table(n_out, kernel, stride, dilation, pad_begin, n_in, transposed=False):
    """The table of one spatial axis: input position of (output position, kernel offset).

    Parameters
    ----------
    n_out, kernel, stride, dilation, pad_begin, n_in : int
        Output size, kernel size, stride, dilation, begin padding and input size along
        the axis.
    transposed : bool
        ``False``: a convolution, output ``o`` reads input ``o * stride + k * dilation -
        pad_begin``. ``True``: a transposed convolution, input ``i`` adds to output
        ``i * stride + k * dilation - pad_begin``, so output ``o`` reads the input ``i``
        with ``i * stride = o + pad_begin - k * dilation``.

    Returns
    -------
    ndarray of int64, shape (n_out, kernel)
        ``-1`` where the position is outside ``[0, n_in)`` (or, transposed, not a
        multiple of the stride).
    """
    o = np.arange(n_out, dtype=np.int64)[:, None]
    k = np.arange(kernel, dtype=np.int64)[None, :]
    if not transposed:
        pos = o * stride + k * dilation - pad_begin
        ok = (pos >= 0) & (pos < n_in)
    else:
        num = o + pad_begin - k * dilation
        pos = np.floor_divide(num, stride)
        ok = (num % stride == 0) & (pos >= 0) & (pos < n_in)
    return np.where(ok, pos, -1)


class WindowMatrix:
    """A convolution-like matrix stored by its kernel and per-axis tables (module
    docstring).

    Parameters
    ----------
    kernel : ndarray, shape (M, Cg, K_1, ..., K_n)
        ``kernel[m, c, k]``: the weight of input channel ``g * Cg + c`` at kernel offset
        ``k`` in the rows of output channel ``m``.
    groups : int
        ``M`` and the number of input channels are ``groups`` times the per-group counts.
    tables : sequence of ndarray of int64, shape (O_a, K_a)
        Per spatial axis, input position of (output position, kernel offset), ``-1`` for
        none (:func:`window_table`).
    in_extent : sequence of int
        Per spatial axis, the number of input positions (positions in the tables lie in
        ``[0, in_extent[a])``).
    strides : sequence of int, length n + 1
        Column step of one input channel, then of one position along each axis.
    base : int
        Column of input element ``(0, 0, ..., 0)``.
    n_cols : int
        Number of columns (the size of the node the matrix reads).
    row_scale : ndarray, shape (n_rows,), optional
        Multiplies every entry of a row (AveragePool's ``1 / count``; a folded
        elementwise scale that differs along the spatial axes).
    """

    format = "window"

    def __init__(self, kernel, groups, tables, in_extent, strides, base, n_cols,
                 row_scale=None):
        self.kernel = np.ascontiguousarray(kernel, np.float64)
        self.groups = int(groups)
        self.tables = tuple(np.ascontiguousarray(t, np.int64) for t in tables)
        self.in_extent = tuple(int(s) for s in in_extent)
        self.strides = tuple(int(s) for s in strides)
        self.base = int(base)
        self.n_cols = int(n_cols)
        self.row_scale = (None if row_scale is None
                          else np.ascontiguousarray(row_scale, np.float64))
        n = len(self.tables)
        m = self.kernel.shape[0]
        if (self.kernel.ndim != n + 2 or len(self.in_extent) != n or len(self.strides) != n + 1
                or m % self.groups or any(t.ndim != 2 for t in self.tables)
                or tuple(t.shape[1] for t in self.tables) != self.kernel.shape[2:]):
            raise ValueError(
                f"inconsistent window matrix: kernel {self.kernel.shape}, groups "
                f"{self.groups}, tables {[t.shape for t in self.tables]}, in_extent "
                f"{self.in_extent}, strides {self.strides}")
        for t, s in zip(self.tables, self.in_extent):
            if t.size and (t.max() >= s or t.min() < -1):
                raise ValueError(f"a window table holds positions outside [0, {s})")
        last = self.base + (self.in_channels - 1) * self.strides[0] + sum(
            (s - 1) * st for s, st in zip(self.in_extent, self.strides[1:]))
        first = self.base + min(0, (self.in_channels - 1) * self.strides[0]) + sum(
            min(0, (s - 1) * st) for s, st in zip(self.in_extent, self.strides[1:]))
        if first < 0 or max(last, self.base) >= self.n_cols:
            raise ValueError(f"window matrix columns [{first}, {last}] outside "
                             f"[0, {self.n_cols})")
        if self.row_scale is not None and self.row_scale.shape != (self.shape[0],):
            raise ValueError(f"row_scale of shape {self.row_scale.shape}, expected "
                             f"({self.shape[0]},)")

    # ----------------------------------------------------------------- shape
    @property
    def out_channels(self):
        return self.kernel.shape[0]

    @property
    def group_channels(self):
        """``Cg``: input channels each output channel reads."""
        return self.kernel.shape[1]

    @property
    def in_channels(self):
        return self.groups * self.group_channels

    @property
    def out_spatial(self):
        return tuple(t.shape[0] for t in self.tables)

    @property
    def shape(self):
        return (self.out_channels * int(np.prod(self.out_spatial, dtype=np.int64)),
                self.n_cols)

    @property
    def ndim(self):
        return 2

    @property
    def nnz(self):
        """Structural non-zeros (kernel zeros included), as in :meth:`to_csr`."""
        per_axis = [int(np.count_nonzero(t >= 0)) for t in self.tables]
        return self.out_channels * self.group_channels * int(np.prod(per_axis, dtype=np.int64))

    @property
    def nbytes(self):
        return (self.kernel.nbytes + sum(t.nbytes for t in self.tables)
                + (0 if self.row_scale is None else self.row_scale.nbytes))

    @property
    def max_row(self):
        """The largest number of entries in a row."""
        longest = [int(np.count_nonzero(t >= 0, axis=1).max(initial=0)) for t in self.tables]
        return self.group_channels * int(np.prod(longest, dtype=np.int64))

    def __repr__(self):
        return (f"<WindowMatrix {self.shape[0]}x{self.shape[1]}: kernel "
                f"{self.kernel.shape}, groups {self.groups}, out {self.out_spatial}, "
                f"{self.nnz:,} structural non-zeros>")

    # ------------------------------------------------------------ the rows
    def sorted_axis(self, a):
        """Per output position of axis ``a``: kernel offsets by increasing position
        (valid ones first) and how many are valid."""
        t = self.tables[a]
        order = np.argsort(np.where(t >= 0, t, np.iinfo(np.int64).max), axis=1, kind="stable")
        return order, np.count_nonzero(t >= 0, axis=1)

    def row(self, p):
        """The structural non-zeros of row ``p``: columns and values, in the order the
        kernels visit them (module docstring).

        Returns
        -------
        columns : ndarray of int64
        values : ndarray of float64
        """
        p = int(p)
        n_out = int(np.prod(self.out_spatial, dtype=np.int64))
        m, o_flat = divmod(p, n_out)
        o = np.unravel_index(o_flat, self.out_spatial) if self.out_spatial else ()
        per_axis_pos, per_axis_k = [], []
        for a, oa in enumerate(o):
            order, count = self.sorted_axis(a)
            ks = order[oa, :count[oa]]
            per_axis_k.append(ks)
            per_axis_pos.append(self.tables[a][oa, ks])
        g = m // (self.out_channels // self.groups)
        cols, vals = [], []
        for c in range(self.group_channels):
            cin = g * self.group_channels + c
            for combo in itertools.product(*[range(len(k)) for k in per_axis_k]):
                col = self.base + cin * self.strides[0] + sum(
                    int(per_axis_pos[a][j]) * self.strides[a + 1] for a, j in enumerate(combo))
                kidx = tuple(int(per_axis_k[a][j]) for a, j in enumerate(combo))
                cols.append(col)
                vals.append(self.kernel[(m, c) + kidx])
        vals = np.asarray(vals, np.float64)
        if self.row_scale is not None:
            vals = vals * self.row_scale[p]
        return np.asarray(cols, np.int64), vals

    def _templates(self):
        """Per output position (C order), the valid (spatial column offset, kernel
        offset) pairs, in row order: ``offsets``, ``kflat`` (n_out, L) and ``valid``."""
        offs = np.zeros((1, 1), np.int64)
        kfl = np.zeros((1, 1), np.int64)
        valid = np.ones((1, 1), bool)
        for a, t in enumerate(self.tables):
            order, _ = self.sorted_axis(a)
            pos = np.take_along_axis(t, order, axis=1)                 # (O_a, K_a)
            ok = pos >= 0
            k_a = self.kernel.shape[2 + a]
            offs = (offs[:, None, :, None] + (np.where(ok, pos, 0) * self.strides[a + 1])
                    [None, :, None, :])
            kfl = kfl[:, None, :, None] * k_a + order[None, :, None, :]
            valid = valid[:, None, :, None] & ok[None, :, None, :]
            n_o = offs.shape[0] * offs.shape[1]
            offs = offs.reshape(n_o, -1)
            kfl = kfl.reshape(n_o, -1)
            valid = valid.reshape(n_o, -1)
        return offs, kfl, valid

    def to_csr(self):
        """The explicit matrix: the design's reference form, for small networks and tests.

        Returns
        -------
        scipy.sparse.csr_array, shape ``self.shape``
            Rows listed as :meth:`row` lists them, then columns sorted (they already
            are for an NCHW layout); kernel zeros kept as structural non-zeros.
        """
        offs, kfl, valid = self._templates()                          # (O, L)
        m, cg = self.out_channels, self.group_channels
        n_out = offs.shape[0]
        m_per_group = m // self.groups
        k_prod = int(np.prod(self.kernel.shape[2:], dtype=np.int64))
        # entries over (m, o, c, l), valid ones only
        c = np.arange(cg, dtype=np.int64)
        g = np.arange(m, dtype=np.int64) // m_per_group
        chan = (g[:, None] * cg + c[None, :]) * self.strides[0]        # (M, Cg)
        cols = (self.base + chan[:, None, :, None] + offs[None, :, None, :])
        vals = self.kernel.reshape(m, cg, k_prod)[:, None, :, :]
        vals = np.take_along_axis(
            np.broadcast_to(vals, (m, n_out, cg, k_prod)),
            np.broadcast_to(kfl[None, :, None, :], (m, n_out, cg, kfl.shape[1])), axis=3)
        mask = np.broadcast_to(valid[None, :, None, :], cols.shape)
        counts = np.broadcast_to(valid.sum(1)[None, :] * cg, (m, n_out)).ravel()
        data = vals[mask]
        if self.row_scale is not None:
            data = data * np.repeat(self.row_scale, counts)
        indptr = np.zeros(m * n_out + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        index = np.int32 if max(self.n_cols, indptr[-1]) <= np.iinfo(np.int32).max else np.int64
        a = sp.csr_array((data.astype(np.float64), np.broadcast_to(cols, mask.shape)[mask]
                          .astype(index), indptr.astype(index)), shape=self.shape)
        a.has_sorted_indices = False
        a.sort_indices()
        return a

    def toarray(self):
        """The explicit matrix as a dense array (small matrices only)."""
        return self.to_csr().toarray()

    # --------------------------------------------------------- matrix-free passes
    def _positions(self, k):
        """Columns read at kernel offset ``k`` (a tuple) by every output position, per
        input channel: (Cin, n_out), and which exist: (n_out,)."""
        pos = [t[:, ka] for t, ka in zip(self.tables, k)]
        ok = np.ones((), bool)
        addr = np.zeros((), np.int64)
        for a, pa in enumerate(pos):
            ok = np.logical_and.outer(ok, pa >= 0) if ok.ndim else pa >= 0
            step = np.where(pa >= 0, pa, 0) * self.strides[a + 1]
            addr = np.add.outer(addr, step) if addr.ndim else step
        ok, addr = np.ravel(ok), np.ravel(addr)
        chan = np.arange(self.in_channels, dtype=np.int64)[:, None] * self.strides[0]
        return self.base + chan + addr[None, :], ok

    def matmul_rows(self, u):
        """``u @ A.T`` for a batch of row vectors ``u`` (batch, n_cols), without
        unrolling: output positions in chunks, each gathered once over every input
        channel and kernel offset (a bounded im2col buffer, :data:`GATHER_BYTES`) and
        multiplied by the kernel in one matrix product per group."""
        u = np.asarray(u, np.float64)
        batch = u.shape[0]
        m, cg, gr = self.out_channels, self.group_channels, self.groups
        n_out = self.shape[0] // m
        k_shape = self.kernel.shape[2:]
        k_prod = int(np.prod(k_shape, dtype=np.int64))
        wmat = self.kernel.reshape(gr, m // gr, cg * k_prod)
        chan = np.arange(self.in_channels, dtype=np.int64)[:, None] * self.strides[0]
        chunk = max(1, min(n_out, GATHER_BYTES // max(1, 8 * batch * self.in_channels
                                                      * k_prod)))
        y = np.empty((batch, gr, m // gr, n_out))
        for start in range(0, n_out, chunk):
            stop = min(n_out, start + chunk)
            o = np.unravel_index(np.arange(start, stop), self.out_spatial)
            cols = np.empty((self.in_channels, k_prod, stop - start), np.int64)
            ok = np.empty((k_prod, stop - start), bool)
            for kk, k in enumerate(itertools.product(*[range(s) for s in k_shape])):
                addr = np.full(stop - start, self.base, np.int64)
                valid = np.ones(stop - start, bool)
                for a, (oa, ka) in enumerate(zip(o, k)):
                    pos = self.tables[a][oa, ka]
                    valid &= pos >= 0
                    addr += np.where(pos >= 0, pos, 0) * self.strides[a + 1]
                cols[:, kk] = chan + addr[None, :]
                ok[kk] = valid
            x = np.where(ok, u[:, cols], 0.0)                 # (batch, Cin, K, n)
            x = x.reshape(batch, gr, cg * k_prod, stop - start)
            y[..., start:stop] = np.matmul(wmat, x)
        y = y.reshape(batch, -1)
        return y * self.row_scale if self.row_scale is not None else y

    def rmatmul_rows(self, g):
        """``g @ A`` for a batch of row vectors ``g`` (batch, n_rows): the transposed pass
        (gradients), without unrolling. Within one kernel offset every output position
        reads a different input element, so each offset is one scatter."""
        g = np.asarray(g, np.float64)
        batch = g.shape[0]
        if self.row_scale is not None:
            g = g * self.row_scale
        m, cg, gr = self.out_channels, self.group_channels, self.groups
        n_out = self.shape[0] // m
        gg = g.reshape(batch, gr, m // gr, n_out)
        out = np.zeros((batch, self.n_cols))
        for k in itertools.product(*[range(s) for s in self.kernel.shape[2:]]):
            cols, ok = self._positions(k)
            if not ok.any():
                continue
            w = self.kernel[(slice(None), slice(None)) + k].reshape(gr, m // gr, cg)
            contrib = np.einsum("gmc,bgmo->bgco", w, gg).reshape(batch, -1, n_out)
            sel = np.broadcast_to(ok, cols.shape)
            out[:, cols[sel]] += contrib[:, sel]   # one offset: no column twice
        return out

    @property
    def T(self):
        """The transpose, as an operand of ``matmul_rows`` (the gradient pass)."""
        return TransposedWindowMatrix(self)

    # -------------------------------------------------------------- folding
    def scaled_rows(self, s):
        """The matrix with row ``p`` multiplied by ``s[p]``: into the kernel when ``s``
        is constant over each output channel (a folded BatchNorm), else into
        ``row_scale``."""
        s = np.asarray(s, np.float64)
        m = self.out_channels
        per_channel = s.reshape(m, -1)
        if per_channel.size and np.all(per_channel == per_channel[:, :1]):
            kernel = self.kernel * per_channel[:, 0].reshape((m,) + (1,) * (self.kernel.ndim - 1))
            return self._with(kernel=kernel)
        rs = s.copy() if self.row_scale is None else self.row_scale * s
        return self._with(row_scale=rs)

    def abs_power(self, p=1):
        """The matrix of ``|a_ij|^p``, entry by entry (the same windows)."""
        rs = self.row_scale
        return self._with(kernel=np.abs(self.kernel) ** p,
                          row_scale=None if rs is None else np.abs(rs) ** p)

    def copy(self):
        """A copy that shares no array with this one."""
        return self._with(kernel=self.kernel.copy(), tables=[t.copy() for t in self.tables],
                          row_scale=None if self.row_scale is None else self.row_scale.copy())

    def _with(self, **changes):
        args = dict(kernel=self.kernel, groups=self.groups, tables=self.tables,
                    in_extent=self.in_extent, strides=self.strides, base=self.base,
                    n_cols=self.n_cols, row_scale=self.row_scale)
        args.update(changes)
        return WindowMatrix(**args)


class TransposedWindowMatrix:
    """``A.T`` of a :class:`WindowMatrix`, for ``matmul_rows(g, A.T) = g @ A``."""

    format = "window"

    def __init__(self, a):
        self.a = a

    @property
    def shape(self):
        return self.a.shape[::-1]

    def matmul_rows(self, g):
        return self.a.rmatmul_rows(g)
