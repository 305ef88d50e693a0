"""Hostile files given to refbbp's readers (refbbp/io/files.py, inputs.py, oracle.py,
verify.py): FIFOs, devices, folders, huge declared shapes, truncated or empty archives,
object arrays, corrupt and oversized images, labels outside the model's classes, and the
memory of ``verify`` over many inputs (issue 10)."""

from __future__ import annotations

import os
import threading
import zipfile

import numpy as np
import numpy.lib.format as npformat
import pytest

from refbbp.errors import InputFileError, InputShapeError
from refbbp.io.files import read_npy, read_npz, regular_file
from refbbp._checks import check_count, check_labels
from refbbp.io.inputs import read_inputs
from refbbp.io.oracle import oracle_path, read_oracle
from refbbp.io.verify import MAX_RANDOM_INPUTS, RandomInputs, in_chunks

SHAPE = (1, 4, 4)


def _npy_header_only(path, shape, dtype="<f8", data=b""):
    """A .npy file whose header declares ``shape`` followed by ``data`` only."""
    with open(path, "wb") as fh:
        npformat.write_array_header_1_0(fh, {"descr": dtype, "fortran_order": False,
                                             "shape": shape})
        fh.write(data)
    return path


# ------------------------------------------------------------------- regular files
def test_fifo_refused_without_opening(tmp_path):
    """A FIFO named as an input blocked the CLI forever (open() waits for a writer). It is
    refused from os.stat, without being opened: the test would hang otherwise."""
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(_raises(read_inputs, [str(fifo)], SHAPE)),
                         daemon=True)
    t.start()
    t.join(10)
    assert done and isinstance(done[0], InputFileError) and "FIFO" in str(done[0])


def _raises(func, *args):
    try:
        func(*args)
    except Exception as exc:   # noqa: BLE001 - the test inspects it
        return exc
    return None


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a device"), ("/dev/null", "a device")])
def test_devices_refused(path, kind):
    """/dev/zero was read to the end (forever) as an input or a model; devices are
    refused before any read."""
    with pytest.raises(InputFileError, match=f"{path} is {kind}: expected a regular file"):
        regular_file(path, "input file")


def test_directory_refused(tmp_path):
    """A folder named like an input gave '[Errno 21] Is a directory'; now a clear error."""
    d = tmp_path / "inputs.npy"
    d.mkdir()
    with pytest.raises(InputFileError, match="is a directory"):
        read_inputs([str(d)], SHAPE)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_inputs([str(tmp_path / "nope.npy")], SHAPE)


def test_file_larger_than_the_cap_refused_before_reading(tmp_path):
    """Files are size-capped from os.stat, before being read."""
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2,) + SHAPE))
    assert regular_file(p) == p.stat().st_size
    with pytest.raises(InputFileError, match="more than the"):
        regular_file(p, "input file", max_bytes=100)


# ------------------------------------------------------------------------ .npy
def test_npy_huge_declared_shape_refused_before_allocation(tmp_path):
    """A 100-byte .npy declaring 10**12 float64 values made numpy try to allocate 8 TB
    (MemoryError, or a long read). The header is checked against the budget first."""
    p = _npy_header_only(tmp_path / "huge.npy", (10**12,) + SHAPE[1:], data=b"\0" * 100)
    with pytest.raises(InputFileError, match=r"declares an array of shape \(1000000000000, "
                                             r"4, 4\).*more than the"):
        read_npy(p)


def test_npy_truncated_data_refused(tmp_path):
    """A .npy whose data is shorter than its header says is refused as truncated."""
    p = _npy_header_only(tmp_path / "short.npy", (3,) + SHAPE, data=b"\0" * 40)
    with pytest.raises(InputFileError, match="truncated"):
        read_npy(p)


def test_npy_object_array_refused_clearly(tmp_path):
    """Object arrays (which need pickle) are refused with a message saying so."""
    p = tmp_path / "obj.npy"
    np.save(p, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="object array .* never unpickles"):
        read_inputs([str(p)], SHAPE)


