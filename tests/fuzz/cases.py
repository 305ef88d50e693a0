"""The fuzz case generators.

A case is ``(generator, seed)``, with id ``"<generator>-<seed>"``. :func:`materialise`
turns it into a :class:`Plan` (writing the files it needs into the case's folder) with
a NumPy generator seeded from both, so the same id is always the same case. Cases are
drawn from seeded NumPy generators rather than Hypothesis: a case runs in a worker
process and must be rebuilt there, and later replayed, from its id alone.

Generators:

* ``valid``: an unmutated base model (must be ``ok``);
* ``proto``: a base model's serialised bytes truncated, bit-flipped, spliced, ...;
* ``attr``, ``inputs``, ``dims``, ``outputs``, ``init``, ``extdata``, ``ops``: the
  structural mutation families of :mod:`tests.fuzz.mutations`;
* ``array``: bad arrays for ``forward``/``linearize``/``bbp``/``decompose``;
* ``args``: bad ``n_threads``, ``temperature``, ``rule``, ``target``, ``backend``;
* ``cli``: bad command lines (``refbbp.cli.main(argv)``, as ``python -m refbbp`` runs it).
"""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import mutations as mu

__all__ = ["GENERATORS", "Plan", "case_id", "materialise", "parse_id", "schedule"]


@dataclass
class Plan:
    """What one case does.

    ``kind`` is ``"model"`` (load ``path`` with refbbp and check it against onnx.checker
    and onnxruntime), ``"call"`` (call ``fn()``) or ``"cli"`` (run the command line
    ``argv``). ``expect`` is ``"refuse"`` when succeeding would be a wrong acceptance,
    ``"any"`` otherwise. ``post(result)`` returns a message when a successful call's
    result is wrong (non-finite, incomplete). ``allowed`` lists paths outside the case's
    folder the case may open (files named on a command line).
    """

    kind: str
    desc: str
    path: str = None
    fn: object = None
    argv: list = None
    expect: str = "any"
    post: object = None
    allowed: list = field(default_factory=list)


GENERATORS = {}


def _generator(name, weight):
    def register(f):
        GENERATORS[name] = (f, weight)
        return f
    return register


def case_id(gen, seed):
    return f"{gen}-{seed}"


def parse_id(cid):
    gen, _, seed = cid.rpartition("-")
    if gen not in GENERATORS or not seed.isdigit():
        raise ValueError(f"not a fuzz case id: {cid!r} (expected <generator>-<seed> with "
                         f"generator in {sorted(GENERATORS)})")
    return gen, int(seed)


def schedule(n, seed=0, generators=None):
    """``n`` case ids: the generators in proportion to their weights, interleaved, with
    seeds ``seed * 10**6 + k`` (k counts per generator)."""
    gens = sorted(generators or GENERATORS)
    weights = np.array([GENERATORS[g][1] for g in gens], float)
    counts = np.floor(weights / weights.sum() * n).astype(int)
    for i in np.argsort(-weights)[: n - counts.sum()]:
        counts[i] += 1
    ids, k = [], 0
    while len(ids) < n:
        for g, c in zip(gens, counts):
            if k < c:
                ids.append(case_id(g, seed * 10 ** 6 + k))
        k += 1
    return ids


def materialise(cid, folder):
    """The :class:`Plan` of case ``cid``; its files go into ``folder`` (which exists,
    empty, inside a parent that holds ``mutations.SECRET_NAME``)."""
    gen, seed = parse_id(cid)
    rng = np.random.default_rng([zlib.crc32(gen.encode()), seed])
    f = GENERATORS[gen][0]
    for _ in range(20):
        try:
            return f(rng, folder)
        except mu.NotApplicable:
            shutil.rmtree(folder)
            os.makedirs(folder)
    raise RuntimeError(f"case {cid}: no applicable mutation in 20 draws")


def _pick(rng, seq):
    return mu._pick(rng, seq)


# -------------------------------------------------------------------------- models
_BASE_WEIGHTS = {"mlp": 3, "cnn": 3, "index": 2, "digits": 1}


