"""Valid base models and their mutations, for the fuzz tier.

The base models are small and valid (``onnx.checker`` and onnxruntime accept them, and
refbbp must too): an MLP, a CNN (Conv, BatchNormalization, Relu, MaxPool, a residual
Add, AveragePool, Flatten, Gemm), a graph of index ops (Transpose, Pad, Slice, Concat,
Reshape) and the bundled digits model. Every mutation takes a copy of a base model, a
NumPy generator and the case's folder (for external data files), changes the model in
place and returns a one-line description of what it did. ``MODEL_FAMILIES`` groups them
by what they break; a case draws one family member with its own generator, so the same
seed always gives the same mutation.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import make_model, make_node

__all__ = ["BASES", "MODEL_FAMILIES", "NotApplicable", "PROTO_MUTATIONS", "SECRET_NAME",
           "base_model", "proto_mutation"]

#: The file outside every case's folder that no model may read (the worker writes it
#: next to the case folders; external data mutations point at it).
SECRET_NAME = "secret.bin"


# ------------------------------------------------------------------------- base models
def _mlp(rng):
    nodes = [make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             make_node("Relu", ["h"], ["r"]),
             make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = {"w1": rng.normal(size=(16, 8)), "b1": rng.normal(size=16),
             "w2": rng.normal(size=(4, 16)), "b2": rng.normal(size=4)}
    return make_model(nodes, {"x": (8,)}, ["y"], inits)


def _cnn(rng):
    nodes = [make_node("Conv", ["x", "cw1", "cb1"], ["c1"], kernel_shape=[3, 3],
                       pads=[1, 1, 1, 1], strides=[1, 1]),
             make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"],
                       epsilon=1e-5),
             make_node("Relu", ["bn"], ["r1"]),
             make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             make_node("Conv", ["p1", "cw2", "cb2"], ["c2"], kernel_shape=[3, 3],
                       pads=[1, 1, 1, 1]),
             make_node("Add", ["p1", "c2"], ["a"]),
             make_node("Relu", ["a"], ["r2"]),
             make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             make_node("Flatten", ["p2"], ["f"], axis=1),
             make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"cw1": rng.normal(size=(4, 1, 3, 3)), "cb1": rng.normal(size=4),
             "bn_s": rng.uniform(0.5, 1.5, 4), "bn_b": rng.normal(size=4),
             "bn_m": rng.normal(size=4), "bn_v": rng.uniform(0.5, 1.5, 4),
             "cw2": rng.normal(size=(4, 4, 3, 3)) / 3, "cb2": rng.normal(size=4),
             "fw": rng.normal(size=(3, 16)), "fb": rng.normal(size=3)}
    return make_model(nodes, {"x": (1, 8, 8)}, ["y"], inits)


def _index(rng):
    nodes = [make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
             make_node("Pad", ["t", "pads"], ["p"]),
             make_node("Slice", ["p", "starts", "ends", "axes"], ["s"]),
             make_node("Concat", ["s", "x"], ["c"], axis=1),
             make_node("Reshape", ["c", "shape"], ["r"]),
             make_node("Gemm", ["r", "w", "b"], ["g"], transB=1),
             make_node("Relu", ["g"], ["y"])]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "starts": np.array([1, 1]),
             "ends": np.array([5, 5]), "axes": np.array([2, 3]),
             "shape": np.array([0, -1]), "w": rng.normal(size=(5, 64)),
             "b": rng.normal(size=5)}
    return make_model(nodes, {"x": (2, 4, 4)}, ["y"], inits)


def _digits(rng):
    from refbbp import data

    return onnx.load(str(data.model_path()))


#: Base model builders by name (each deterministic: its weights come from seed 0).
BASES = {"mlp": _mlp, "cnn": _cnn, "index": _index, "digits": _digits}
_CACHE = {}


def base_model(name):
    """A fresh copy of base model ``name`` (built once per process)."""
    if name not in _CACHE:
        # Shape inference gives the graph outputs their shapes (onnx.checker's full check
        # wants them); the intermediate value_info is dropped.
        m = onnx.shape_inference.infer_shapes(BASES[name](np.random.default_rng(0)),
                                              strict_mode=True)
        del m.graph.value_info[:]
        _CACHE[name] = m.SerializeToString()
    m = onnx.ModelProto()
    m.ParseFromString(_CACHE[name])
    return m


# ------------------------------------------------------------------- protobuf level
def _truncate(raw, rng, other):
    k = int(rng.integers(0, len(raw)))
    return raw[:k], f"truncated to {k} of {len(raw)} bytes"


def _flip(raw, rng, other):
    b = bytearray(raw)
    n = int(rng.integers(1, 9))
    at = rng.integers(0, len(b), n)
    for i in at:
        b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b), f"flipped {n} bits at {sorted(int(i) for i in at)}"


def _bytes_set(raw, rng, other):
    b = bytearray(raw)
    n = int(rng.integers(1, 5))
    at = rng.integers(0, len(b), n)
    for i in at:
        b[i] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80]))
    return bytes(b), f"set {n} bytes at {sorted(int(i) for i in at)} to 00/ff/7f/80"


def _splice(raw, rng, other):
    i, j = int(rng.integers(0, len(raw))), int(rng.integers(0, len(other)))
    return raw[:i] + other[j:], f"spliced bytes [:{i}] + another model's [{j}:]"


def _doubled(raw, rng, other):
    return raw + other, "two serialised models concatenated (protobuf merges them)"


def _garbage(raw, rng, other):
    n = int(rng.choice([0, 1, 7, 100, 5000]))
    return rng.bytes(n), f"{n} random bytes"


#: Mutations of the serialised bytes: ``f(raw, rng, other_raw) -> (bytes, description)``.
PROTO_MUTATIONS = {"truncate": _truncate, "flip": _flip, "bytes": _bytes_set,
                   "splice": _splice, "doubled": _doubled, "garbage": _garbage}


def proto_mutation(raw, rng, other):
    name = str(rng.choice(sorted(PROTO_MUTATIONS)))
    out, desc = PROTO_MUTATIONS[name](raw, rng, other)
    return out, f"{name}: {desc}"


# ------------------------------------------------------------------------- helpers
class NotApplicable(LookupError):
    """A mutation found nothing to mutate in this model (the generator draws again)."""


def _pick(rng, seq):
    seq = list(seq)
    if not seq:
        raise NotApplicable("nothing to pick from")
    return seq[int(rng.integers(0, len(seq)))]


def _set_attr(node, name, value):
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _init(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return t
    return None


def _float_inits(model, min_size=2):
    return [t for t in model.graph.initializer
            if t.data_type == TensorProto.FLOAT and np.prod(t.dims, dtype=np.int64) >= min_size]


def _replace_init(model, name, array):
    t = _init(model, name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(array), name))


# ---------------------------------------------------------------------- attributes
_BIG = 10 ** 9
_NAN, _INF = float("nan"), float("inf")
_POOL = [("kernel_shape", [50, 50]), ("kernel_shape", [0, 0]), ("kernel_shape", [2]),
         ("kernel_shape", [-2, 2]), ("strides", [0, 0]), ("strides", [-1, 1]),
         ("strides", [_BIG, 1]), ("pads", [-1, -1, -1, -1]), ("pads", [5, 5, 5, 5]),
         ("pads", [1, 1]), ("dilations", [0, 0]), ("ceil_mode", 5),
         ("auto_pad", "SAME_UPPER"), ("auto_pad", "BOGUS"), ("strides", 1.5),
         ("kernel_shape", "a")]
HOSTILE_ATTRS = {
    "Conv": [("strides", [0, 0]), ("strides", [-1, 1]), ("strides", [_BIG, 1]),
             ("strides", [1]), ("strides", 1.5), ("strides", "11"), ("group", 0),
             ("group", -1), ("group", 3), ("group", _BIG), ("group", [1, 1]),
             ("pads", [-1, -1, -1, -1]), ("pads", [1, 1]), ("pads", [_BIG] * 4),
             ("kernel_shape", [100, 100]), ("kernel_shape", [0, 0]), ("kernel_shape", [2, 2]),
             ("dilations", [0, 1]), ("dilations", [10 ** 6, 1]), ("dilations", [-1, -1]),
             ("auto_pad", "SAME_UPPER"), ("auto_pad", "VALID"), ("auto_pad", "BOGUS")],
    "MaxPool": _POOL + [("storage_order", 1), ("storage_order", 7)],
    "AveragePool": _POOL + [("count_include_pad", 2), ("count_include_pad", -1)],
    "Gemm": [("transA", 1), ("transB", 7), ("transB", 0), ("alpha", _NAN), ("alpha", _INF),
             ("beta", 1e308), ("alpha", "a"), ("alpha", [1.0, 2.0])],
    "BatchNormalization": [("epsilon", -1.0), ("epsilon", _NAN), ("training_mode", 1),
                           ("momentum", 2.0), ("epsilon", "x"), ("spatial", 0)],
    "Transpose": [("perm", [0, 0, 1, 2]), ("perm", [0, 1, 2, 9]), ("perm", [0, 1]),
                  ("perm", [-1, 0, 1, 2]), ("perm", 3)],
    "Concat": [("axis", 10), ("axis", -10), ("axis", 0), ("axis", 1.5)],
    "Flatten": [("axis", 9), ("axis", -9), ("axis", 0)],
    "Reshape": [("allowzero", 1), ("allowzero", 5)],
    "Pad": [("mode", "wrap"), ("mode", "bogus"), ("mode", "reflect")],
    "Relu": [("alpha", 0.5)],
    "Add": [("broadcast", 1), ("axis", 3)],
    "Sub": [("broadcast", 1)],
    "Div": [("broadcast", 1)],
}
#: Attributes whose removal makes a node invalid (or changes its meaning).
REQUIRED_ATTRS = {"MaxPool": "kernel_shape", "AveragePool": "kernel_shape",
                  "Concat": "axis", "Transpose": "perm", "Conv": "kernel_shape"}


def attr_hostile(model, rng, folder):
    nodes = [n for n in model.graph.node if n.op_type in HOSTILE_ATTRS]
    node = _pick(rng, nodes)
    name, value = _pick(rng, HOSTILE_ATTRS[node.op_type])
    _set_attr(node, name, value)
    return f"{node.op_type} {node.name!r}: {name}={value!r}"


def attr_remove(model, rng, folder):
    nodes = [n for n in model.graph.node if REQUIRED_ATTRS.get(n.op_type) in
             [a.name for a in n.attribute]]
    node = _pick(rng, nodes)
    name = REQUIRED_ATTRS[node.op_type]
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    return f"{node.op_type} {node.name!r}: attribute {name} removed"


def attr_empty(model, rng, folder):
    node = _pick(rng, [n for n in model.graph.node if n.attribute])
    a = _pick(rng, node.attribute)
    kind = a.type
    a.Clear()
    a.name = "" if rng.random() < 0.3 else f"{node.op_type}_attr"
    a.type = kind
    return f"{node.op_type} {node.name!r}: an attribute emptied (name {a.name!r}, no value)"


# --------------------------------------------------------------------- node inputs
def inputs_drop(model, rng, folder):
    node = _pick(rng, model.graph.node)
    k = int(rng.integers(0, len(node.input)))
    name = node.input[k]
    del node.input[k]
    return f"{node.op_type} {node.name!r}: input {k} ({name!r}) removed"


def inputs_extra(model, rng, folder):
    node = _pick(rng, model.graph.node)
    name = _pick(rng, list(node.input))
    node.input.append(name)
    return f"{node.op_type} {node.name!r}: input {name!r} given again as an extra input"


def inputs_rewire(model, rng, folder):
    nodes = list(model.graph.node)
    i = int(rng.integers(0, len(nodes)))
    node = nodes[i]
    k = int(rng.integers(0, len(node.input)))
    how = _pick(rng, ["empty", "ghost", "self", "later", "swap", "output"])
    if how == "empty":
        node.input[k] = ""
    elif how == "ghost":
        node.input[k] = "nobody_makes_this"
    elif how == "self":
        node.input[k] = node.output[0]
    elif how == "later":
        node.input[k] = nodes[-1].output[0]
    elif how == "output":
        node.input[k] = model.graph.output[0].name
    elif len(node.input) > 1:
        a, b = list(node.input[:2])
        node.input[0], node.input[1] = b, a
    return f"{node.op_type} {node.name!r}: input {k} rewired ({how})"


def outputs_dup(model, rng, folder):
    a, b = _pick(rng, model.graph.node), _pick(rng, model.graph.node)
    b.output[0] = a.output[0]
    return f"{b.op_type} {b.name!r} writes {a.output[0]!r} too (two producers)"


# --------------------------------------------------------------------------- dims
_HUGE_DIMS = [0, -1, -5, _BIG, 2 ** 62, 2 ** 63 - 1]


def dims_input(model, rng, folder):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    k = int(rng.integers(0, len(dims)))
    v = _pick(rng, _HUGE_DIMS + ["sym"])
    if v == "sym":
        dims[k].Clear()
        dims[k].dim_param = "S"
    else:
        dims[k].dim_value = int(v)
    return f"graph input dim {k} = {v}"


def dims_input_type(model, rng, folder):
    vi = model.graph.input[0]
    how = _pick(rng, ["rank+1", "rank-1", "no shape", "int64", "string", "float16",
                      "complex64", "double", "no type"])
    t = vi.type.tensor_type
    if how == "rank+1":
        t.shape.dim.add().dim_value = 3
    elif how == "rank-1":
        del t.shape.dim[-1]
    elif how == "no shape":
        t.ClearField("shape")
    elif how == "no type":
        vi.ClearField("type")
    else:
        t.elem_type = {"int64": TensorProto.INT64, "string": TensorProto.STRING,
                       "float16": TensorProto.FLOAT16, "complex64": TensorProto.COMPLEX64,
                       "double": TensorProto.DOUBLE}[how]
    return f"graph input type: {how}"


def dims_init(model, rng, folder):
    t = _pick(rng, _float_inits(model))
    how = _pick(rng, ["huge dims", "zero dim", "negative dim", "wrong product", "reshaped",
                      "scalar"])
    n = int(np.prod(t.dims))
    if how == "huge dims":
        t.dims[0] = _pick(rng, [_BIG, 2 ** 62])
    elif how == "zero dim":
        t.dims[0] = 0
    elif how == "negative dim":
        t.dims[0] = -1
    elif how == "wrong product":
        t.dims.append(2)
    elif how == "reshaped":
        a = numpy_helper.to_array(t).reshape(-1)
        _replace_init(model, t.name, a.reshape((n,) if a.ndim != 1 or len(t.dims) != 1
                                               else (1, n)))
    else:
        _replace_init(model, t.name, np.float32(1.5))
    return f"initializer {t.name!r}: {how}"


def dims_kernel(model, rng, folder):
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    node = _pick(rng, convs)
    w = numpy_helper.to_array(_init(model, node.input[1]))
    k = int(_pick(rng, [9, 20, 40, 100]))
    _replace_init(model, node.input[1],
                  rng.normal(size=w.shape[:2] + (k, k)).astype(np.float32))
    for a in node.attribute:
        if a.name == "kernel_shape":
            del a.ints[:]
            a.ints.extend([k, k])
    return f"Conv {node.name!r}: kernel {k}x{k} (larger than its input?)"


def dims_index_values(model, rng, folder):
    """Constant index inputs (Reshape shape, Pad pads, Slice starts/ends) set to extreme
    values (only the index base model has them)."""
    cands = [n for n in model.graph.node if n.op_type in ("Reshape", "Pad", "Slice")]
    node = _pick(rng, cands)
    if node.op_type == "Reshape":
        v = _pick(rng, [[2 ** 62, -1], [-2, 5], [0, 0, 0], [-1, -1], [_BIG, _BIG], [0]])
        _replace_init(model, node.input[1], np.array(v, np.int64))
    elif node.op_type == "Pad":
        v = _pick(rng, [_BIG, -100, 2 ** 62, -(2 ** 62)])
        _replace_init(model, node.input[1], np.array([0, 0, v, 1, 0, 0, 1, 1], np.int64))
    else:
        v = _pick(rng, [[2 ** 62, 1], [-(2 ** 63), 1], [5, 1], [3, 1]])
        which = _pick(rng, [1, 2, 3])
        _replace_init(model, node.input[which], np.array(v, np.int64))
    return f"{node.op_type} {node.name!r}: constant index input = {v}"


# ------------------------------------------------------------------------ outputs
def outputs_graph(model, rng, folder):
    g = model.graph
    how = _pick(rng, ["none", "ghost", "input", "initializer", "twice", "int64", "extra ghost"])
    if how == "none":
        del g.output[:]
    elif how == "ghost":
        g.output[0].name = "nothing_makes_this"
    elif how == "input":
        g.output[0].name = g.input[0].name
    elif how == "initializer":
        g.output[0].name = g.initializer[0].name
    elif how == "twice":
        g.output.extend([g.output[0]])
    elif how == "int64":
        g.output[0].type.tensor_type.elem_type = TensorProto.INT64
    else:
        g.output.extend([helper.make_tensor_value_info("ghost_out", TensorProto.FLOAT, None)])
    return f"graph outputs: {how}"


# --------------------------------------------------------------------- initializers
def init_values(model, rng, folder):
    t = _pick(rng, _float_inits(model, 1))
    a = numpy_helper.to_array(t).copy()
    v = _pick(rng, [_NAN, _INF, -_INF, 3e38, 1e-45])
    flat = a.reshape(-1)
    flat[int(rng.integers(0, flat.size))] = v
    _replace_init(model, t.name, a)
    return f"initializer {t.name!r}: one value set to {v!r}"


def init_structure(model, rng, folder):
    g = model.graph
    how = _pick(rng, ["duplicate", "shadows input", "sparse", "int64", "float16", "double",
                      "raw truncated", "raw and float_data", "undefined type", "string"])
    t = _pick(rng, _float_inits(model))
    a = numpy_helper.to_array(t)
    if how == "duplicate":
        g.initializer.append(numpy_helper.from_array(-a, t.name))
    elif how == "shadows input":
        x = g.input[0]
        shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
        g.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), x.name))
    elif how == "sparse":
        flat = a.reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[idx], t.name)
        indices = numpy_helper.from_array(idx, "")
        sp = helper.make_sparse_tensor(values, indices, list(a.shape))
        g.sparse_initializer.append(sp)
        g.initializer.remove(t)
    elif how in ("int64", "float16", "double"):
        dt = {"int64": np.int64, "float16": np.float16, "double": np.float64}[how]
        _replace_init(model, t.name, a.astype(dt))
    elif how == "raw truncated":
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif how == "raw and float_data":
        t.float_data.extend([1.0, 2.0])
    elif how == "undefined type":
        t.data_type = TensorProto.UNDEFINED
    else:
        t.data_type = TensorProto.STRING
    return f"initializer {t.name!r}: {how}"


# -------------------------------------------------------------------- external data
def extdata(model, rng, folder):
    """One weight moved to external data at a hostile (or, once in a while, a fine)
    location. The worker puts ``SECRET_NAME`` in the parent of ``folder``."""
    t = _pick(rng, _float_inits(model, 4))
    a = numpy_helper.to_array(t)
    raw = a.astype("<f4").tobytes()
    secret = os.path.join(os.path.dirname(folder), SECRET_NAME)
    how = _pick(rng, ["fine", "dotdot", "absolute secret", "etc passwd", "symlink out",
                      "symlink dir out", "missing", "directory", "fifo", "huge length",
                      "offset past end", "negative offset", "dev zero", "proc self",
                      "nested dotdot"])
    loc, offset, length = "w.bin", None, None
    if how in ("fine", "huge length", "offset past end", "negative offset"):
        with open(os.path.join(folder, "w.bin"), "wb") as fh:
            fh.write(raw)
        if how == "huge length":
            length = 10 ** 12
        elif how == "offset past end":
            offset = 10 ** 9
        elif how == "negative offset":
            offset = -8
    elif how == "dotdot":
        loc = "../" + SECRET_NAME
    elif how == "nested dotdot":
        os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
        loc = "sub/../../" + SECRET_NAME
    elif how == "absolute secret":
        loc = secret
    elif how == "etc passwd":
        loc = "/etc/passwd"
    elif how == "symlink out":
        os.symlink(secret, os.path.join(folder, "link.bin"))
        loc = "link.bin"
    elif how == "symlink dir out":
        os.symlink(os.path.dirname(folder), os.path.join(folder, "up"))
        loc = "up/" + SECRET_NAME
    elif how == "missing":
        loc = "no_such_file.bin"
    elif how == "directory":
        os.makedirs(os.path.join(folder, "adir"), exist_ok=True)
        loc = "adir"
    elif how == "fifo":
        os.mkfifo(os.path.join(folder, "pipe.bin"))
        loc = "pipe.bin"
    elif how == "dev zero":
        loc = "/dev/zero"
    else:
        loc = "/proc/self/environ"
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", loc), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, str(v)
    return f"initializer {t.name!r} external: {how} (location {loc!r})"


# ------------------------------------------------------------------------ ops, opsets
def ops_unknown(model, rng, folder):
    node = _pick(rng, model.graph.node)
    how = _pick(rng, ["op", "domain", "empty op", "lowercase", "nonlinear"])
    if how == "op":
        node.op_type = "Frobnicate"
    elif how == "domain":
        node.domain = "com.evil"
        model.opset_import.append(helper.make_opsetid("com.evil", 1))
    elif how == "empty op":
        node.op_type = ""
    elif how == "lowercase":
        node.op_type = node.op_type.lower()
    else:
        node.op_type = _pick(rng, ["Sigmoid", "Softmax", "Exp", "Tanh"]) if len(
            node.input) == 1 else "Mul"
    return f"{node.name!r}: {how} -> op {node.op_type!r} domain {node.domain!r}"


def ops_opset(model, rng, folder):
    how = _pick(rng, ["opset 1", "opset 6", "opset 99", "opset 0", "opset -1", "no opset",
                      "ir 0", "ir 99", "ir 3", "two default opsets"])
    if how.startswith("opset"):
        model.opset_import[0].version = int(how.split()[1])
    elif how == "no opset":
        del model.opset_import[:]
    elif how.startswith("ir"):
        model.ir_version = int(how.split()[1])
    else:
        model.opset_import.append(helper.make_opsetid("", 11))
    return how


def ops_cast(model, rng, folder):
    """A Cast inserted after the graph input (float16, int32, bool, double, string)."""
    g = model.graph
    to = _pick(rng, [TensorProto.FLOAT16, TensorProto.INT32, TensorProto.BOOL,
                     TensorProto.DOUBLE, TensorProto.BFLOAT16, TensorProto.STRING])
    x = g.input[0].name
    back = _pick(rng, [True, False])
    cast = [make_node("Cast", [x], ["cast_x"], to=to)]
    src = "cast_x"
    if back:
        cast.append(make_node("Cast", ["cast_x"], ["cast_back"], to=TensorProto.FLOAT))
        src = "cast_back"
    for n in g.node:
        for k, name in enumerate(n.input):
            if name == x:
                n.input[k] = src
    nodes = cast + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return (f"Cast to {TensorProto.DataType.Name(to)} after the input"
            + (" and back to FLOAT" if back else ""))


def ops_subgraph(model, rng, folder):
    """A node with a subgraph attribute (If) or a model-local function."""
    g = model.graph
    last = g.node[-1]
    out = last.output[0]
    last.output[0] = "pre_" + out
    branch = helper.make_graph([make_node("Identity", ["pre_" + out], ["b_out"])], "branch",
                               [], [helper.make_tensor_value_info("b_out", TensorProto.FLOAT,
                                                                  None)])
    g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    g.node.append(make_node("If", ["cond"], [out], then_branch=branch, else_branch=branch))
    return "the last node's output goes through an If with a constant condition"


#: The structural mutation families: family -> list of mutations.
MODEL_FAMILIES = {
    "attr": [attr_hostile, attr_hostile, attr_hostile, attr_remove, attr_empty],
    "inputs": [inputs_drop, inputs_extra, inputs_rewire, inputs_rewire, outputs_dup],
    "dims": [dims_input, dims_input_type, dims_init, dims_kernel, dims_index_values],
    "outputs": [outputs_graph],
    "init": [init_values, init_structure, init_structure],
    "extdata": [extdata],
    "ops": [ops_unknown, ops_opset, ops_cast, ops_subgraph],
}
#: Mutations that need a node the base may lack, with the bases that have one.
NEEDS = {dims_kernel: ("cnn", "digits"), dims_index_values: ("index",)}