@pytest.mark.parametrize("content", [b"", b"hello", b"\x93NUMPY\x01"])
def test_npy_garbage_refused(tmp_path, content):
    p = tmp_path / "bad.npy"
    p.write_bytes(content)
    with pytest.raises(InputFileError, match="not a readable .npy array"):
        read_npy(p)


def test_npy_budget_is_a_parameter(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((4,) + SHAPE))
    assert read_npy(p).shape == (4,) + SHAPE
    with pytest.raises(InputFileError, match="more than the"):
        read_npy(p, max_bytes=100)


# ------------------------------------------------------------------------ .npz
def test_npz_empty_file_refused(tmp_path):
    """An empty .npz raised numpy's EOFError/BadZipFile (a traceback in the CLI)."""
    p = tmp_path / "x.npz"
    p.write_bytes(b"")
    with pytest.raises(InputFileError, match=r"not a readable .npz archive \(the file is "
                                             r"empty\)"):
        read_npz(p)


def test_npz_truncated_refused(tmp_path):
    """A truncated .npz raised BadZipFile; now a clear error naming the file."""
    full = tmp_path / "full.npz"
    np.savez(full, x=np.zeros((5,) + SHAPE))
    p = tmp_path / "x.npz"
    raw = full.read_bytes()
    p.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputFileError, match=f"{p}: not a readable .npz archive"):
        read_inputs([str(p)], SHAPE)


def test_npz_corrupt_member_refused(tmp_path):
    """Flipped bytes inside a compressed member (CRC or zlib error) are refused."""
    p = tmp_path / "x.npz"
    np.savez_compressed(p, x=np.random.default_rng(0).random((50,) + SHAPE))
    raw = bytearray(p.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 16] = bytes(16)
    p.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match="not a readable .npz archive|not a readable "
                                             ".npy array"):
        read_npz(p)


def test_npz_bomb_refused_before_decompression(tmp_path):
    """A small compressed archive declaring a huge array (zeros compress to nothing) is
    refused from the member's header, before decompressing."""
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as fh:
        npformat.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                             "shape": (1 << 20, 1024)})   # 8 GiB
        for _ in range(8):
            fh.write(bytes(1 << 20))
    assert p.stat().st_size < 100_000
    with pytest.raises(InputFileError, match="array 'x': declares an array of shape"):
        read_npz(p)


def test_npz_budget_is_for_all_members_together(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(100), b=np.zeros(100))              # 800 bytes each
    assert set(read_npz(p, max_bytes=1600)) == {"a", "b"}
    with pytest.raises(InputFileError, match="array 'b'.*left of the budget"):
        read_npz(p, max_bytes=1200)


def test_npz_object_member_refused(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, x=np.array([None, 1], dtype=object))
    with pytest.raises(InputFileError, match="object array"):
        read_npz(p)


