"""Golden float64 outputs ("oracle files") and their comparison.

An oracle file is a NumPy ``.npz`` archive. Every field is float64 and carries a leading
axis over the ``n`` inputs. Another implementation produces a *candidate* file with the
same field names for the same ``x`` and compares it with :func:`compare` (or
``refbbp compare``). The fields (all defined in SPEC.md):

``meta``
    0-d string: JSON with ``format`` ("refbbp-oracle"), ``format_version`` (2),
    ``refbbp_version``, ``model`` (file name and sha256 of the ONNX file), ``input_shape``,
    ``start`` (index and name of the node explained from, SPEC 8: node 0, the input,
    unless the network was cut there; then ``x`` holds that node's output),
    ``target`` (as requested), ``rules``, ``temperatures`` and ``fields`` (this list).
``x``            (n, *input_shape): the inputs.
``logits``       (n, n_outputs): the network's outputs in float64 (SPEC 2).
``target``       (n, n_outputs): the vector ``v`` explained, ``f = v . logits``.
``value``        (n,): ``f(x)``.
``w``            (n, *input_shape): ``df/dx``.
``bias_x``       (n,): ``b^x = f(x) - w . x``, accumulated as ``sum_n g_n . b^x_n``.
``bias_x_all``   (n, n_outputs): ``b^x`` of every output (pattern frozen, input 0).
``beta/<rule>/T=<T>``  (n, *input_shape): the BBp bias attribution (SPEC 3) for
    each rule ("sign", "deviation") and temperature (``T=1.0``, ``T=0.0``, ``T=inf``).
With layers (``--layers``), for every node ``k`` of the network (see ``refbbp verify``
for the node list):
``node/<k>/h``  (n, size): the node's output ``h_k``;
``node/<k>/g``  (n, size): ``df/dh_k``;
``node/<k>/bias_x`` (n, size): the local bias ``b^x_k = c * b + d``;
``node/<k>/beta_in/<rule>/T=<T>`` (n, size): the BBp mass node ``k`` received.
With exact Integrated Gradients (``refbbp explain --method ig``, SPEC 7):
``ig``  (n, *input_shape): the attributions; ``ig_baseline`` (n, *input_shape): the
baseline; ``ig_pieces`` (n,): the linear pieces the path crossed;
``ig_completeness_error`` (n,): ``|sum ig - (f(x) - f(baseline))| / scale``.

Format version 1 (refbbp 0.1.0) named the local biases ``bias``, ``bias_all`` and
``node/<k>/bias``; :func:`read_oracle` reads both versions and gives version 2's names,
so :func:`compare` accepts a version-1 file on either side.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._checks import check_real
from .._version import __version__
from ..bbp import bbp
from ..errors import InputFileError
from .files import read_npz, sha256_file

__all__ = ["FORMAT", "FORMAT_VERSION", "beta_key", "compare", "oracle_path", "read_oracle",
           "save_oracle", "write_oracle"]

FORMAT = "refbbp-oracle"
FORMAT_VERSION = 2

#: Version 1's field names of the local biases -> version 2's.
_V1_NAMES = {"bias": "bias_x", "bias_all": "bias_x_all"}


def beta_key(rule, temperature):
    """Field name of a bias attribution: ``beta/<rule>/T=<T>``."""
    return f"beta/{rule}/T={float(temperature)!r}"


def oracle_fields(net, x, target=None, rules=("sign", "deviation"), temperatures=(1.0,),
                  layers=False, progress=None, betas=None, linear=None):
    """Compute the golden fields of the module docstring for inputs ``x`` (n, ...).

    ``betas`` may hold attributions the caller already computed for these inputs and
    this target, keyed by :func:`beta_key` (without layers); they are not computed again.
    ``linear``, likewise, the local linear model ``net.linearize(x, target)``.
    """
    lin = net.linearize(x, target) if linear is None else linear
    out = {"x": np.asarray(x, np.float64), "logits": lin.logits, "target": lin.target,
           "value": lin.value, "w": lin.w, "bias_x": lin.bias_x, "bias_x_all": lin.bias_x_all()}
    if layers:
        for k in range(len(net.nodes)):
            out[f"node/{k}/h"] = lin.trace.values[k]
            out[f"node/{k}/g"] = lin.grads[k]
            out[f"node/{k}/bias_x"] = lin.trace.local_bias(k)
    betas = {} if betas is None or layers else betas
    combos = []
    for rule in rules:
        for t in temperatures:
            if beta_key(rule, t) in betas:
                out[beta_key(rule, t)] = betas[beta_key(rule, t)]
            else:
                combos.append((rule, t))
    for rule, t in (progress(combos, desc="bbp") if progress else combos):
        att = bbp(net, x, target=target, rule=rule, temperature=t, return_layers=layers)
        out[beta_key(rule, t)] = att.beta
        if layers:
            for k, layer in enumerate(att.layers):
                out[f"node/{k}/beta_in/{rule}/T={float(t)!r}"] = layer.beta_in
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def oracle_path(path):
    """The file :func:`write_oracle` writes for ``path``: as ``numpy.savez``, the name
    itself when it ends in ``.npz``, else the name with ``.npz`` appended
    (``out.npy`` -> ``out.npy.npz``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
    """
    path = os.fspath(path)
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"oracle output {path!r} is a folder: expected a file name "
                         f"(e.g. {os.path.join(path, 'oracle.npz')!r})")
    return path if path.endswith(".npz") else path + ".npz"


def write_oracle(path, net, x, model_path=None, target=None, rules=("sign", "deviation"),
                 temperatures=(1.0,), layers=False, progress=None, betas=None, linear=None,
                 extra=None):
    """Write an oracle file (module docstring) for inputs ``x`` of shape (n, *input_shape).

    The file written is :func:`oracle_path` of ``path`` (``.npz`` appended unless the
    name ends in it, as ``numpy.savez`` does). ``extra`` holds more fields already
    computed for the same inputs (e.g. exact IG), each with a leading axis over them.

    Returns
    -------
    dict
        The fields written (without ``meta``).
    """
    out = oracle_path(path)            # a bad name is refused before the work
    fields = oracle_fields(net, x, target, rules, temperatures, layers, progress, betas,
                           linear)
    fields.update({k: np.asarray(v, np.float64) for k, v in (extra or {}).items()})
    save_oracle(out, net, fields, model_path, target, rules, temperatures)
    return fields


def save_oracle(path, net, fields, model_path=None, target=None, rules=("sign", "deviation"),
                temperatures=(1.0,)):
    """Write computed ``fields`` (:func:`oracle_fields`, and any extra ones) and their
    ``meta`` to ``path`` (an ``.npz`` name, :func:`oracle_path`)."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "refbbp_version": __version__,
        "spec": "SPEC.md sections 2 (local linear model) and 3 (BBp)",
        "model": {"file": os.path.basename(model_path) if model_path else None,
                  "sha256": sha256_file(model_path) if model_path else None},
        "input_shape": list(net.input_shape), "n_outputs": net.n_outputs,
        "start": {"index": net.start.index, "name": net.start.name},
        "target": target if target is None or isinstance(target, (str, int)) else "vector",
        "rules": list(rules), "temperatures": [float(t) for t in temperatures],
        "fields": sorted(fields),
    }
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **fields)