def _base_name(rng, allowed=None):
    names = [n for n in _BASE_WEIGHTS if allowed is None or n in allowed]
    p = np.array([_BASE_WEIGHTS[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _write_model(folder, raw):
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as fh:
        fh.write(raw)
    return path


@_generator("valid", 1)
def gen_valid(rng, folder):
    name = _base_name(rng)
    return Plan("model", f"{name}: unmutated", _write_model(
        folder, mu.base_model(name).SerializeToString()))


@_generator("proto", 4)
def gen_proto(rng, folder):
    name, other = _base_name(rng), _base_name(rng)
    raw, desc = mu.proto_mutation(mu.base_model(name).SerializeToString(), rng,
                                  mu.base_model(other).SerializeToString())
    return Plan("model", f"{name}: {desc}", _write_model(folder, raw))


def _family(family):
    def gen(rng, folder):
        mutation = _pick(rng, mu.MODEL_FAMILIES[family])
        name = _base_name(rng, mu.NEEDS.get(mutation))
        model = mu.base_model(name)
        desc = mutation(model, rng, folder)
        return Plan("model", f"{name}: {desc}", _write_model(folder, model.SerializeToString()))
    gen.__name__ = f"gen_{family}"
    gen.__doc__ = f"A base model with one mutation of family {family!r}."
    return gen


for _name, _weight in (("attr", 6), ("inputs", 4), ("dims", 5), ("outputs", 2), ("init", 4),
                       ("extdata", 4), ("ops", 4)):
    _generator(_name, _weight)(_family(_name))


# ---------------------------------------------------------------- arrays, arguments
_NETS = {}


def base_network(name):
    """The base model ``name`` loaded by refbbp (once per process)."""
    import refbbp

    if name not in _NETS:
        _NETS[name] = refbbp.load(mu.base_model(name))
    return _NETS[name]


def _finite(*arrays):
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return "a result is not finite"
    return None


def _post(result):
    """The checks on any successful call: finite numbers, complete attributions."""
    import refbbp

    if isinstance(result, refbbp.Attribution):
        bad = _finite(result.beta, result.grad_input)
        if bad is None and not result.completeness().ok():
            bad = f"completeness fails: worst {result.completeness().worst:.3g}"
        return bad
    if isinstance(result, refbbp.LocalLinearModel):
        return _finite(result.w, result.bias_x, result.value)
    if isinstance(result, refbbp.Decomposition):
        return None
    return _finite(result)


_CALLS = ("forward", "linearize", "bbp", "bbp-numpy", "decompose")


def _call(net, which, x, **kw):
    import refbbp

    if which == "forward":
        return lambda: net.forward(x)
    if which == "linearize":
        return lambda: net.linearize(x, **kw)
    if which == "decompose":
        return lambda: refbbp.decompose(net, x, **kw)
    kw.setdefault("backend", "numpy" if which == "bbp-numpy" else "cython")
    return lambda: refbbp.bbp(net, x, **kw)


def _bad_x(rng, shape):
    """``(description, x, expect)``: an input for a network with ``input_shape``."""
    good = rng.random(shape)
    choices = {
        "extra axes": (good[None, None], "refuse"),
        "a missing axis": (good[0], "refuse"),
        "axes reversed": (good.T if good.ndim > 1 else good[:-1], "refuse"),
        "one NaN": (np.where(good < good.flat[0], good, np.nan), "refuse"),
        "one inf": (np.where(good < good.flat[0], good, np.inf), "refuse"),
        "object dtype": (good.astype(object), "refuse"),
        "complex dtype": (good + 1j, "refuse"),
        "str dtype": (good.astype(str), "refuse"),
        "datetime dtype": (np.zeros(shape, "datetime64[s]"), "refuse"),
        "structured dtype": (np.zeros(shape, [("a", "f8")]), "refuse"),
        "None": (None, "refuse"),
        "a string": ("x", "refuse"),
        "huge values 1e300": (good * 1e300, "any"),
        "huge values 1e30": (good * 1e30, "any"),
        "zero-size batch": (np.zeros((0,) + tuple(shape)), "any"),
        "empty array": (np.zeros(0), "refuse"),
        "ints": ((good * 10).astype(np.int64), "any"),
        "bools": (good > 0.5, "any"),
        "float16": (good.astype(np.float16), "any"),
        "a list": (good.tolist(), "any"),
        "a batch of 3": (rng.random((3,) + tuple(shape)), "any"),
        "non-contiguous": (np.asfortranarray(rng.random((2,) + tuple(shape)))[::-1], "any"),
        "subnormals": (good * 1e-310, "any"),
    }
    desc = _pick(rng, sorted(choices))
    x, expect = choices[desc]
    return desc, x, expect


@_generator("array", 6)
def gen_array(rng, folder):
    name = _pick(rng, ["mlp", "cnn"])
    net = base_network(name)
    desc, x, expect = _bad_x(rng, net.input_shape)
    which = _pick(rng, _CALLS)
    return Plan("call", f"{name}.{which}(x = {desc})", fn=_call(net, which, x),
                expect=expect, post=_post)


def _scores(kind):
    """Rules returning bad scores or weights (``refbbp.weights_rule`` for weights)."""
    import refbbp

    def wrong_shape(layout):
        return np.zeros(len(layout.kappa) + 1)

    def nan(layout):
        return np.full(len(layout.kappa), np.nan)

    def complex_(layout):
        return layout.kappa + 1j

    def two_d(layout):
        return layout.kappa[:, None]

    def none(layout):
        return None

    def as_list(layout):
        return layout.kappa.tolist()

    def ints(layout):
        return np.ones(len(layout.kappa), np.int64)

    def strings(layout):
        return np.array(["a"] * len(layout.kappa))

    def huge_sum_one(layout):
        w = np.zeros(len(layout.kappa))
        first = layout.indptr[:-1][np.diff(layout.indptr) > 0]
        w[first] = 1.0
        nxt = first + 1
        ok = nxt < layout.indptr[1:][np.diff(layout.indptr) > 0]
        w[first[ok]] += 1e300
        w[nxt[ok]] -= 1e300
        return w

    def sum_two(layout):
        counts = np.diff(layout.indptr)
        return 2.0 / np.repeat(np.maximum(counts, 1), counts)

    def huge_scores(layout):
        return layout.kappa * 1e308

    table = {"wrong shape": (wrong_shape, "refuse"), "NaN": (nan, "refuse"),
             "complex": (complex_, "refuse"), "2-D": (two_d, "refuse"),
             "None": (none, "refuse"), "a list": (as_list, "any"), "ints": (ints, "any"),
             "strings": (strings, "refuse"), "huge scores": (huge_scores, "any")}
    weights = {"weights: wrong shape": (wrong_shape, "refuse"),
               "weights: NaN": (nan, "refuse"), "weights: complex": (complex_, "refuse"),
               "weights: 1e300 - 1e300 + 1 per row": (huge_sum_one, "any"),
               "weights: summing to 2": (sum_two, "refuse"),
               "weights: None": (none, "refuse")}
    if kind in table:
        return table[kind]
    f, expect = weights[kind]
    return refbbp.weights_rule(f), expect


_RULE_KINDS = ["wrong shape", "NaN", "complex", "2-D", "None", "a list", "ints", "strings",
               "huge scores", "weights: wrong shape", "weights: NaN", "weights: complex",
               "weights: 1e300 - 1e300 + 1 per row", "weights: summing to 2",
               "weights: None"]


@_generator("args", 5)
def gen_args(rng, folder):
    name = _pick(rng, ["mlp", "cnn"])
    net = base_network(name)
    x = rng.random(net.input_shape)
    n_out = net.n_outputs
    arg = _pick(rng, ["n_threads", "temperature", "rule", "target", "backend", "max_bytes",
                      "input_shape"])
    which = "bbp"
    if arg == "n_threads":
        v, expect = _pick(rng, [(0, "refuse"), (-1, "refuse"), (True, "refuse"),
                                (1.5, "refuse"), ("2", "refuse"), (10 ** 6, "any"),
                                (2 ** 63, "any"), (np.int64(2), "any"), (None, "any")])
        kw = {"n_threads": v}
    elif arg == "temperature":
        v, expect = _pick(rng, [(float("nan"), "refuse"), (-1.0, "refuse"), ("a", "refuse"),
                                (-float("inf"), "refuse"), (None, "refuse"), (1j, "refuse"),
                                (1e-300, "any"), (1e308, "any"), (0, "any"),
                                (float("inf"), "any"), (np.float32(0.5), "any")])
        kw = {"temperature": v}
    elif arg == "rule":
        kind = _pick(rng, _RULE_KINDS + ["bogus name", "an int"])
        if kind == "bogus name":
            v, expect = "bogus", "refuse"
        elif kind == "an int":
            v, expect = 42, "refuse"
        else:
            v, expect = _scores(kind)
        kw = {"rule": v}
        v = kind
        which = _pick(rng, ["bbp", "bbp-numpy"])
    elif arg == "target":
        v, expect = _pick(rng, [(n_out, "refuse"), (10 ** 6, "refuse"), (-n_out - 1, "refuse"),
                                (1.5, "refuse"), ("top3", "refuse"), (float("nan"), "refuse"),
                                (np.ones(n_out + 1), "refuse"), (np.full(n_out, np.nan),
                                                                 "refuse"),
                                (np.ones((2, n_out)), "refuse"), (True, "refuse"),
                                (np.int64(1), "any"), ("top2", "any"), (-1, "any"),
                                (np.ones(n_out) * 1e300, "any"), ([1, 0], "refuse")])
        kw = {"target": v}
        which = _pick(rng, ["linearize", "bbp", "bbp-numpy", "decompose"])
    elif arg == "backend":
        v, expect = _pick(rng, [("cuda", "refuse"), (None, "refuse"), (1, "refuse")])
        kw = {"backend": v}
    else:
        import refbbp

        model = mu.base_model(name)
        if arg == "max_bytes":
            v, expect = _pick(rng, [(0, "refuse"), (-1, "refuse"), (1.5, "refuse"),
                                    ("1G", "refuse"), (float("nan"), "refuse"), (None, "any"),
                                    (2 ** 80, "any")])
            kw = {"max_bytes": v}
        else:
            v, expect = _pick(rng, [((0,), "refuse"), ((-1,), "refuse"), ((10 ** 9,), "refuse"),
                                    (("a",), "refuse"), ((2 ** 62, 2 ** 62), "refuse"),
                                    ((1.5,), "refuse"), ((), "refuse")])
            kw = {"input_shape": v}
        return Plan("call", f"{name}: load({arg}={v!r})",
                    fn=lambda: refbbp.load(model, **kw), expect=expect, post=lambda r: None)
    return Plan("call", f"{name}.{which}({arg}={v!r})", fn=_call(net, which, x, **kw),
                expect=expect, post=_post)


# ---------------------------------------------------------------------- command line
def _cli_files(folder):
    """A copy of the digits model, two inputs (.npy), labelled data (.npz), a golden
    oracle file is not written (too slow); plus hostile files."""
    from refbbp import data

    model = os.path.join(folder, "digits.onnx")
    shutil.copyfile(data.model_path(), model)
    images, labels = data.load_samples()
    np.save(os.path.join(folder, "x.npy"), images[:2])
    np.savez(os.path.join(folder, "data.npz"), x=images[:2], y=labels[:2])
    return model, images[:2], labels[:2]


def _write(folder, name, content):
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(content)
    return path


@_generator("cli", 4)
def gen_cli(rng, folder):
    model, images, labels = _cli_files(folder)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    x_npy = p("x.npy")
    raw_model = open(model, "rb").read()
    raw_npz = open(p("data.npz"), "rb").read()
    bad_models = {
        "missing": (p("nope.onnx"), []),
        "a directory": (folder, []),
        "/dev/null": ("/dev/null", ["/dev/null"]),
        "/dev/zero": ("/dev/zero", ["/dev/zero"]),
        "a FIFO": (p("fifo.onnx"), []),
        "a text file": (_write(folder, "text.onnx", b"hello, world\n" * 10), []),
        "empty": (_write(folder, "empty.onnx", b""), []),
        "truncated": (_write(folder, "trunc.onnx", raw_model[: len(raw_model) // 3]), []),
        "an .npz": (p("data.npz"), []),
    }
    bad_inputs = {
        "missing": p("nope.npy"),
        "a directory": folder,
        "empty .npz": _write(folder, "empty.npz", b""),
        "truncated .npz": _write(folder, "trunc.npz", raw_npz[: len(raw_npz) // 2]),
        "a text file .npy": _write(folder, "text.npy", b"1 2 3\n"),
        "object .npy (pickle)": None,
        "NaN inputs": None,
        "wrong shape": None,
        "/dev/zero": "/dev/zero",
        "a FIFO": p("fifo.npy"),
    }
    what = _pick(rng, ["model", "inputs", "option", "evaluate", "bias-report", "compare",
                       "oracle", "verify", "fine"])
    allowed, expect = [], "refuse"
    if what == "model":
        kind = _pick(rng, sorted(bad_models))
        path, allowed = bad_models[kind]
        if kind == "a FIFO":
            os.mkfifo(path)
        cmd = _pick(rng, ["explain", "verify", "oracle", "evaluate", "bias-report"])
        argv = {"explain": ["explain", path, x_npy, "--out", p("out")],
                "verify": ["verify", path, "--n-random", "1"],
                "oracle": ["oracle", path, x_npy, "-o", p("o.npz")],
                "evaluate": ["evaluate", path, p("data.npz"), "--n", "1", "--methods",
                             "gradient"],
                "bias-report": ["bias-report", path, p("data.npz")]}[cmd]
        desc = f"{cmd}: model is {kind}"
    elif what == "inputs":
        kind = _pick(rng, sorted(bad_inputs))
        path = bad_inputs[kind]
        if kind == "object .npy (pickle)":
            path = p("obj.npy")
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif kind == "NaN inputs":
            path = p("nan.npy")
            np.save(path, np.where(images > 0.5, np.nan, images))
        elif kind == "wrong shape":
            path = p("shape.npy")
            np.save(path, images.reshape(2, 28, 28, 1))
        elif kind == "a FIFO":
            os.mkfifo(path)
        elif path == "/dev/zero":
            allowed = ["/dev/zero"]
        cmd = _pick(rng, ["explain", "verify", "oracle"])
        argv = {"explain": ["explain", model, path, "--out", p("out")],
                "verify": ["verify", model, "--inputs", path, "--n-random", "0"],
                "oracle": ["oracle", model, path, "-o", p("o.npz")]}[cmd]
        desc = f"{cmd}: inputs are {kind}"
    elif what == "option":
        opt = _pick(rng, [["--temperature", "nan"], ["--temperature", "-1"],
                          ["--temperature", "abc"], ["--target", "1000000"],
                          ["--target", "-100"], ["--target", "abc"], ["--size", "0", "0"],
                          ["--size", "-5", "5"], ["--mean", "0", "0", "0"], ["--std", "0"],
                          ["--std", "nan"], ["--input-shape", "0"], ["--input-shape", "-1"],
                          ["--input-shape", "1000000000", "1", "1"], ["--figure-rows", "-1"],
                          ["--rule", "bogus"], ["--format", "xml"],
                          ["--out", x_npy], ["--out", "/dev/null/sub"]])
        argv = ["explain", model, x_npy, "--out", p("out")] + opt
        if opt[0] == "--figure-rows":
            argv.append("--figure")
        expect = "any" if opt in (["--target", "-100"],) else "refuse"
        desc = f"explain {' '.join(opt)}"
    elif what == "evaluate":
        bad = _pick(rng, ["labels 99", "labels -1", "float labels", "npy not npz", "--n 0",
                          "--chunk 0", "--chunk -1", "--baseline nan", "--methods bogus",
                          "x NaN", "no x", "--n -3"])
        data_path, extra = p("data.npz"), []
        if bad == "labels 99":
            np.savez(p("d.npz"), x=images, y=np.array([99, 5]))
            data_path = p("d.npz")
        elif bad == "labels -1":
            np.savez(p("d.npz"), x=images, y=np.array([-1, 5]))
            data_path = p("d.npz")
        elif bad == "float labels":
            np.savez(p("d.npz"), x=images, y=np.array([1.5, 2.0]))
            data_path = p("d.npz")
        elif bad == "x NaN":
            np.savez(p("d.npz"), x=np.full_like(images, np.nan), y=labels)
            data_path = p("d.npz")
        elif bad == "no x":
            np.savez(p("d.npz"), y=labels)
            data_path = p("d.npz")
        elif bad == "npy not npz":
            data_path = x_npy
            expect = "any"  # x without labels is allowed by evaluate
        else:
            extra = bad.split(" ", 1)
        argv = ["evaluate", model, data_path, "--methods", "gradient"] + (
            extra if extra[:1] == ["--n"] else ["--n", "2"] + extra)
        if bad == "--methods bogus":
            argv = ["evaluate", model, data_path, "--n", "2", "--methods", "bogus"]
        desc = f"evaluate: {bad}"
    elif what == "bias-report":
        bad = _pick(rng, ["labels 99", "labels -1", "--batch-size 0", "--batch-size -1",
                          "--scales nan", "--shifts inf", "npy not npz", "--n 0"])
        data_path, extra = p("data.npz"), []
        if bad.startswith("labels"):
            np.savez(p("d.npz"), x=images, y=np.array([int(bad.split()[1]), 5]))
            data_path = p("d.npz")
        elif bad == "npy not npz":
            data_path = x_npy
        else:
            extra = bad.split(" ", 1)
        argv = ["bias-report", model, data_path] + extra
        desc = f"bias-report: {bad}"
    elif what == "compare":
        bad = _pick(rng, ["golden missing", "golden a directory", "golden a text file",
                          "golden /dev/zero", "--rtol -1", "--rtol nan", "golden .npy"])
        golden = {"golden missing": p("nope.npz"), "golden a directory": folder,
                  "golden a text file": _write(folder, "g.npz", b"not a zip"),
                  "golden /dev/zero": "/dev/zero", "golden .npy": x_npy}.get(bad, p("data.npz"))
        if golden == "/dev/zero":
            allowed = ["/dev/zero"]
        argv = ["compare", golden, p("data.npz")] + (bad.split(" ") if bad.startswith("--")
                                                     else [])
        desc = f"compare: {bad}"
    elif what == "oracle":
        # (No -o /dev/full: numpy appends ".npz" and, as root, creates /dev/full.npz.)
        bad = _pick(rng, ["-o in a missing folder", "-o a directory", "--temperatures nan",
                          "--temperatures -1", "-o an existing folder/"])
        out = {"-o in a missing folder": p("no/such/dir/o.npz"), "-o a directory": folder,
               "-o an existing folder/": folder + os.sep}.get(bad, p("o.npz"))
        argv = ["oracle", model, x_npy, "-o", out] + (bad.split(" ") if bad.startswith("--")
                                                      else [])
        desc = f"oracle: {bad}"
    elif what == "verify":
        bad = _pick(rng, ["--n-random 1000000000", "--n-random -1", "--n-random 0",
                          "--seed -1", "--input-shape 0 0 0", "--n-random 300"])
        argv = ["verify", model] + bad.split(" ")
        if bad == "--n-random 300":
            expect = "any"  # large: a clear refusal or a (streamed) run are both fine
        desc = f"verify {bad}"
    else:
        argv, expect = _pick(rng, [(["verify", model, "--n-random", "1"], "any"),
                                   (["explain", model, x_npy, "--out", p("out"), "--rule",
                                     "sign"], "any"),
                                   (["--help"], "any"),
                                   (["explain"], "refuse"), (["bogus-command"], "refuse")])
        desc = "fine: " + " ".join(os.path.basename(a) for a in argv)
    return Plan("cli", desc, argv=argv, expect=expect, allowed=allowed)