def test_npz_given_an_npy_says_so(tmp_path):
    """compare given a .npy raised BadZipFile; now it says the file is a .npy array."""
    p = tmp_path / "golden.npz"
    with open(p, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(InputFileError, match=r"it is a .npy array, not an .npz archive"):
        read_oracle(p)


def test_oracle_meta_not_json_refused(tmp_path):
    p = tmp_path / "golden.npz"
    np.savez(p, meta=np.array("{not json"), x=np.zeros((1, 2)))
    with pytest.raises(InputFileError, match="field 'meta' is not the JSON object"):
        read_oracle(p)


def test_oracle_non_numeric_field_refused(tmp_path):
    p = tmp_path / "golden.npz"
    np.savez(p, x=np.array(["a", "b"]))
    with pytest.raises(InputFileError, match="field 'x' has dtype <U1, expected numbers"):
        read_oracle(p)


@pytest.mark.parametrize("name, written", [("out.npz", "out.npz"), ("out.npy", "out.npy.npz"),
                                           ("out", "out.npz")])
def test_oracle_path_is_what_numpy_savez_writes(tmp_path, name, written):
    """``refbbp oracle -o out.npy`` wrote out.npy.npz (numpy.savez appends .npz) but
    reported out.npy. oracle_path gives the real name, exactly numpy's."""
    assert oracle_path(tmp_path / name) == str(tmp_path / written)
    np.savez_compressed(tmp_path / name, a=np.zeros(1))
    assert (tmp_path / written).exists()


# ---------------------------------------------------------------------- images
def test_image_truncated_refused(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    p = tmp_path / "img.png"
    pil.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(p)
    raw = p.read_bytes()
    p.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputFileError, match="not a readable image"):
        read_inputs([str(p)], (1, 64, 64))


def test_image_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    """An image declaring more pixels than MAX_IMAGE_PIXELS is refused from its header
    (Pillow only warned below twice its own limit, and then decoded it)."""
    pil = pytest.importorskip("PIL.Image")
    from refbbp.io import inputs

    p = tmp_path / "big.png"
    pil.new("L", (300, 200)).save(p)
    monkeypatch.setattr(inputs, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    with pytest.raises(InputFileError, match="declares 300 x 200 pixels"):
        read_inputs([str(p)], (1, 200, 300))


# ---------------------------------------------------------------------- labels
@pytest.mark.parametrize("y, words", [
    (np.array([0, 1, 4]), ["label 4 at position 2", "0 <= label < 4"]),
    (np.array([-1, 0, 1]), ["label -1 at position 0", "0 <= label < 4"]),
    (np.array([0.0, 1.0, 2.0]), ["integers of shape (3,)", "float64"]),
    (np.array([True, False, True]), ["integers", "bool"]),
    (np.array([0, 1]), ["integers of shape (3,)", "shape (2,)"]),
    (np.array(["0", "1", "2"]), ["integers", "<U1"]),
])
def test_labels_checked_against_the_model_classes(y, words):
    """Labels outside [0, n_classes), non-integer labels and a wrong count are refused,
    naming the first bad label and the valid range (they used to be accepted and counted
    as wrong predictions)."""
    with pytest.raises(ValueError) as exc:
        check_labels(y, 3, 4)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))
    np.testing.assert_array_equal(check_labels(np.array([0, 3, 2], np.uint8), 3, 4), [0, 3, 2])


# ------------------------------------------------------------------------ verify
def test_random_inputs_stream_in_chunks_with_numpy_values():
    """verify --n-random N drew all N inputs at once (10**8 inputs: 6 GB for 8 values
    each). RandomInputs draws them a chunk at a time, with the same values."""
    r = RandomInputs((2, 3), 10, seed=4, chunk=4)
    batches = list(r)
    assert len(r) == 3 and [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches),
                                  np.random.default_rng(4).random((10, 2, 3)))
    assert [len(b) for b in in_chunks(np.zeros((5, 2)), 2)] == [2, 2, 1]


@pytest.mark.parametrize("n, error", [(MAX_RANDOM_INPUTS + 1, ValueError), (-1, ValueError),
                                      (2.5, TypeError), (True, TypeError)])
def test_random_inputs_count_validated(n, error):
    with pytest.raises(error, match="number of random inputs"):
        RandomInputs((2,), n)


def test_inputs_shape_errors_still_name_the_file(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 3)))
    with pytest.raises(InputShapeError, match=f"{p}: shape"):
        read_inputs([str(p)], SHAPE)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                          (True, TypeError), ("3", TypeError)])
def test_check_count_refuses_nonsense(value, error):
    with pytest.raises(error, match="chunk must be"):
        check_count(value, "chunk")
    assert check_count(np.int32(3), "chunk") == 3


@pytest.mark.parametrize("kw", [{"group": 0}, {"chunk": -1}, {"max_batch": 2.5}])
def test_evaluate_counts_checked_before_work(kw):
    """evaluate(group=0) failed deep inside with range()'s 'arg 3 must not be zero'; the
    counts are checked first, naming the argument."""
    from refbbp.evaluate import evaluate

    name = next(iter(kw))
    with pytest.raises((TypeError, ValueError), match=f"{name} must be"):
        evaluate("never-read.onnx", np.zeros((2, 1, 4, 4)), ["gradient"], **kw)
