"""Scoring perturbed images: the logits the removal scans compare with the class ``k``.

An ONNX model is scored by onnxruntime (:class:`OnnxScorer`, one session per model, in
batches), as the companion paper's evaluation does; a :class:`~refbbp.network.Network`
given on its own is scored by its float64 forward pass; any callable
``score(batch) -> logits`` may be given instead.
"""

from __future__ import annotations

import os

import onnx

from ..network.graph import Network
from ..onnx import load
from ..onnx.runtime import RuntimeSession

__all__ = ["OnnxScorer", "scorer_for"]


class OnnxScorer(RuntimeSession):
    """Logits of perturbed inputs from one onnxruntime session.

    A :class:`~refbbp.onnx.runtime.RuntimeSession`: ``scorer(batch)`` returns float64
    logits ``(n, n_outputs)``; ``calls`` and ``scored`` count the onnxruntime calls and
    the inputs scored.

    Parameters
    ----------
    model : str, path or onnx.ModelProto
    net : Network
        The loaded model (gives the input name, the explained tensor and the shapes).
        Its ``output_name`` is added as a graph output if a final Softmax was dropped.
    max_batch : int
        Largest batch sent to onnxruntime at once.

    Notes
    -----
    Inputs are cast to float32 (the model's type). A model whose input has a fixed batch
    dimension, or none, is run one input at a time.
    """


def scorer_for(model, net=None, scorer=None, max_batch=4096):
    """The network, the scorer and the name of a model to evaluate.

    Parameters
    ----------
    model : str, path, onnx.ModelProto or Network
        A path or ModelProto is loaded with :func:`refbbp.load` (unless ``net`` is
        given) and scored by onnxruntime (:class:`OnnxScorer`); a Network is scored by
        its own float64 forward pass.
    net : Network, optional
        The loaded model, if already at hand.
    scorer : callable, optional
        ``scorer(batch) -> logits``, used instead of the default.
    max_batch : int
        Largest batch sent to onnxruntime at once.

    Returns
    -------
    net : Network
    score : callable
        ``score(batch) -> logits``, batch (b, *input_shape) -> (b, n_outputs).
    name : str
        The model's file name, ``"<ModelProto>"`` or ``"<Network>"``.
    """
    if isinstance(model, Network):
        return model, (scorer if scorer is not None else model.forward), "<Network>"
    if net is None:
        net = load(model)
    score = scorer if scorer is not None else OnnxScorer(model, net, max_batch)
    name = ("<ModelProto>" if isinstance(model, onnx.ModelProto)
            else os.path.basename(str(model)))
    return net, score, name
