"""The CI slice of the fuzz tier: 300 fixed cases (campaign seed 0), no bad outcome.

The slice runs with the normal tests (about 5 s on 2 cores; each case in a worker
process with a timeout and an address-space limit, see tests/fuzz/harness.py). On
failure it prints the table of outcomes by generator and every bad case with its id,
class and first error line; replay one with
``python scripts/fuzz_campaign.py --replay <id>`` (``--inline`` for a debugger).
The long campaign is ``scripts/fuzz_campaign.py --cases 10000`` (README, "Fuzzing").
"""

from __future__ import annotations

import pytest

from tests.fuzz import cases, harness

#: Cases in the slice and the seconds one case may take (a hang is a bad outcome).
SLICE_CASES = 300
SLICE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def slice_results():
    ids = cases.schedule(SLICE_CASES, seed=0)
    return list(harness.Pool(jobs=2, timeout=SLICE_TIMEOUT).run(ids))


def test_fuzz_schedule_is_deterministic_and_covers_every_generator():
    """The slice is the same cases on every run, and every generator has some."""
    ids = cases.schedule(SLICE_CASES, seed=0)
    assert ids == cases.schedule(SLICE_CASES, seed=0)
    assert len(set(ids)) == SLICE_CASES
    assert {cases.parse_id(i)[0] for i in ids} == set(cases.GENERATORS)


def test_fuzz_slice_has_no_bad_outcome(slice_results):
    """Every malformed model, array, argument and command line of the slice is either
    handled (``ok``) or refused with a clear error: no crash, hang, unclear exception,
    memory past the budget, wrong acceptance or stray read."""
    assert len(slice_results) == SLICE_CASES
    bad = [r for r in slice_results if r["outcome"] in harness.BAD]
    print(harness.outcome_table(slice_results))
    if bad:
        print(harness.bad_table(slice_results))
    assert not bad, (f"{len(bad)} of {len(slice_results)} fuzz cases are bad:\n"
                     + harness.bad_table(slice_results, limit=40)
                     + "\n(replay: python scripts/fuzz_campaign.py --replay ID)")


def test_fuzz_valid_models_are_ok(slice_results):
    """The unmutated base models pass every check (so the harness's reference checks
    cannot fail on their own and hide a real refusal)."""
    valid = [r for r in slice_results if r["gen"] == "valid"]
    assert valid and all(r["outcome"] == "ok" for r in valid), valid


def test_fuzz_harness_detects_a_stray_read(tmp_path):
    """The sentinel works: a call that reads a file outside its folder is a stray read
    (the audit hook and the sentinel's access time both see it)."""
    from tests.fuzz.mutations import SECRET_NAME

    root = tmp_path
    harness.prepare_root(str(root))
    folder = root / "case"
    folder.mkdir()
    harness._secret_reset(str(root / SECRET_NAME))
    assert not harness._secret_read(str(root / SECRET_NAME))
    (root / SECRET_NAME).read_bytes()
    assert harness._secret_read(str(root / SECRET_NAME))


def test_fuzz_classification_of_exceptions():
    """A RefbbpError and an explicit ``raise ValueError`` inside refbbp are refusals; a
    KeyError, or a ValueError from NumPy, is unclear; a plain MemoryError is budget."""
    import numpy as np

    from refbbp.bbp.propagate import check_temperature

    def outcome(f):
        try:
            f()
        except Exception as exc:
            return harness.classify_exception(exc)[0]
        raise AssertionError("no exception")

    assert outcome(lambda: check_temperature(-1.0)) == "refused"
    assert outcome(lambda: {}["x"]) == "unclear"
    assert outcome(lambda: np.zeros(-1)) == "unclear"

    def oom():
        raise MemoryError("no memory")
    assert outcome(oom) == "budget"
