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

:data:`MODELS` are the small models every benchmark runs by default. The ImageNet-size
models of :data:`IMAGENET_MODELS` (``benchmarks/bench_imagenet.py``) are built only when
named: VGG-11 with BatchNorm and VGG-16 (torchvision's layer configurations "A" and
"D", without dropout, which is the identity in eval mode, and without the adaptive
average pooling, which is the identity at 224x224) and ResNet-50 (torchvision's
bottleneck v1.5: the stride on the 3x3 convolution), all 3x224x224 with 1000 classes,
written here in plain PyTorch (no torchvision) with He-normal weights, small random
biases and random BatchNorm statistics. ResNet-50 is not a sequence of layers, so it has
no :data:`SPECS` entry and needs PyTorch. :func:`cached_onnx` exports a model once into
a cache folder and reuses the file afterwards.
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

__all__ = ["MODELS", "IMAGENET_MODELS", "ALL_MODELS", "SPECS", "INPUT_SHAPES",
           "build", "cached_onnx", "torch_module", "have_torch"]

# Layers: ("conv", cin, cout, kernel, pad), ("bn", c), ("relu",), ("maxpool", k),
# ("flatten",), ("linear", fin, fout).


def _vgg(cfg, cin=3, bn=True):
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(("maxpool", 2))
        else:
            layers += [("conv", cin, v, 3, 1)] + ([("bn", v)] if bn else []) + [("relu",)]
            cin = v
    return layers


# torchvision's VGG configurations "A" (VGG-11) and "D" (VGG-16) and its classifier at
# 224x224 (7x7x512 features; dropout left out: the identity in eval mode).
_VGG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
_VGG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"]
_VGG_HEAD = [("flatten",), ("linear", 512 * 7 * 7, 4096), ("relu",),
             ("linear", 4096, 4096), ("relu",), ("linear", 4096, 1000)]


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
    # ImageNet VGG-11 with BatchNorm and VGG-16 (3x224x224, 1000 classes)
    "vgg11_bn_224": _vgg(_VGG_A) + _VGG_HEAD,
    "vgg16_224": _vgg(_VGG_D, bn=False) + _VGG_HEAD,
}
INPUT_SHAPES = {"mlp": (1, 28, 28), "stl10": (3, 96, 96), "vgg11_bn": (3, 32, 32),
                "vgg11_bn_224": (3, 224, 224), "vgg16_224": (3, 224, 224),
                "resnet50_224": (3, 224, 224)}
# The small models every benchmark runs by default, and the ImageNet-size ones.
MODELS = ("mlp", "stl10", "vgg11_bn")
IMAGENET_MODELS = ("vgg11_bn_224", "vgg16_224", "resnet50_224")
ALL_MODELS = MODELS + IMAGENET_MODELS
SEEDS = {"mlp": 0, "stl10": 1, "vgg11_bn": 2, "vgg11_bn_224": 3, "vgg16_224": 4,
         "resnet50_224": 5}
# Models initialised like torchvision's (He-normal weights, here with small random
# biases), so that activations keep their scale through depth; the small models keep
# PyTorch's default initialisation.
_HE_INIT = set(IMAGENET_MODELS)
# Bump when a model's definition or initialisation changes: cached_onnx's file names
# carry it, so a stale cached export is never reused.
MODEL_VERSION = 1


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
    if name not in INPUT_SHAPES:
        raise ValueError(f"unknown model {name!r}; expected one of {ALL_MODELS}")
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


def cached_onnx(name, cache_dir):
    """The ONNX file of model ``name`` in ``cache_dir``, exported (with PyTorch) only when
    it is not there yet.

    The file name carries :data:`MODEL_VERSION` and the opset; the export goes to a
    temporary name first, so an interrupted export leaves no truncated file behind.

    Returns
    -------
    path : str
    exported : bool
        Whether this call exported it (False: the cached file was reused).
    """
    if name not in INPUT_SHAPES:
        raise ValueError(f"unknown model {name!r}; expected one of {ALL_MODELS}")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(os.fspath(cache_dir), f"{name}-v{MODEL_VERSION}-opset17.onnx")
    if os.path.exists(path):
        return path, False
    if not have_torch():
        raise ImportError(f"exporting {name!r} needs PyTorch")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        export(torch_module(name), INPUT_SHAPES[name], tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path, True


# ------------------------------------------------------------------------- PyTorch
def _random_bn(c, gen):
    """BatchNorm2d(c) with random running statistics and affine parameters."""
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
        bn.weight.copy_(torch.randn(c, generator=gen) * 0.5 + 1.0)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return bn


def _he_init(module, gen, mode="fan_in"):
    """He-normal weights (ReLU gain) and small random biases for every Conv2d/Linear."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
                std = (2.0 / (fan_in if mode == "fan_in" else fan_out)) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module


def torch_module(name):
    """The eval-mode module of model ``name``, float32 (seeded; random BN statistics):
    an ``nn.Sequential`` built from :data:`SPECS`, or :class:`ResNet50`."""
    seed = SEEDS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    if name == "resnet50_224":
        return _he_init(ResNet50(gen), gen, mode="fan_out").eval()
    layers = []
    for layer in SPECS[name]:
        kind = layer[0]
        if kind == "conv":
            _, cin, cout, k, pad = layer
            layers.append(nn.Conv2d(cin, cout, k, padding=pad))
        elif kind == "bn":
            layers.append(_random_bn(layer[1], gen))
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
    module = nn.Sequential(*layers)
    if name in _HE_INIT:
        _he_init(module, gen)
    return module.eval()


if torch is not None:
    class Bottleneck(nn.Module):
        """torchvision's ResNet bottleneck v1.5: 1x1, 3x3 (carrying the stride), 1x1
        convolutions without bias, each followed by BatchNorm; a 1x1 convolution +
        BatchNorm on the shortcut when the shape changes; ReLU after the sum. The last
        BatchNorm's scale and shift are damped (x 0.2), else the random statistics make
        the activations grow ~2x per block."""

        expansion = 4

        def __init__(self, cin, width, stride, gen):
            super().__init__()
            cout = width * self.expansion
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = _random_bn(width, gen)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = _random_bn(width, gen)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = _random_bn(cout, gen)
            # Damp the residual branch (cf. torchvision's zero_init_residual) so that
            # the activations keep their scale over the 16 blocks.
            with torch.no_grad():
                self.bn3.weight.mul_(0.2)
                self.bn3.bias.mul_(0.2)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _random_bn(cout, gen))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        """torchvision's ResNet-50 (v1.5, 3x224x224, 1000 classes) in plain PyTorch:
        7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pooling, bottleneck stages of
        3, 4, 6, 3 blocks (widths 64, 128, 256, 512), global average pooling, a linear
        classifier."""

        def __init__(self, gen, layers=(3, 4, 6, 3), num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = _random_bn(64, gen)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            cin, stages = 64, []
            for i, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512))):
                stride = 1 if i == 0 else 2
                stage = []
                for j in range(blocks):
                    stage.append(Bottleneck(cin, width, stride if j == 0 else 1, gen))
                    cin = width * Bottleneck.expansion
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))


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
    if name not in SPECS:
        raise ValueError(f"model {name!r} is not a sequence of layers: it needs PyTorch")
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
