"""The :class:`Network`: a DAG of local affine maps and its float64 forward pass."""

from __future__ import annotations

import numpy as np

from .._tables import text_table
from ..errors import InputShapeError
from .linearize import linearize
from .nodes import live_nodes
from .start import Start, cut_network, resolve_start
from .trace import Trace, matmul_rows, max_forward


__all__ = ["Network", "live_nodes"]


class Network:
    """A model as a DAG of local affine maps (SPEC section 1).

    Build one with :func:`refbbp.load`. Nodes are in topological order; node 0 is the
    input and ``output`` the node whose value is the logits vector.

    Attributes
    ----------
    nodes : list of Node
    output : int
    input_shape : tuple of int
        Shape of one input, without a batch dimension.
    input_name : str
        Name of the ONNX graph input.
    output_name : str
        Name of the ONNX tensor whose values are the logits explained (a final
        Softmax/LogSoftmax dropped on import is not part of it).
    graph_output : str
        The graph output that was chosen (equal to ``output_name`` unless a final
        Softmax was dropped).
    batch_axis : bool
        Whether the ONNX input has a leading batch dimension.
    notices : list of str
        What the importer did that a user should know (e.g. a final Softmax dropped).
    start : Start
        The node of the full model whose output is this network's input (SPEC section 8):
        the input itself (index 0) unless the network was cut by :meth:`from_node`.
    origin : list of int or None
        For a cut network, the index in the full model of each node; ``None`` otherwise.
    """

    def __init__(self, nodes, output, input_shape, *, input_name="input",
                 output_name="output", graph_output=None, batch_axis=True, notices=(),
                 source=None):
        self.nodes = list(nodes)
        self.output = int(output)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_name = input_name
        self.output_name = output_name
        self.graph_output = output_name if graph_output is None else graph_output
        self.batch_axis = batch_axis
        self.notices = list(notices)
        self.source = source
        self.start = Start(0, self.nodes[0].name if self.nodes else "input")
        self.origin = None
        self._check()

    def _check(self):
        if not self.nodes or self.nodes[0].kind != "input":
            raise ValueError("node 0 must be the input node")
        for k, node in enumerate(self.nodes):
            for i, w in zip(node.inputs, node.weights):
                if not 0 <= i < k:
                    raise ValueError(f"node {k} ({node.name}) reads node {i}: not topological")
                if w.shape != (node.size, self.nodes[i].size):
                    raise ValueError(
                        f"node {k} ({node.name}): weight shape {w.shape}, expected "
                        f"{(node.size, self.nodes[i].size)}")

    # ------------------------------------------------------------------ sizes
    @property
    def n_inputs(self):
        return self.nodes[0].size

    @property
    def n_outputs(self):
        return self.nodes[self.output].size

    def consumers(self):
        """For each node, the nodes that read it."""
        out = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes):
            for i in node.inputs:
                out[i].append(k)
        return out

    def cut_nodes(self):
        """Nodes that every input-to-output path passes through (SPEC section 3).

        Returns
        -------
        list of int
            In topological order; includes the input and the output node.
        """
        # A node n is a cut iff no edge (i -> k) with i < n < k skips over it, among
        # nodes on input-to-output paths (nodes are in topological order).
        live = live_nodes(self.nodes, self.output)
        consumers = self.consumers()
        reach = 0  # furthest node read by an edge leaving a live node before k
        cuts = []
        for k in np.flatnonzero(live):
            if reach <= k:
                cuts.append(int(k))
            reach = max([reach] + [c for c in consumers[k] if live[c]])
        return cuts

    def from_node(self, start):
        """The network cut at a node: its input is that node's output (SPEC section 8).

        Parameters
        ----------
        start : None, int or str
            A cut node: its index, its name, ``"after-normalisation"`` (the output of
            the input normalisation, :func:`refbbp.network.start.normalisation_node`) or
            ``None``/``"input"`` (this network itself).

        Returns
        -------
        Network
            Node 0 stands for ``start``; the nodes after it are shared with this network.
            ``.start`` names the node, ``.origin`` maps node indices back to this network.

        Raises
        ------
        ValueError
            ``start`` names no node, or a node that is not a cut (the message names the
            edge that bypasses it), or the model has no input normalisation.
        """
        return cut_network(self, resolve_start(self, start))

    # ---------------------------------------------------------------- forward
    def as_batch(self, x):
        """Validate ``x`` and return it as a float64 array (batch, n_inputs) and whether
        it carried a batch dimension."""
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:   # ragged nested lists
            raise InputShapeError(f"x: input is not an array of numbers: {exc}") from None
        if x.dtype.kind not in "fiub":
            raise InputShapeError(f"x: input must be numeric, got dtype {x.dtype}")
        if x.shape == self.input_shape:
            batched = False
            xb = x.reshape(1, -1)
        elif x.shape[1:] == self.input_shape and x.ndim == len(self.input_shape) + 1:
            if x.shape[0] == 0:
                raise InputShapeError(f"x: input of shape {x.shape} is an empty batch: give at "
                                      f"least one input of shape {self.input_shape}")
            batched = True
            xb = x.reshape(x.shape[0], -1)
        else:
            raise InputShapeError(
                f"x: input of shape {x.shape} does not fit the network: expected "
                f"{self.input_shape} (one input) or "
                f"(batch, {', '.join(map(str, self.input_shape))})")
        xb = np.ascontiguousarray(xb, dtype=np.float64)
        if not np.all(np.isfinite(xb)):
            bad = int(np.count_nonzero(~np.isfinite(xb)))
            raise InputShapeError(f"x: input contains NaN or infinite values ({bad} of "
                                  f"{xb.size})")
        return xb, batched

    def trace(self, x, until=None):
        """Run the network on ``x`` in float64 and record every node's value and the
        activation pattern.

        Parameters
        ----------
        x : array_like, shape input_shape or (batch, *input_shape)
        until : int, optional
            Stop after this node (the nodes after it are left ``None``).

        Returns
        -------
        Trace
        """
        xb, batched = self.as_batch(x)
        n = len(self.nodes)
        values, pre, pieces, selected = [None] * n, [None] * n, [None] * n, [None] * n
        values[0] = xb
        for k in range(1, n if until is None else until + 1):
            node = self.nodes[k]
            if node.kind == "max":
                values[k], selected[k] = max_forward(values[node.inputs[0]], node.window)
                continue
            y = np.broadcast_to(node.bias, (xb.shape[0], node.size)).copy()
            for i, w in zip(node.inputs, node.weights):
                y += matmul_rows(values[i], w)
            if node.activation is None:
                values[k] = y
            else:
                pieces[k] = node.activation.pieces(y)
                c, d = node.activation.local(pieces[k])
                pre[k] = y
                values[k] = c * y + d
        return Trace(self, values, pre, pieces, selected, batched)

    def forward(self, x):
        """Logits of the network at ``x``, computed in float64.

        Parameters
        ----------
        x : array_like, shape input_shape or (batch, *input_shape)

        Returns
        -------
        ndarray, shape (n_outputs,) or (batch, n_outputs)
        """
        t = self.trace(x)
        return t.logits if t.batched else t.logits[0]

    __call__ = forward

    def frozen_forward(self, trace, x):
        """Evaluate the network at ``x`` with the activation pattern (pieces and max
        selections) of ``trace`` frozen: the local affine model of every output.

        At ``x = 0`` this is the local bias of all outputs at once (SPEC section 2).

        Returns
        -------
        ndarray, shape (batch, n_outputs)
        """
        return self.frozen_values(trace, x)[1][self.output]

    def frozen_values(self, trace, x, bias=True):
        """Every node's pre-activation and value at ``x`` with the activation pattern of
        ``trace`` frozen.

        With ``bias=False`` the biases ``b`` and activation offsets ``d`` are left out:
        each node then holds its exact directional derivative along ``x`` at the traced
        input (the Jacobian-vector product through the local maps ``A_i^x``).

        Parameters
        ----------
        trace : Trace
        x : array_like, broadcastable to (batch, n_inputs)
            With a trace of one input, any batch of inputs (directions) at once.
        bias : bool

        Returns
        -------
        pre : list of ndarray or None
            ``y_n`` (batch, size) of activated affine nodes, ``None`` for the others.
        values : list of ndarray, shape (batch, node.size)
            ``h_n``.
        """
        pre = [None] * len(self.nodes)
        for k, pre_k, values_so_far in self.frozen_pass(trace, x, bias):
            pre[k] = pre_k
            values = values_so_far
        return pre, values

    def frozen_pass(self, trace, x, bias=True, keep=True):
        """:meth:`frozen_values` node by node: yields ``(k, pre_k, values)`` after node
        ``k`` (first ``k = 0``, the input), ``values`` being the list of node values so
        far.

        With ``keep=False`` a value is dropped (set to ``None``) once every node that
        reads it has run, so a pass over a large batch of directions holds only the
        values still needed."""
        x = np.asarray(x, np.float64)
        shape = trace.values[0].shape
        if x.ndim == 0:
            xb = np.broadcast_to(x, shape)
        elif shape[0] == 1:
            xb = x.reshape(-1, self.n_inputs)
        else:
            xb = np.broadcast_to(x.reshape(-1, self.n_inputs), shape)
        n = len(self.nodes)
        last_reader = np.arange(n)
        for k, node in enumerate(self.nodes):
            last_reader[node.inputs] = k
        values = [None] * n
        values[0] = xb
        yield 0, None, values
        for k in range(1, n):
            node = self.nodes[k]
            pre_k = None
            if node.kind == "max":
                u = values[node.inputs[0]]
                values[k] = np.take_along_axis(u, trace.selected[k], axis=1)
            else:
                y = np.zeros((xb.shape[0], node.size))
                if bias:
                    y += node.bias
                for i, w in zip(node.inputs, node.weights):
                    y += matmul_rows(values[i], w)
                cd = trace.slopes_offsets(k)
                if cd is None:
                    values[k] = y
                else:
                    pre_k = y
                    values[k] = cd[0] * y + cd[1] if bias else cd[0] * y
            yield k, pre_k, values
            if not keep:
                for i in node.inputs:
                    if last_reader[i] == k and i != self.output:
                        values[i] = None

    def linearize(self, x, target=None, start=None):
        """The local linear model ``f(x) = w . x + b^x`` at ``x`` (SPEC section 2), or
        over the output of node ``start`` (SPEC section 8).

        See :func:`refbbp.linearize`.
        """
        return linearize(self, x, target, start)

    # ---------------------------------------------------------------- display
    def summary(self):
        """A table of the nodes: kind, op, inputs, shape, activation, non-zeros, bytes."""
        header = ("#", "name", "op", "kind", "inputs", "shape", "act", "storage", "nnz",
                  "bytes")
        rows = []
        for k, node in enumerate(self.nodes):
            act = "" if node.activation is None else node.activation.name
            rows.append((str(k), _clip(node.name, 32), node.op, node.kind,
                         ",".join(map(str, node.inputs)), "x".join(map(str, node.shape)),
                         act, node.describe_storage(), f"{node.nnz:,}", _fmt_bytes(node.nbytes)))
        lines = [text_table(rows, header)]
        total = sum(n.nbytes for n in self.nodes)
        lines.append(f"{len(self.nodes)} nodes, input {self.input_shape}, "
                     f"{self.n_outputs} outputs (node {self.output}), {_fmt_bytes(total)} in all")
        lines += [f"note: {m}" for m in self.notices]
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def __repr__(self):
        cut = f", cut at {self.start}" if self.start.index else ""
        return (f"<Network {len(self.nodes)} nodes, input {self.input_shape}, "
                f"{self.n_outputs} outputs{cut}>")


def _clip(s, n):
    return s if len(s) <= n else s[: n - 1] + "~"


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
