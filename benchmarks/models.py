"""Benchmark models: built with PyTorch (fixed seeds, random weights) and exported to ONNX.

Each model is a list of layers (:data:`SPECS`) turned into an ``nn.Sequential`` and
exported with the legacy TorchScript exporter (BatchNorm kept, with random running
statistics, so refbbp folds it), or, when PyTorch is not installed, written directly as an
ONNX graph with the same layers and NumPy random weights (the timings of refbbp and
onnxruntime do not depend on the weights' values; the PyTorch baseline is then absent).

Usage::

    from benchmarks.models import build, MODELS
    path, module, input_shape = build("vgg11_bn", out_dir)   # module is None without torch

``path`` is the ONNX file, ``module`` the eval-mode ``torch.nn.Module`` (float32) and
``input_shape`` the shape of one input without the batch dimension.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from refbbp._tables import text_table

try:
    import torch
    from torch import nn
except ImportError:  # the torch baseline is optional
    torch = None

__all__ = ["MODELS", "SPECS", "INPUT_SHAPES", "build", "have_torch"]

# Layers: ("conv", cin, cout, kernel, pad), ("bn", c), ("relu",), ("maxpool", k),
# ("flatten",), ("linear", fin, fout).


def _vgg(cfg, cin=3):
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(("maxpool", 2))
        else:
            layers += [("conv", cin, v, 3, 1), ("bn", v), ("relu",)]
            cin = v
    return layers


SPECS = {
    # MNIST-sized fully connected network 784-256-256-10
    "mlp": [("flatten",), ("linear", 784, 256), ("relu",), ("linear", 256, 256), ("relu",),
            ("linear", 256, 10)],
    # The BBp paper's STL-10 network (3x96x96)
    "stl10": [("conv", 3, 32, 3, 1), ("relu",), ("maxpool", 2),
              ("conv", 32, 64, 3, 1), ("relu",), ("maxpool", 2),
              ("conv", 64, 64, 3, 1), ("relu",), ("maxpool", 2),
              ("conv", 64, 128, 3, 1), ("relu",), ("maxpool", 2),
              ("conv", 128, 128, 3, 1), ("relu",),
              ("flatten",), ("linear", 128 * 6 * 6, 10)],
    # CIFAR VGG-11 with BatchNorm (3x32x32)
    "vgg11_bn": _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])
    + [("flatten",), ("linear", 512, 10)],
}
INPUT_SHAPES = {"mlp": (1, 28, 28), "stl10": (3, 96, 96), "vgg11_bn": (3, 32, 32)}
MODELS = tuple(SPECS)
SEEDS = {"mlp": 0, "stl10": 1, "vgg11_bn": 2}


def have_torch():
    return torch is not None


def build(name, out_dir, *, use_torch=None):
    """Build model ``name`` and write it to ``out_dir/name.onnx``.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`.
    out_dir : str or path-like
    use_torch : bool, optional
        Build with PyTorch (default when it is installed) or write the ONNX graph directly.

    Returns
    -------
    path : str
    module : torch.nn.Module or None
        Eval mode, float32; ``None`` when built without PyTorch.
    input_shape : tuple of int
        One input, without the batch dimension.
    """
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    if use_torch is None:
        use_torch = have_torch()
    if use_torch and not have_torch():
        raise ImportError("use_torch=True but PyTorch is not installed")
    shape = INPUT_SHAPES[name]
    path = os.path.join(os.fspath(out_dir), f"{name}.onnx")
    if use_torch:
        module = torch_module(name)
        export(module, shape, path)
        return path, module, shape
    onnx.save(onnx_model(name), path)
    return path, None, shape


# ------------------------------------------------------------------------- PyTorch
def torch_module(name):
    """The eval-mode ``nn.Sequential`` of model ``name`` (seeded; random BN statistics)."""
    seed = SEEDS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    layers = []
    for layer in SPECS[name]:
        kind = layer[0]
        if kind == "conv":
            _, cin, cout, k, pad = layer
            layers.append(nn.Conv2d(cin, cout, k, padding=pad))
        elif kind == "bn":
            bn = nn.BatchNorm2d(layer[1])
            with torch.no_grad():
                c = layer[1]
                bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                bn.weight.copy_(torch.randn(c, generator=gen) * 0.5 + 1.0)
                bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)
            layers.append(bn)
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(layer[1]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "linear":
            layers.append(nn.Linear(layer[1], layer[2]))
        else:
            raise ValueError(kind)
    return nn.Sequential(*layers).eval()


def export(module, shape, path, exporter="legacy"):
    """Export ``module`` for inputs of ``shape`` (dynamic batch) to ``path``.

    ``exporter="legacy"`` keeps BatchNormalization nodes (TrainingMode.PRESERVE) so that
    refbbp folds them; ``"dynamo"`` uses torch.export (needs onnxscript).
    """
    import warnings

    x = torch.zeros((2,) + tuple(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=18,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: batch},), verbose=False)
            prog.save(path, external_data=False)
        else:
            raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    return path


# ----------------------------------------------------------------- ONNX, no torch
def onnx_model(name):
    """Model ``name`` written directly as ONNX (NumPy random weights, PyTorch's default
    initialisation ranges), for machines without PyTorch."""
    rng = np.random.default_rng(SEEDS[name])
    shape = INPUT_SHAPES[name]
    nodes, inits = [], []
    cur = "input"

    def const(arr, nm):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), nm))
        return nm

    for i, layer in enumerate(SPECS[name]):
        kind, out = layer[0], f"t{i}"
        if kind == "conv":
            _, cin, cout, k, pad = layer
            bound = 1 / np.sqrt(cin * k * k)
            w = const(rng.uniform(-bound, bound, (cout, cin, k, k)), f"conv{i}.weight")
            b = const(rng.uniform(-bound, bound, cout), f"conv{i}.bias")
            nodes.append(helper.make_node("Conv", [cur, w, b], [out], kernel_shape=[k, k],
                                          pads=[pad] * 4))
        elif kind == "bn":
            c = layer[1]
            ins = [const(rng.normal(1.0, 0.5, c), f"bn{i}.weight"),
                   const(rng.normal(0.0, 0.3, c), f"bn{i}.bias"),
                   const(rng.normal(0.0, 0.5, c), f"bn{i}.running_mean"),
                   const(rng.uniform(0.25, 1.75, c), f"bn{i}.running_var")]
            nodes.append(helper.make_node("BatchNormalization", [cur] + ins, [out],
                                          epsilon=1e-5))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif kind == "maxpool":
            k = layer[1]
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[k, k],
                                          strides=[k, k]))
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif kind == "linear":
            fin, fout = layer[1], layer[2]
            bound = 1 / np.sqrt(fin)
            w = const(rng.uniform(-bound, bound, (fout, fin)), f"fc{i}.weight")
            b = const(rng.uniform(-bound, bound, fout), f"fc{i}.bias")
            nodes.append(helper.make_node("Gemm", [cur, w, b], [out], transB=1))
        cur = out
    nodes[-1].output[0] = "logits"
    n_out = SPECS[name][-1][2]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                    ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)  # what opset 17 needs; onnxruntime may lag onnx
    onnx.checker.check_model(model)
    return model


def machine_header():
    """Two lines for a benchmark table's header: the machine (CPU, cores, Python, load)
    and the versions of the libraries compared."""
    import os
    import platform

    import onnxruntime as ort
    import scipy

    import refbbp

    versions = [f"refbbp {refbbp.__version__}", f"numpy {np.__version__}",
                f"scipy {scipy.__version__}", f"onnx {onnx.__version__}",
                f"onnxruntime {ort.__version__}",
                f"torch {torch.__version__}" if torch is not None else "torch not installed"]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = (", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
            if hasattr(os, "getloadavg") else "")
    return (f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()} "
            f"on {platform.system()}{load}\n" + ", ".join(versions))


def render_table(head, body):
    """A right-aligned text table: header, a rule, one line per row of strings."""
    return text_table(body, head, align="right", sep=" | ")
