"""The logits a :class:`~refbbp.network.Network` explains, computed by onnxruntime.

refbbp's float64 forward pass is checked against onnxruntime (``refbbp verify``,
:func:`refbbp.io.verify.onnxruntime_logits`), and the pixel-removal evaluation scores
its perturbed images with it (:class:`refbbp.evaluate.OnnxScorer`). Both go through
:class:`RuntimeSession`, the one place that

* builds the onnxruntime session (CPU provider, warnings silenced);
* adds ``net.output_name`` as a graph output when it is not one (the loader dropped a
  final Softmax/LogSoftmax: the logits are an inner tensor of the ONNX graph);
* feeds the model's input correctly: float32, in batches of at most ``max_batch``, or
  one input at a time when the graph input has a fixed batch dimension or no batch
  axis at all.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["RuntimeSession"]


def _with_output(proto, name):
    """``proto`` itself if ``name`` is a graph output, else a copy that outputs it."""
    if name in [o.name for o in proto.graph.output]:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(
        name, onnx.TensorProto.FLOAT, None))
    return copy


class RuntimeSession:
    """An onnxruntime session returning the logits ``net`` explains.

    Parameters
    ----------
    model : str, path or onnx.ModelProto
        The ONNX model ``net`` was loaded from.
    net : Network
        The loaded model: gives the input name and shape, the explained tensor
        (``output_name``) and whether the graph input has a batch axis.
    max_batch : int, optional
        Largest batch sent to onnxruntime in one call (default 4096).

    Attributes
    ----------
    session : onnxruntime.InferenceSession
    input_name, output_name : str
        The graph input fed and the tensor returned (``net.output_name``).
    input_shape : tuple of int
        One input, without batch axis.
    batch_axis : bool
        Whether the graph input has a batch axis.
    fixed_batch : int or None
        A fixed batch dimension ``N > 1`` of a batch axis: inputs are run ``N`` at a
        time (the last group padded with repeats of its last input).
    one_at_a_time : bool
        True when the graph input has a fixed batch dimension of 1 or no batch axis:
        every input is then run on its own.
    max_batch : int
    n_outputs : int
        Number of logits per input.
    calls : int
        Number of ``session.run`` calls so far.
    scored : int
        Number of inputs scored so far.

    Notes
    -----
    Inputs are cast to float32, the model's type; the logits are returned as float64.

    Examples
    --------
    >>> import refbbp
    >>> from refbbp import data
    >>> net = refbbp.load(data.model_path())
    >>> images, labels = data.load_samples()
    >>> run = RuntimeSession(data.model_path(), net)
    >>> logits = run(images[:5])
    >>> logits.shape, logits.dtype
    ((5, 10), dtype('float64'))
    >>> bool(abs(logits - net.forward(images[:5])).max() < 1e-3)
    True
    >>> run.calls, run.scored
    (1, 5)
    """

    def __init__(self, model, net, max_batch=4096):
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        proto = _with_output(proto, net.output_name)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = net.input_name
        self.output_name = net.output_name
        self.input_shape = tuple(net.input_shape)
        self.batch_axis = bool(net.batch_axis)
        vin = next(i for i in self.session.get_inputs() if i.name == net.input_name)
        lead = vin.shape[0] if vin.shape else None
        # a fixed batch size N > 1 (a batch axis: refbbp.load found every op keeps the
        # elements apart) is fed N inputs at a time, the last group padded by repeats
        self.fixed_batch = (int(lead) if self.batch_axis and isinstance(lead, int) and lead > 1
                            else None)
        self.one_at_a_time = self.fixed_batch is None and (
            (not self.batch_axis) or isinstance(lead, int))
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self.n_outputs = int(net.n_outputs)
        self.calls = 0
        self.scored = 0

    def _run(self, feed):
        self.calls += 1
        return self.session.run([self.output_name], {self.input_name: feed})[0]

    def __call__(self, x):
        """The logits of a batch of inputs.

        Parameters
        ----------
        x : array_like, shape (n, *input_shape)

        Returns
        -------
        ndarray of float64, shape (n, n_outputs)
        """
        x32 = np.ascontiguousarray(x, dtype=np.float32).reshape((-1,) + self.input_shape)
        if self.fixed_batch is not None:
            k = self.fixed_batch
            out = []
            for a in range(0, len(x32), k):
                part = x32[a:a + k]
                feed = np.concatenate([part, np.repeat(part[-1:], k - len(part), axis=0)])
                out.append(self._run(feed).reshape(k, -1)[:len(part)])
        elif self.one_at_a_time:
            out = [self._run(xi[None] if self.batch_axis else xi).reshape(1, -1)
                   for xi in x32]
        else:
            parts = [x32[a:a + self.max_batch] for a in range(0, len(x32), self.max_batch)]
            out = [self._run(part).reshape(len(part), -1) for part in parts]
        self.scored += len(x32)
        if not out:
            return np.zeros((0, self.n_outputs))
        return np.concatenate(out).astype(np.float64)
