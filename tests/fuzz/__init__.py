"""refbbp's fuzz tier: hostile models, arrays, arguments and command lines.

* :mod:`tests.fuzz.mutations`: the valid base models (built with ``onnx.helper``, plus
  the bundled digits model) and their protobuf-level and structural mutations;
* :mod:`tests.fuzz.cases`: the case generators. A case is ``(generator, seed)`` and its
  id is ``"<generator>-<seed>"``: everything a case does is a pure function of the two,
  so any case is replayed from its id alone;
* :mod:`tests.fuzz.harness`: runs cases in worker processes (timeout, address-space
  limit, an audit hook for stray reads), classifies each outcome and prints the tables;
* ``test_fuzz_slice.py``: a small deterministic slice run with the normal tests;
  ``scripts/fuzz_campaign.py``: the long campaign (README, "Fuzzing").
"""
