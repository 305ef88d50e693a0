"""The oracle format's versions: version 2 names the local biases ``bias_x``; files of
version 1 (refbbp 0.1.0: ``bias``, ``bias_all``, ``node/<k>/bias``) are still read and
compared under the new names."""

from __future__ import annotations

import json

import numpy as np

import refbbp
from refbbp.io.oracle import FORMAT_VERSION, compare, read_oracle, write_oracle
from tests.models import build_cnn


def _as_version_1(path, out):
    """Rewrite a version-2 file as refbbp 0.1.0 wrote it."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        old = {}
        for k in z.files:
            if k == "meta":
                continue
            name = {"bias_x": "bias", "bias_x_all": "bias_all"}.get(k, k)
            if k.startswith("node/") and k.endswith("/bias_x"):
                name = k[: -len("_x")]
            old[name] = z[k]
    meta["format_version"] = 1
    meta["fields"] = sorted(old)
    np.savez(out, meta=np.array(json.dumps(meta)), **old)


def test_version_1_files_are_read_under_the_new_names(rng, tmp_path):
    model, x = build_cnn(rng, batch=2)
    net = refbbp.load(model)
    new = tmp_path / "v2.npz"
    write_oracle(new, net, x, rules=("sign",), layers=True)
    old = tmp_path / "v1.npz"
    _as_version_1(new, old)
    with np.load(old) as z:
        assert "bias" in z.files and "bias_x" not in z.files and "node/1/bias" in z.files

    meta_new, fields_new = read_oracle(new)
    meta_old, fields_old = read_oracle(old)
    assert meta_new["format_version"] == FORMAT_VERSION == 2
    assert meta_old["format_version"] == 1
    assert sorted(fields_old) == sorted(fields_new)
    for k in fields_new:
        np.testing.assert_array_equal(fields_old[k], fields_new[k], err_msg=k)
    assert "bias_x" in fields_new and "bias_x_all" in fields_new and "node/1/bias_x" in fields_new

    for golden, candidate in ((old, new), (new, old)):
        rows = compare(golden, candidate)
        assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
        assert not any("ignored" in r["why"] for r in rows)