def _v2_name(key):
    """A field's version-2 name (version 1 named the local biases ``bias``)."""
    if key in _V1_NAMES:
        return _V1_NAMES[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "node" and parts[2] == "bias":
        return f"node/{parts[1]}/bias_x"
    return key


def read_oracle(path):
    """Read an oracle file of format version 1 or 2.

    Parameters
    ----------
    path : str or path-like
        An ``.npz`` written by :func:`write_oracle` (or by another implementation with
        the same field names).

    Returns
    -------
    meta : dict or None
        The parsed ``meta`` field (``None`` for a file without one, e.g. a candidate
        written by other code), with ``format_version`` as stored.
    fields : dict of str to ndarray
        Every other field, under version 2's names.

    Raises
    ------
    InputFileError
        Not a regular file, not a readable ``.npz`` archive (empty, truncated, a
        ``.npy``), arrays larger than the budget of :mod:`refbbp.io.files`, a non-numeric
        field, or a ``meta`` field that is not JSON.
    """
    z = read_npz(path, "oracle file")
    meta = None
    if "meta" in z:
        try:
            meta = json.loads(str(z["meta"][()]))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, TypeError, IndexError) as exc:
            raise InputFileError(f"oracle file {path}: field 'meta' is not the JSON object "
                                 f"of an oracle file ({exc})") from None
    version = meta.get("format_version", FORMAT_VERSION) if meta else FORMAT_VERSION
    rename = _v2_name if version == 1 else (lambda key: key)
    fields = {}
    for k, v in z.items():
        if k == "meta":
            continue
        if v.dtype.kind not in "biuf":
            raise InputFileError(f"oracle file {path}: field {k!r} has dtype {v.dtype}, "
                                 f"expected numbers")
        fields[rename(k)] = v
    return meta, fields


def compare(golden, candidate, rtol=1e-6, atol=1e-9):
    """Compare a candidate oracle file with a golden one, field by field.

    A field passes when ``|candidate - golden| <= atol + rtol * |golden|`` everywhere
    (``numpy.allclose``) and the shapes agree; a field missing from the candidate fails.
    Both files are read with :func:`read_oracle`, so either may be of format version 1.

    Returns
    -------
    rows : list of dict
        ``field``, ``shape``, ``max_abs``, ``max_rel`` (relative to ``|golden|``, over
        entries where it is non-zero), ``ok`` and ``why`` (for failures).
    """
    rtol = check_real(rtol, "rtol", least=0.0)
    atol = check_real(atol, "atol", least=0.0)
    g = read_oracle(golden)[1]
    c = read_oracle(candidate)[1]
    rows = []
    for key in sorted(g):
        ref = g[key]
        row = {"field": key, "shape": list(ref.shape), "max_abs": None, "max_rel": None,
               "ok": False, "why": ""}
        if key not in c:
            row["why"] = "missing from the candidate"
        elif c[key].shape != ref.shape:
            row["why"] = f"shape {list(c[key].shape)} instead of {list(ref.shape)}"
        else:
            got = np.asarray(c[key], np.float64)
            diff = np.abs(got - ref)
            nz = ref != 0
            row["max_abs"] = float(diff.max(initial=0.0))
            row["max_rel"] = float((diff[nz] / np.abs(ref[nz])).max(initial=0.0))
            finite = np.all(np.isfinite(got))
            row["ok"] = bool(finite and np.allclose(got, ref, rtol=rtol, atol=atol))
            if not finite:
                row["why"] = "NaN or infinite values"
            elif not row["ok"]:
                row["why"] = f"exceeds atol={atol:g} + rtol={rtol:g} * |golden|"
        rows.append(row)
    for key in sorted(set(c) - set(g)):
        rows.append({"field": key, "shape": list(c[key].shape), "max_abs": None,
                     "max_rel": None, "ok": True, "why": "not in the golden file (ignored)"})
    return rows
