"""The PyTorch baselines the BBp benchmarks compare refbbp with (``bench_bbp.py``,
``bench_imagenet.py``): BBp written the way a user would, vectorised in PyTorch float64
(``user_bbp``), and a forward + gradient pass (``torch_grad_pass``).

Needs PyTorch; refbbp itself never imports it.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

__all__ = ["user_bbp", "torch_grad_pass"]


def _fold_bn(w, b, bns):
    for bn in bns:
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = w * s.view(-1, *[1] * (w.dim() - 1))
        b = (b - bn.running_mean) * s + bn.bias
    return w.detach(), b.detach()


def _alpha(kappa, bx, h, rule, T, dim):
    """softmax(s / T) over the non-zero components along ``dim`` (0 where none)."""
    nz = kappa != 0
    if rule == "sign":
        s = -torch.sign(bx) * kappa
    else:
        n = nz.sum(dim, keepdim=True).clamp(min=1)
        s = (h / n - kappa).abs()
    s = s.masked_fill(~nz, -float("inf"))
    return torch.softmax(s / T, dim=dim).nan_to_num(0.0)


def _blocks(n, per_item, max_block_bytes, min_step=1):
    """Slices of ``range(n)`` whose float64 blocks of ``per_item`` elements each stay
    within ``max_block_bytes`` (one slice: everything, when it is None), at least
    ``min_step`` items each."""
    step = n if max_block_bytes is None else max(min_step, int(max_block_bytes //
                                                                (8 * per_item)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def user_bbp(module, x, rule="sign", T=1.0, target=None, max_block_bytes=None):
    """BBp for an ``nn.Sequential`` of Conv2d/BatchNorm2d/ReLU/MaxPool2d/Flatten/Linear, as
    a user would write it in PyTorch (float64): hooks-free forward keeping every
    activation, autograd for the gradients, then, from the output back, each layer's
    components with ``unfold``, a masked softmax, and the messages folded back with
    ``fold``. MaxPool sends beta to the selected element (``return_indices``).

    Parameters
    ----------
    module : nn.Sequential
        float64 (``module.double()``).
    x : ndarray, shape of one input (no batch axis)
    rule : {"sign", "deviation"}
    T : float
        The temperature.
    target : int, optional
        The explained logit (default: the predicted class).
    max_block_bytes : int, optional
        Bound on each block of components ``kappa``: a dense layer's (out, in) array is
        formed a block of rows at a time, a convolution's (out channels, window,
        positions) array a block of channels at a time, or, when one channel is larger
        than the bound, a block of (at least 256) positions of one channel at a time; the
        blocks' messages are summed. Default: the whole layer at once (an ImageNet-size
        convolution's components take tens of GB). Blocks that fit in the CPU's caches
        (a few MiB) are several times faster than the whole layer at once.

    Returns
    -------
    beta : ndarray, shape x.shape
    seconds : float
        Time of the distribution alone (after the forward pass and the gradients).

    The fallbacks of SPEC 3.6 (rows without a non-zero component) are not handled: such
    a row's mass is dropped. Callers compare with refbbp only when refbbp reported no
    fallback (``Attribution.fallback_total == 0``).
    """
    layers = list(module)
    xs = torch.as_tensor(x, dtype=torch.float64)[None].requires_grad_(True)
    outs = [xs]
    for layer in layers:
        outs.append(layer(outs[-1]))
        outs[-1].retain_grad()
    logits = outs[-1]
    logits[0, int(logits.argmax()) if target is None else int(target)].backward()
    grads = [o.grad for o in outs]
    vals = [o.detach() for o in outs]
    t0 = time.perf_counter()
    with torch.no_grad():
        beta = _distribute(layers, vals, grads, rule, T, max_block_bytes)
    return beta[0].numpy(), time.perf_counter() - t0


def _distribute(layers, vals, grads, rule, T, max_block_bytes):
    beta = None
    i = len(layers)
    while i > 0:
        layer = layers[i - 1]
        if isinstance(layer, torch.nn.Flatten):
            beta = beta.reshape(vals[i - 1].shape)
            i -= 1
            continue
        if isinstance(layer, torch.nn.MaxPool2d):
            u = vals[i - 1]
            _, idx = F.max_pool2d(u, layer.kernel_size, return_indices=True)
            flat = torch.zeros_like(u).flatten(2)
            flat.scatter_add_(2, idx.flatten(2), beta.flatten(2))
            beta = flat.reshape(u.shape)
            i -= 1
            continue
        # An affine node: [Conv2d|Linear] [BatchNorm2d]* [ReLU] ending at layer i - 1.
        relu = isinstance(layer, torch.nn.ReLU)
        j = i - 1 if relu else i
        first = j
        while not isinstance(layers[first - 1], (torch.nn.Conv2d, torch.nn.Linear)):
            first -= 1
        aff = layers[first - 1]
        w, b = _fold_bn(aff.weight, aff.bias, layers[first:j])
        u, h, g = vals[first - 1], vals[i], grads[i]
        c = (h > 0).double() if relu else torch.ones_like(h)
        bx = c * b.view(1, -1, *[1] * (h.dim() - 2))
        beta = g * bx if beta is None else beta + g * bx            # own bias
        if isinstance(aff, torch.nn.Conv2d):
            cols = F.unfold(u, aff.kernel_size, padding=aff.padding)[0]   # (K, L)
            wf = w.reshape(w.shape[0], -1)                                 # (O, K)
            cf, bxf, hf, bf = (t.reshape(wf.shape[0], 1, -1) for t in (c, bx, h, beta))
            k, n_pos = cols.shape
            pos = _blocks(n_pos, k, max_block_bytes, min_step=256)
            msg = torch.zeros_like(cols) if len(pos) > 1 else None
            for oc in _blocks(wf.shape[0], k * pos[0].stop, max_block_bytes):
                for sl in pos:
                    kappa = wf[oc, :, None] * cols[None, :, sl] * cf[oc, :, sl]  # (o, K, l)
                    alpha = _alpha(kappa, bxf[oc, :, sl], hf[oc, :, sl], rule, T, 1)
                    part = (alpha * bf[oc, :, sl]).sum(0)                       # (K, l)
                    if msg is None:
                        msg = part
                    else:
                        msg[:, sl] += part
            beta = F.fold(msg[None], u.shape[2:], aff.kernel_size, padding=aff.padding)
        else:
            uf, cf, bxf, hf, bf = (t.reshape(-1, 1) for t in (u, c, bx, h, beta))
            out = None
            for sl in _blocks(w.shape[0], w.shape[1], max_block_bytes):
                kappa = w[sl] * uf.T * cf[sl]                              # (o, I)
                alpha = _alpha(kappa, bxf[sl], hf[sl], rule, T, 1)
                part = (alpha * bf[sl]).sum(0)
                out = part if out is None else out + part
            beta = out.reshape(u.shape)
        i = first - 1
    return beta


def torch_grad_pass(module, x, target):
    """Forward + backward for one input: the gradient of logit ``target`` w.r.t. x."""
    xt = x.clone().requires_grad_(True)
    out = module(xt[None])
    out[0, target].backward()
    return xt.grad
