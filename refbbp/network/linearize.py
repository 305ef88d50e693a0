"""The local linear model ``f(x) = w . x + b^x`` (SPEC section 2, BBp paper eq. 3-5).

The reverse pass propagates ``g_n = df/dh_n`` through the local maps
``A_i^x = diag(c) A_i``: ``g_u += (A_i^x)^T g_h`` (CSR transposes for sparse layers),
and a max node sends ``g`` to the element it selected. The bias is accumulated as
``b^x = sum_n g_n . b^x_n`` with ``b^x_n = c * b + d`` (the ``prod W^x b^x`` terms of
eq. 11), so ``w . x + b^x = f(x)`` is a real check of the machinery, not a definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputShapeError
from ..tolerance import relative_error
from .start import resolve_start, start_input
from .trace import Trace, matmul_rows

__all__ = ["LocalLinearModel", "linearize", "local_linear_model", "reverse", "target_vectors"]


@dataclass(eq=False)
class LocalLinearModel:
    """The local linear model of a network at ``x`` for ``f = v . logits``.

    Shapes are per input; with a batch, each array gains a leading batch axis.

    With a start node ``s`` (SPEC section 8) the "input" is ``s``'s output ``z``:
    ``w = df/dz`` has ``s``'s shape, ``b^x`` leaves out the biases upstream of ``s``,
    and ``network`` is the cut network (:meth:`Network.from_node`).

    Attributes
    ----------
    w : ndarray, shape input_shape
        ``df/dx``, the gradient.
    bias_x : ndarray, shape ()
        ``b^x = sum_n g_n . b^x_n``, the local bias (a node's own constant is ``node.bias``).
    value : ndarray, shape ()
        ``f(x) = v . logits``.
    logits : ndarray, shape (n_outputs,)
    target : ndarray, shape (n_outputs,)
        The vector ``v`` that was explained.
    trace : Trace
        The forward pass (node values and activation pattern).
    grads : list of ndarray, shape (batch, node.size)
        ``g_n = df/dh_n`` of every node (batch axis always present).
    """

    w: np.ndarray
    bias_x: np.ndarray
    value: np.ndarray
    logits: np.ndarray
    target: np.ndarray
    trace: Trace
    grads: list

    @property
    def network(self):
        return self.trace.network

    @property
    def start(self):
        """The node the model is over (:class:`~refbbp.network.start.Start`: index and
        name in the full network; index 0, the input, unless a start was given)."""
        return self.network.start

    def __repr__(self):
        shape = "x".join(map(str, np.shape(self.w)))
        return (f"<LocalLinearModel from {self.start}: w of shape {shape}, "
                f"f = {np.array2string(np.asarray(self.value), precision=6)}, "
                f"b^x = {np.array2string(np.asarray(self.bias_x), precision=6)}>")

    @property
    def pattern(self):
        """The activation pattern: per node, the piece of every element (or ``None``)."""
        return self.trace.pieces

    def bias_x_all(self):
        """The local bias of every output at once: the network with its pattern frozen,
        evaluated at input 0 (SPEC section 2). Shape (n_outputs,) or (batch, n_outputs)."""
        b = self.network.frozen_forward(self.trace, 0.0)
        return b if self.trace.batched else b[0]

    def node_bias_terms(self):
        """``g_n * b^x_n`` for every node (batch, size): where the bias comes from."""
        return [self.grads[n] * self.trace.local_bias(n) for n in range(len(self.grads))]

    def check(self):
        """Largest ``|w . x + b^x - f(x)| / scale`` over the batch (SPEC section 2)."""
        x = self.trace.values[0]
        w = self.grads[0]
        terms = [np.abs(w * x).sum(1)] + [np.abs(t).sum(1) for t in self.node_bias_terms()]
        scale = np.sum(terms, axis=0) + np.abs(np.atleast_1d(self.value))
        err = np.abs((w * x).sum(1) + np.atleast_1d(self.bias_x) - np.atleast_1d(self.value))
        return float(np.max(relative_error(err, scale)))


def target_vectors(logits, target, n_outputs):
    """Turn a ``target`` into one vector ``v`` over the outputs per input.

    Parameters
    ----------
    logits : ndarray, shape (batch, n_outputs)
    target : None, "pred", int, sequence of int (one per input), or array of shape
        (n_outputs,) or (batch, n_outputs)
        ``None`` and ``"pred"`` explain the predicted class; an int the logit of that
        class; a vector any linear combination of logits (e.g. top-1 minus top-2).

    Returns
    -------
    ndarray, shape (batch, n_outputs)
    """
    batch = logits.shape[0]
    if target is None or (isinstance(target, str) and target == "pred"):
        cls = np.argmax(logits, axis=1)
    elif isinstance(target, str) and target == "top2":
        if n_outputs < 2:
            raise ValueError(f"target 'top2' needs at least 2 outputs; the network has "
                             f"{n_outputs}")
        order = np.argsort(-logits, axis=1, kind="stable")
        v = np.zeros_like(logits)
        v[np.arange(batch), order[:, 0]] = 1.0
        v[np.arange(batch), order[:, 1]] -= 1.0
        return v
    elif isinstance(target, str):
        raise ValueError(f"target {target!r} not understood: expected None, 'pred', 'top2', "
                         "a class index or a vector over the outputs")
    else:
        t = np.asarray(target)
        if t.dtype.kind in "iu" and t.shape in ((), (batch,)):
            cls = np.broadcast_to(t, (batch,))  # class indices: integers
        elif t.dtype.kind == "f" and t.shape in ((n_outputs,), (batch, n_outputs)):
            if not np.all(np.isfinite(t)):
                raise InputShapeError("target vector contains NaN or infinite values")
            return np.broadcast_to(t.astype(np.float64), (batch, n_outputs)).copy()
        else:
            raise InputShapeError(
                f"target of shape {t.shape} and dtype {t.dtype} not understood: expected an "
                f"integer class index (or one per input: {batch}), or a float vector of "
                f"{n_outputs} weights over the outputs")
        if np.any(cls < 0) or np.any(cls >= n_outputs):
            raise InputShapeError(f"target class {cls} out of range [0, {n_outputs})")
    v = np.zeros((batch, n_outputs))
    v[np.arange(batch), cls] = 1.0
    return v


def reverse(network, trace, v, *, grads=None, top=None):
    """``g_n = df/dh_n`` for every node, given ``v = df/dlogits`` (batch, n_outputs).

    With ``grads`` (one array per node, already seeded) and ``top``, ``v`` is ignored
    and the pass runs from node ``top`` down: the gradient of any linear function of
    the nodes up to ``top``."""
    nodes = network.nodes
    if grads is None:
        grads = [np.zeros_like(val) for val in trace.values]
        grads[network.output] += v
    top = len(nodes) - 1 if top is None else top
    for k in range(top, 0, -1):
        node, g = nodes[k], grads[k]
        if node.kind == "max":
            u = grads[node.inputs[0]]
            rows = np.arange(u.shape[0])[:, None] * u.shape[1]
            np.add.at(u.reshape(-1), (rows + trace.selected[k]).ravel(), g.ravel())
            continue
        cd = trace.slopes_offsets(k)
        gy = g if cd is None else g * cd[0]
        for i, wt in zip(node.inputs, node.weights_t):
            grads[i] += matmul_rows(gy, wt)
    return grads


def linearize(network, x, target=None, start=None):
    """The local linear model of ``network`` at ``x`` (SPEC section 2).

    Parameters
    ----------
    network : Network
    x : array_like, shape input_shape or (batch, *input_shape)
    target : None, "pred", "top2", int, sequence of int, or array
        What to explain: by default the predicted class (see :func:`target_vectors`).
    start : None, int or str, optional
        Explain from this node instead of the input (SPEC section 8): a cut node's index
        or name, or ``"after-normalisation"`` (the output of the input normalisation).
        The model is then ``f = w . z + b^z`` over the node's output ``z`` at ``x``.

    Returns
    -------
    LocalLinearModel
        ``.start`` names the node it is over.

    Raises
    ------
    ValueError
        ``start`` names no node or a node that is not a cut.
    """
    s = resolve_start(network, start)
    if s:
        return linearize(*start_input(network, x, s), target)
    trace = network.trace(x)
    v = target_vectors(trace.logits, target, network.n_outputs)
    return local_linear_model(network, trace, v, reverse(network, trace, v))


def local_linear_model(network, trace, v, grads):
    """The :class:`LocalLinearModel` of a forward ``trace`` and the gradients ``grads``
    of ``f = v . logits`` (from :func:`reverse`, or the BBp kernel's fused pass):
    ``b^x = sum_n g_n . b^x_n`` is accumulated here."""
    bias_x = np.zeros(v.shape[0])
    for n in range(1, len(network.nodes)):
        if network.nodes[n].kind == "affine":
            bias_x += np.einsum("bp,bp->b", grads[n], trace.local_bias(n))
    value = np.einsum("bo,bo->b", v, trace.logits)
    w = grads[0].reshape((-1,) + network.input_shape)
    one = (lambda a: a) if trace.batched else (lambda a: a[0])
    return LocalLinearModel(w=one(w), bias_x=one(bias_x), value=one(value),
                            logits=one(trace.logits), target=one(v), trace=trace, grads=grads)
