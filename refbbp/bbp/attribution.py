"""The result of bias backpropagation and its completeness checks (SPEC section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tolerance import TOLERANCE, relative_error

__all__ = ["Attribution", "Completeness", "Layer"]


@dataclass(eq=False)
class Layer:
    """BBp at one node (``return_layers=True``).

    Vectors are flat over the node's elements (reshape with ``shape``); with a batch of
    inputs each gains a leading batch axis.

    Attributes
    ----------
    index : int
        Position in ``network.nodes``.
    name, op, kind : str
        The node's name, op ("Conv", "Gemm", "MaxPool", ...) and kind
        ("input", "affine", "max").
    shape : tuple of int
        The node's output shape (as in the ONNX graph, batch dimension 1).
    is_cut : bool
        Whether every input-to-output path passes through the node (completeness
        ``sum(g * h) + sum(beta_in) = f(x)`` holds there).
    beta : ndarray, shape (size,)
        ``beta_n``, the node's total bias attribution: received plus own bias.
    beta_in : ndarray, shape (size,)
        ``beta_n^in``, what the node received from its consumers (SPEC 3.5).
    own : ndarray, shape (size,)
        ``g_n * b^x_n``, its own bias term (SPEC 3.1; zero for input and max nodes).
    g : ndarray, shape (size,)
        ``df/dh_n``.
    h : ndarray, shape (size,)
        The node's output value.
    bias_x : ndarray, shape (size,)
        Its local bias ``b^x_n = c * b + d``.
    fallback : float or ndarray, shape (batch,)
        Mass ``sum |beta_n[p]|`` over rows that took a fallback of SPEC 3.6.
    """

    index: int
    name: str
    op: str
    kind: str
    shape: tuple
    is_cut: bool
    beta: np.ndarray
    beta_in: np.ndarray
    own: np.ndarray
    g: np.ndarray
    h: np.ndarray
    bias_x: np.ndarray
    fallback: object


@dataclass(eq=False)
class Completeness:
    """Relative errors of the completeness identities (SPEC section 3), each
    ``|lhs - rhs| / scale`` with ``scale`` the sum of the absolute values of the terms
    added (SPEC section 2), maximised over a batch.

    Attributes
    ----------
    bias_x : float
        ``sum(beta) = b^x`` (eq. 12 at the input). Scale: ``sum |beta|`` plus the bias
        terms ``sum_n sum |g_n * b^x_n|`` that make up ``b^x``.
    total : float
        ``sum(w * x) + sum(beta) = f(x)``. Scale: ``sum |w * x| + sum |beta| +
        sum_n sum |g_n * b^x_n| + |f(x)|``.
    cuts : dict of int to float
        Per cut node n: ``sum(g_n * h_n) + sum(beta_n^in) = f(x)`` (eq. 9). Scale:
        ``sum |g_n * h_n| + sum |beta_n^in| + |f(x)|`` plus, for every node m after n,
        ``sum |g_m * b^x_m| + sum |beta_m|`` (the mass redistributed on the way down).
    """

    bias_x: float
    total: float
    cuts: dict = field(default_factory=dict)

    @property
    def worst(self):
        """The largest relative error of all identities."""
        return max([self.bias_x, self.total, *self.cuts.values()])

    def ok(self, tol=TOLERANCE):
        """Whether every identity holds within ``tol`` (default
        :data:`refbbp.tolerance.TOLERANCE`, 1e-9)."""
        return self.worst <= tol

    def __str__(self):
        cuts = ", ".join(f"{k}: {v:.1e}" for k, v in self.cuts.items())
        return f"Completeness(bias_x {self.bias_x:.1e}, total {self.total:.1e}, cuts {{{cuts}}})"


@dataclass(eq=False)
class Attribution:
    """Bias attribution of ``f(x) = w . x + b^x`` over the input (SPEC section 3).

    Shapes are for one input (``x`` of shape ``network.input_shape``); for a batch
    ``x`` of shape ``(batch, *input_shape)`` every array gains a leading batch axis and
    every scalar becomes a vector of shape (batch,).

    Attributes
    ----------
    beta : ndarray, shape input_shape
        The bias attribution: ``sum(beta) = b^x``.
    w : ndarray, shape input_shape
        ``df/dx``, the weights of the local linear model.
    grad_input : ndarray, shape input_shape
        ``w * x``, so that ``sum(grad_input) + sum(beta) = f(x)``.
    bias_x : float
        ``b^x``, the bias of the local linear model.
    value : float
        ``f(x) = v . logits``, the explained scalar.
    fallback : ndarray, shape (n_nodes,)
        Per node, the beta mass ``sum |beta_n[p]|`` over rows that took one of the
        fallbacks of SPEC 3.6 (no non-zero component; no structural non-zero). Zero in
        ordinary cases.
    fallback_total : float
        ``fallback.sum()``.
    layers : list of Layer or None
        Per node (in network order), when ``return_layers=True``.
    linear : LocalLinearModel
        The local linear model (forward trace, gradients ``g_n`` of every node).
    rule : str
        The rule's name.
    temperature : float
    backend : str
        "cython" or "numpy".
    n_threads : int or None
        Threads the kernel used (None for the numpy backend).
    timings : dict
        Seconds spent in each phase: "prepare" (per-node structures: built the first
        time a network is seen, checked against the matrices on every call),
        "forward" (the forward pass; with the NumPy backend also the gradients),
        "propagate" (with the Cython backend the one reverse pass that computes the
        gradients and BBp together; with the NumPy backend BBp alone); with the Cython
        backend also "nodes": seconds of each node's step (index to float; includes
        the Python work around the kernel).
    """

    beta: np.ndarray
    w: np.ndarray
    grad_input: np.ndarray
    bias_x: object
    value: object
    fallback: np.ndarray
    fallback_total: object
    layers: list
    linear: object
    rule: str
    temperature: float
    backend: str
    n_threads: object
    timings: dict
    # Per node, always with a batch axis: (batch, size).
    node_beta: list = field(repr=False, default=None)
    node_beta_in: list = field(repr=False, default=None)

    @property
    def network(self):
        return self.linear.network

    @property
    def start(self):
        """The node ``beta`` is over (SPEC section 8): index and name in the full
        network (index 0, the input, unless ``bbp`` was given a start)."""
        return self.linear.start

    def __repr__(self):
        shape = "x".join(map(str, np.shape(self.beta)))
        return (f"<Attribution from {self.start}: beta of shape {shape}, rule "
                f"{self.rule!r}, T = {self.temperature:g}, backend {self.backend!r}>")

    def completeness(self):
        """Relative errors of every completeness identity (see :class:`Completeness`).

        Returns
        -------
        Completeness
            ``.ok()`` tells whether all of them are within 1e-9 (SPEC section 2).
        """
        net, lin = self.network, self.linear
        trace, grads = lin.trace, lin.grads
        x = trace.values[0]
        n = len(net.nodes)
        bias_terms = [np.zeros(x.shape[0]) if net.nodes[k].kind != "affine" else
                      np.abs(grads[k] * trace.local_bias(k)).sum(1) for k in range(n)]
        beta_mass = [np.abs(b).sum(1) for b in self.node_beta]
        v = np.atleast_2d(lin.target) if not trace.batched else lin.target
        f = np.einsum("bo,bo->b", v, trace.logits)
        f_scale = np.abs(v * trace.logits).sum(1)
        beta = self.node_beta[0]
        wx = grads[0] * x
        b_x = np.atleast_1d(lin.bias_x)

        def rel(err, scale):
            return float(np.max(relative_error(err, scale)))

        # after[k] = sum over nodes m > k of (bias_terms[m] + beta_mass[m]): one suffix
        # sum over the nodes, so the whole check is linear in the number of nodes.
        mass = np.stack([t + m for t, m in zip(bias_terms, beta_mass)])   # (n, batch)
        after = np.zeros_like(mass)
        after[:-1] = np.cumsum(mass[:0:-1], axis=0)[::-1]
        all_bias = np.sum(bias_terms, axis=0)
        e_bias = rel(beta.sum(1) - b_x, beta_mass[0] + all_bias + np.abs(b_x))
        e_total = rel(wx.sum(1) + beta.sum(1) - f,
                      np.abs(wx).sum(1) + beta_mass[0] + all_bias + f_scale)
        cuts = {}
        for k in net.cut_nodes():
            gh = grads[k] * trace.values[k]
            bin_ = self.node_beta_in[k]
            cuts[k] = rel(gh.sum(1) + bin_.sum(1) - f,
                          np.abs(gh).sum(1) + np.abs(bin_).sum(1) + f_scale + after[k])
        return Completeness(e_bias, e_total, cuts)
