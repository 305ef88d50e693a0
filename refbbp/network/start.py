"""Explaining from a node other than the input (SPEC section 8).

Every quantity of SPEC sections 2-6 may be computed with a chosen node ``s`` in place of
the input: the network is cut at ``s``, ``s``'s output value ``z`` (from the forward pass
at ``x``) is the "input", and ``w``, ``b^x`` and ``beta`` are over ``s``'s elements;
``b^x`` then leaves out every bias upstream of ``s``.

One mechanism serves every entry point: :func:`cut_network` builds the *cut network*, a
:class:`~refbbp.Network` whose input node stands for ``s`` and whose other nodes are the
nodes after ``s`` (their matrices, biases and activations shared with the full network),
and :func:`start_input` evaluates the full network up to ``s``. ``linearize``, ``bbp``,
``decompose`` and the bias study then run unchanged on the cut network at ``z``; the
cut network's :attr:`~refbbp.Network.start` names ``s`` (index and name in the full
network), and so does every result computed from it.

``s`` must be a *cut*: a node every input-to-output path passes through (else part of
the input would reach the output around ``s``, and ``z`` would not determine ``f``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .nodes import live_nodes

__all__ = ["NORMALISATION", "Start", "cut_network", "from_start", "normalisation_chain",
           "normalisation_node", "resolve_start", "sample_shape", "start_input"]

#: The alias of the node after the input normalisation (:func:`normalisation_node`).
NORMALISATION = "after-normalisation"


@dataclass(frozen=True)
class Start:
    """The node a result is computed from (SPEC section 8).

    Attributes
    ----------
    index : int
        Index of the node in the full network's ``nodes`` (0: the input).
    name : str
        Its name.
    """

    index: int
    name: str

    def __str__(self):
        if self.index == 0:
            return f"the input ({self.name!r})"
        return f"node {self.index} ({self.name!r})"


def sample_shape(net, n):
    """Shape of one sample of node ``n``: ``node.shape`` without its batch dimension.

    Parameters
    ----------
    net : Network
    n : int
        Node index.

    Returns
    -------
    tuple of int
        ``net.input_shape`` for the input node; otherwise ``node.shape[1:]`` when the
        model has a batch axis and the node's leading dimension is that batch axis (1),
        else ``node.shape``.
    """
    if n == 0:
        return tuple(net.input_shape)
    shape = tuple(net.nodes[n].shape)
    if net.batch_axis and len(shape) >= 1 and shape[0] == 1:
        return shape[1:]
    return shape


def _is_elementwise(node, src, size):
    """Whether ``node`` is ``y = a * u + b`` of its single input ``src`` (of ``size``
    elements), without activation: a square weight matrix with nothing off its diagonal."""
    if (node.kind != "affine" or list(node.inputs) != [src] or node.activation is not None
            or node.size != size):
        return False
    w = node.weights[0]
    if hasattr(w, "to_csr"):                       # a window matrix: unroll if small
        if w.nnz > node.size:
            return False
        w = w.to_csr()
    if hasattr(w, "tocoo"):
        coo = w.tocoo()
        return not np.any(coo.data[coo.row != coo.col])
    w = np.asarray(w)
    return not np.any(w[~np.eye(node.size, dtype=bool)])


def normalisation_chain(net):
    """The nodes of the input normalisation, in order (:func:`normalisation_node`'s
    definition; empty when the input's reader is not an elementwise affine map).

    Parameters
    ----------
    net : Network

    Returns
    -------
    list of int
    """
    consumers = net.consumers()
    chain, k = [], 0
    while len(consumers[k]) == 1 and _is_elementwise(net.nodes[consumers[k][0]], k,
                                                      net.nodes[k].size):
        k = consumers[k][0]
        chain.append(k)
    return chain


def normalisation_node(net):
    """The node ``"after-normalisation"`` names: the output of the input normalisation.

    Definition: starting from the input, follow the chain of nodes each of which is the
    only reader of the one before it and is an *elementwise affine map* of it,
    ``y = a * u + b`` (a square matrix with nothing off its diagonal, no activation) --
    a per-channel ``(x - mean) / std``, written as Sub/Div, Mul/Add or a BatchNorm
    reading the input, or any other elementwise scale and shift. The chain ends at the
    first node that is not (a convolution, a dense layer, an activation, ...). Its last
    node is the normalisation's output; being the only reader of the node before it at
    every step, it is a cut.

    Parameters
    ----------
    net : Network

    Returns
    -------
    int
        Its index.

    Raises
    ------
    ValueError
        The model has no such node: the message names what reads the input and why it
        is not a normalisation.
    """
    chain = normalisation_chain(net)
    if chain:
        return chain[-1]
    readers = net.consumers()[0]
    if len(readers) != 1:
        why = f"the input is read by {len(readers)} nodes ({', '.join(map(str, readers))})"
    else:
        node = net.nodes[readers[0]]
        why = (f"the input's reader, node {readers[0]} ({node.name!r}, {node.op}"
               + (f" + {node.activation.name}" if node.activation is not None else "")
               + "), is not an elementwise affine map y = a * x + b without activation")
    raise ValueError(f"start={NORMALISATION!r}: the model has no input normalisation "
                     f"(a per-channel (x - mean) / std before the first layer): {why}; give "
                     f"a node index or name instead")


def resolve_start(net, start):
    """The node index a ``start`` argument names, checked to be a cut.

    Parameters
    ----------
    net : Network
    start : None, int, or str
        ``None``, ``0`` or ``"input"``: the input itself. An int: a node index. A str:
        ``"after-normalisation"`` (:func:`normalisation_node`), a node's name, or a node
        index written out (``"1"``, as the command line gives it).

    Returns
    -------
    int

    Raises
    ------
    TypeError
        ``start`` is neither None, an int nor a str.
    ValueError
        The index is out of range, no node (or more than one) has that name, the model
        has no normalisation, or the node is not a cut: the message names the node and
        why.
    """
    if start is None:
        return 0
    n = len(net.nodes)
    if isinstance(start, str):
        if start == "input":
            return 0
        if start == NORMALISATION:
            return normalisation_node(net)
        named = [k for k, node in enumerate(net.nodes) if node.name == start]
        if len(named) > 1:
            raise ValueError(f"start={start!r}: {len(named)} nodes have that name "
                             f"({', '.join(map(str, named))}); give the node index")
        if named:
            start = named[0]
        elif start.strip().lstrip("-").isdigit():
            start = int(start)
        else:
            raise ValueError(
                f"start={start!r}: no node has that name; expected 'input', "
                f"{NORMALISATION!r}, a node index in [0, {n}) or one of the node names "
                f"(see Network.summary())")
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"start must be None, a node index or a node name (or "
                        f"{NORMALISATION!r}), got {type(start).__name__}")
    s = int(start)
    if not 0 <= s < n:
        raise ValueError(f"start={s}: node index out of range [0, {n})")
    if s not in net.cut_nodes():
        raise ValueError(f"start={s}: {_why_not_a_cut(net, s)}; a start node must be a cut, "
                         f"a node every input-to-output path passes through (cuts: "
                         f"{', '.join(map(str, net.cut_nodes()))})")
    return s


def _why_not_a_cut(net, s):
    name = net.nodes[s].name
    cut_free = [(i, k) for k, node in enumerate(net.nodes) for i in node.inputs
                if i < s < k]
    if cut_free:
        i, k = cut_free[0]
        return (f"node {s} ({name!r}) is not a cut: the edge from node {i} to node {k} "
                f"bypasses it")
    return f"node {s} ({name!r}) is not a cut: the output does not depend on it"


def cut_network(net, s):
    """The network cut at node ``s`` (SPEC section 8): its input is ``s``'s output.

    Node 0 of the result is an input node of ``s``'s shape and name; the other nodes are
    the nodes of ``net`` after ``s`` that the output depends on, in order, sharing their
    matrices, biases, activations and windows with ``net`` (edits in place are seen by
    both). The result is cached on ``net`` (rebuilt when a node's matrices, bias,
    activation or window object is replaced).

    Parameters
    ----------
    net : Network
    s : int
        A cut node (:func:`resolve_start` checks it).

    Returns
    -------
    Network
        ``net`` itself for ``s = 0``. ``.start`` names ``s``; ``.origin[k]`` is the index
        in ``net`` of its node ``k``.
    """
    if s == 0:
        return net
    cache = net.__dict__.setdefault("_cut_networks", {})
    live = live_nodes(net.nodes, net.output)
    keep = [k for k in range(s + 1, len(net.nodes)) if live[k]]
    # What the cut network was built from, compared by identity (edits in place are
    # shared: the cut network reads the same arrays).
    key = [net.output, len(net.nodes)]
    for k in [s] + keep:
        node = net.nodes[k]
        key += [node, node.bias, node.activation, node.window, *node.weights, *node.inputs]
    hit = cache.get(s)
    if hit is not None and len(hit[0]) == len(key) and all(
            a is b or (type(a) is type(b) is int and a == b) for a, b in zip(hit[0], key)):
        return hit[1]
    where = {s: 0, **{k: j + 1 for j, k in enumerate(keep)}}
    top = net.nodes[s]
    nodes = [type(top)(top.name, "input", "Input", top.shape)]
    for k in keep:
        node = net.nodes[k]
        copy = dataclasses.replace(node, inputs=[where[i] for i in node.inputs])
        if "weights_t" in node.__dict__:
            copy.__dict__["weights_t"] = node.__dict__["weights_t"]    # share the cache
        nodes.append(copy)
    start = Start(s, top.name)
    sub = type(net)(nodes, where[net.output], sample_shape(net, s), input_name=top.name,
                    output_name=net.output_name, graph_output=net.graph_output,
                    batch_axis=net.batch_axis,
                    notices=list(net.notices) + [f"cut at {start}: its output is the input"],
                    source=net.source)
    sub.start = start
    sub.origin = [s] + keep
    cache[s] = (key, sub)
    return sub


def start_input(net, x, s):
    """The cut network at ``s`` and its input: ``s``'s output at ``x``.

    Parameters
    ----------
    net : Network
    x : array_like, shape input_shape or (batch, *input_shape)
    s : int
        A cut node.

    Returns
    -------
    sub : Network
        :func:`cut_network` of ``net`` at ``s``.
    z : ndarray, shape sub.input_shape or (batch, *sub.input_shape)
        Batched if ``x`` is.
    """
    sub = cut_network(net, s)
    trace = net.trace(x, until=s)
    z = trace.values[s].reshape((-1,) + sub.input_shape)
    return sub, (z if trace.batched else z[0])


def from_start(net, x, start):
    """The network and inputs to explain with ``start`` (any form :func:`resolve_start`
    takes): the cut network and the start node's output at ``x``, or ``net`` and ``x``
    themselves for the input."""
    s = resolve_start(net, start)
    return start_input(net, x, s) if s else (net, x)
