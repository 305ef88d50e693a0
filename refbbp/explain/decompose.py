"""Per-layer decompositions of the explained output (SPEC section 4; companion paper
"Measuring and improving the quality of visual explanations", section 2, eq. 11-15).

At an input ``x`` the network is locally affine. For a node ``l`` with output ``h^l``
and gradient ``g^l = df/dh^l`` (from :func:`refbbp.linearize`):

* the **activity attribution** ``a^{h,l} = h^l * g^l`` (eq. 11 before the channel sum),
  reported for every *cut* node (a node that every input-to-output path passes through,
  :meth:`Network.cut_nodes`), and
* the **bias attribution** ``a^{b,m} = b^{x,m} * g^m`` (FullGrad's bias-gradient, eq. 12),
  reported for every affine node ``m``; ``b^{x,m} = c * b + d`` is the node's *local*
  bias (:meth:`Trace.local_bias`), so a saturated Clip's offset ``d`` counts and the sums
  below are exact. :meth:`Decomposition.bias_parts` splits it by the ONNX op each part
  of the bias came from (a Conv's bias and a BatchNormalization folded into it).

For every cut ``l`` the output decomposes completely (eq. 13)::

    f(x) = sum a^{h,l} + sum over affine nodes m downstream of l of sum a^{b,m}

where "downstream of l" means every node reachable from ``l`` (in a residual network the
nodes inside the blocks after ``l`` count too). ``l = 0`` (the input) is the full-gradient
decomposition ``f = sum x * w + sum_m sum a^{b,m}``; ``l =`` the output node gives
``f = v . logits``. :meth:`Decomposition.check` measures all of them.

Shapes: every attribution is reported node-shaped, ``node.shape`` without its batch
dimension of 1 (e.g. ``(C, H, W)`` for a convolution), and for conv-shaped nodes (two or
more axes: channels first, then space) also as a channel-summed spatial map (eq. 11-12:
``a_{ij} = sum_phi a_{ij phi}``). With a batch of inputs every array gains a leading
batch axis, as in :func:`refbbp.linearize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._tables import text_table
from ..tolerance import relative_error
from ..network.linearize import LocalLinearModel, linearize
from ..network.start import resolve_start, sample_shape, start_input

__all__ = ["BiasPart", "Decomposition", "LayerAttribution", "decompose", "layer_shape"]


def layer_shape(network, n):
    """Shape of one sample of node ``n``: ``node.shape`` without its batch dimension
    (:func:`refbbp.network.start.sample_shape`)."""
    return sample_shape(network, n)


class BiasPart(NamedTuple):
    """One part of a node's bias attribution (:meth:`Decomposition.bias_parts`).

    Attributes
    ----------
    name : str
        The ONNX node the bias part came from (``"<node>/activation offsets"`` for the
        offsets ``d`` of the node's activation, ``"<node>/constant inputs"`` for
        constants read through a Pad or Concat).
    op : str
        Its op type (``"Conv"``, ``"BatchNormalization"``, ...; ``"Constant"`` for
        constant inputs, ``"ActivationOffset"`` for ``d``).
    a : ndarray
        ``c * b_part * df/dh`` (``d * df/dh`` for the offsets), shaped like
        :attr:`LayerAttribution.a_b`.
    """

    name: str
    op: str
    a: np.ndarray


@dataclass(eq=False)
class LayerAttribution:
    """The attributions of one node of the network.

    Shapes are per input; with a batch, each array gains a leading batch axis.

    Attributes
    ----------
    index : int
        Node index in ``network.nodes``.
    name, op, kind : str
        As in :class:`refbbp.Node` (``kind`` is "input", "affine" or "max").
    shape : tuple of int
        One sample of the node's output: ``node.shape`` without its batch dimension.
    is_cut : bool
        Whether every input-to-output path passes through the node.
    a_h : ndarray, shape ``shape``, or None
        Activity attribution ``h * df/dh`` (cut nodes only, else ``None``).
    a_b : ndarray, shape ``shape``, or None
        Bias attribution ``b^x * df/dh`` (affine nodes only, else ``None``; zero where
        the node has no bias).
    """

    index: int
    name: str
    op: str
    kind: str
    shape: tuple
    is_cut: bool
    a_h: np.ndarray = None
    a_b: np.ndarray = None
    batched: bool = False

    @property
    def spatial(self):
        """Whether the node is conv-shaped: a channel axis then one or more spatial axes
        (``len(shape) >= 2``). Only such nodes have spatial maps."""
        return len(self.shape) >= 2

    @property
    def spatial_shape(self):
        """``shape[1:]`` for conv-shaped nodes, ``None`` otherwise."""
        return self.shape[1:] if self.spatial else None

    def _map(self, a):
        if a is None or not self.spatial:
            return None
        return a.sum(axis=1 if self.batched else 0)

    @property
    def a_h_map(self):
        """Channel-summed activity attribution (eq. 11), shape ``shape[1:]``; ``None``
        for nodes that are not cuts or not conv-shaped."""
        return self._map(self.a_h)

    @property
    def a_b_map(self):
        """Channel-summed bias attribution (eq. 12), shape ``shape[1:]``; ``None`` for
        nodes that are not affine or not conv-shaped."""
        return self._map(self.a_b)

    def _total(self, a):
        if a is None:
            return None
        return a.reshape(a.shape[0], -1).sum(1) if self.batched else a.sum()

    @property
    def A_h(self):
        """Gross sum of ``a_h`` (eq. 14), shape () or (batch,); ``None`` if not a cut."""
        return self._total(self.a_h)

    @property
    def A_b(self):
        """Gross sum of ``a_b`` (eq. 14), shape () or (batch,); ``None`` if not affine."""
        return self._total(self.a_b)


@dataclass(eq=False)
class Decomposition:
    """Activity and bias attributions of every node at ``x`` (SPEC section 4).

    Build one with :func:`decompose`. ``layers[n]`` describes node ``n``.

    Attributes
    ----------
    layers : list of LayerAttribution
        One per node, in node order.
    cuts : list of int
        Indices of the cut nodes (:meth:`Network.cut_nodes`), input and output included.
    value : ndarray, shape () or (batch,)
        ``f(x) = v . logits``.
    logits : ndarray, shape (n_outputs,) or (batch, n_outputs)
    target : ndarray, shape (n_outputs,) or (batch, n_outputs)
        The vector ``v`` explained.
    linear : LocalLinearModel
        The local linear model the attributions were computed from (trace and grads).
    batched : bool
        Whether ``x`` carried a batch axis.
    """

    layers: list
    cuts: list
    value: np.ndarray
    logits: np.ndarray
    target: np.ndarray
    linear: LocalLinearModel
    batched: bool

    @property
    def network(self):
        return self.linear.network

    @property
    def start(self):
        """The node the decomposition starts from (SPEC section 8)."""
        return self.linear.start

    @property
    def grad_input(self):
        """``a = x * df/dx`` (gradient x input, ``a^{h,0}``), shaped like ``x``."""
        return self.layers[0].a_h

    @property
    def affine_nodes(self):
        """Indices of the affine nodes (the ones with a bias attribution)."""
        return [la.index for la in self.layers if la.a_b is not None]

    def bias_parts(self, n):
        """The bias attribution of affine node ``n`` split by where its bias came from.

        A node's bias ``b`` is the sum of parts ``b_j``, one per ONNX op that contributed
        to it (:attr:`refbbp.Node.bias_parts`: a Conv's own bias and a BatchNormalization
        folded into it stay two parts). Part ``j`` is attributed ``c * b_j * df/dh``
        (``c`` the activation's local slopes), the activation's offsets ``d * df/dh``
        form one more part when the activation has any, and the parts add up to
        :attr:`LayerAttribution.a_b` (to rounding). ``c * b_j * df/dh`` is ``b_j`` times
        the gradient at the pre-activation output of the op: what FullGrad's reference
        code takes for each module with a bias.

        Parameters
        ----------
        n : int
            Index of an affine node.

        Returns
        -------
        list of BiasPart
            In the order the parts were folded in.
        """
        node = self.network.nodes[n]
        if node.kind != "affine":
            raise ValueError(f"node {n} ({node.name}) is a {node.kind} node: only affine "
                             f"nodes have a bias (affine nodes: {self.affine_nodes})")
        trace, g = self.linear.trace, self.linear.grads[n]
        shape = (g.shape[0],) + self.layers[n].shape
        cd = trace.slopes_offsets(n)
        terms = [(name, op, b if cd is None else cd[0] * b)
                 for name, op, b in node.bias_terms()]
        if cd is not None and np.any(cd[1] != 0):
            terms.append((f"{node.name}/activation offsets", "ActivationOffset", cd[1]))
        return [BiasPart(name, op, self._unbatched((local * g).reshape(shape)))
                for name, op, local in terms]

    def _unbatched(self, a):
        return a if self.batched else a[0]

    def downstream(self, n):
        """Nodes reachable from node ``n`` (``n`` itself excluded), in node order.

        For a cut ``n`` these are exactly the nodes after ``n`` on input-to-output paths
        (plus nodes that do not reach the output, whose gradient is zero).
        """
        consumers = self.network.consumers()
        seen = np.zeros(len(self.layers), bool)
        stack = list(consumers[n])
        while stack:
            k = stack.pop()
            if not seen[k]:
                seen[k] = True
                stack.extend(consumers[k])
        return [int(k) for k in np.flatnonzero(seen)]

    def spatial_layers(self):
        """The layers saliency maps are built from: conv-shaped cut nodes, the input
        excluded, in node order (the paper's layers ``l = 1 .. L``)."""
        return [la.index for la in self.layers[1:] if la.is_cut and la.spatial]

    def _batched(self, a):
        return a if self.batched else a[None]

    def _sums(self, a):
        a = self._batched(a)
        return a.reshape(a.shape[0], -1).sum(1), np.abs(a).reshape(a.shape[0], -1).sum(1)

    def bias_below(self, n):
        """``sum over affine nodes m downstream of n of sum a^{b,m}``: what a cut ``n``'s
        activity attribution leaves to the biases above it (eq. 13). Shape () or (batch,)."""
        total = np.zeros(self._batched(np.asarray(self.value)).shape)
        for m in self.downstream(n):
            if self.layers[m].a_b is not None:
                total = total + self._sums(self.layers[m].a_b)[0]
        return total if self.batched else total[0]

    def completeness_error(self, n):
        """Relative error of eq. 13 at cut ``n``, per input.

        Returns
        -------
        ndarray, shape (batch,)
            ``|sum a^{h,n} + sum_{m downstream} sum a^{b,m} - f| / scale`` with ``scale``
            the sum of absolute values of all the terms added.
        """
        la = self.layers[n]
        if la.a_h is None:
            raise ValueError(f"node {n} ({la.name}) is not a cut: it has no complete "
                             f"decomposition (cuts: {self.cuts})")
        total, scale = self._sums(la.a_h)
        for m in self.downstream(n):
            if self.layers[m].a_b is not None:
                s, a = self._sums(self.layers[m].a_b)
                total, scale = total + s, scale + a
        f = np.atleast_1d(self.value)
        return relative_error(total - f, scale)

    def check(self):
        """Largest relative completeness error over every cut and input (eq. 13).

        Returns
        -------
        float
            At most ``1e-9`` for an exact decomposition (SPEC section 2's tolerance).
        """
        return float(max(np.max(self.completeness_error(n)) for n in self.cuts))

    def summary(self, i=0):
        """A table, one row per node, of input ``i``: kind, shape, cut, ``A^h``, ``A^b``
        and the share of ``f`` the biases downstream of each cut carry."""
        f = float(np.atleast_1d(self.value)[i])
        header = ("#", "name", "op", "kind", "shape", "cut", "A^h", "A^b", "bias above / f")
        rows = []
        for la in self.layers:
            ah = "" if la.a_h is None else f"{np.atleast_1d(la.A_h)[i]:.4g}"
            ab = "" if la.a_b is None else f"{np.atleast_1d(la.A_b)[i]:.4g}"
            share = ""
            if la.is_cut and f != 0:
                share = f"{np.atleast_1d(self.bias_below(la.index))[i] / f:.3f}"
            rows.append((str(la.index), la.name[:32], la.op, la.kind,
                         "x".join(map(str, la.shape)), "yes" if la.is_cut else "",
                         ah, ab, share))
        lines = [text_table(rows, header)]
        lines.append(f"f(x) = {f:.6g}; completeness error {self.check():.2g}"
                     + (f"; from {self.start}" if self.start.index else ""))
        return "\n".join(lines)


def decompose(net, x, target=None, start=None):
    """Activity and bias attributions of every layer at ``x`` (SPEC section 4).

    Parameters
    ----------
    net : Network
    x : array_like, shape input_shape or (batch, *input_shape)
    target : None, "pred", "top2", int, sequence of int, or array, optional
        What to explain, as in :func:`refbbp.linearize` (default the predicted class).
    start : None, int or str, optional
        Decompose from this cut node instead of the input (SPEC section 8), as in
        :func:`refbbp.linearize`: the layers are then those of the cut network
        (:meth:`Network.from_node`; ``.start`` names the node).

    Returns
    -------
    Decomposition
        ``layers[n].a_h`` for cut nodes, ``layers[n].a_b`` for affine nodes, node-shaped,
        with channel-summed maps for conv-shaped nodes.

    Examples
    --------
    >>> import refbbp
    >>> from refbbp import data
    >>> net = refbbp.load(data.model_path())
    >>> images, labels = data.load_samples()
    >>> dec = refbbp.decompose(net, images[:4])
    >>> dec.check() <= 1e-9
    True
    """
    s = resolve_start(net, start)
    if s:
        return decompose(*start_input(net, x, s), target)
    lin = linearize(net, x, target)
    trace, grads = lin.trace, lin.grads
    batch = grads[0].shape[0]
    cuts = net.cut_nodes()
    cut_set = set(cuts)
    one = (lambda a: a) if trace.batched else (lambda a: a[0])
    layers = []
    for n, node in enumerate(net.nodes):
        shape = layer_shape(net, n)
        a_h = a_b = None
        if n in cut_set:
            a_h = one((trace.values[n] * grads[n]).reshape((batch,) + shape))
        if node.kind == "affine":
            a_b = one((trace.local_bias(n) * grads[n]).reshape((batch,) + shape))
        layers.append(LayerAttribution(index=n, name=node.name, op=node.op, kind=node.kind,
                                       shape=shape, is_cut=n in cut_set, a_h=a_h, a_b=a_b,
                                       batched=trace.batched))
    return Decomposition(layers=layers, cuts=cuts, value=lin.value, logits=lin.logits,
                         target=lin.target, linear=lin, batched=trace.batched)
