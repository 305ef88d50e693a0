"""The long fuzz campaign: hostile models, arrays, arguments and command lines.

    python scripts/fuzz_campaign.py --cases 10000 --seed 1 --jobs 2 --timeout 30
    python scripts/fuzz_campaign.py --replay attr-1000017           # one case, full trace
    python scripts/fuzz_campaign.py --replay attr-1000017 --inline  # in this process

Runs the cases of ``tests/fuzz`` (see tests/fuzz/cases.py for the generators and
tests/fuzz/harness.py for the outcome classes) in ``--jobs`` worker processes, each
under an address-space limit and with a per-case timeout. Prints a progress bar, then a
table of outcome counts by generator and the bad cases, and writes every bad case (id,
outcome, description, first error line, traceback) to ``--out`` as JSON; any id there is
replayed with ``--replay``. Exit status 0 when no case is bad, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from refbbp._progress import progress  # noqa: E402
from tests.fuzz import cases, harness  # noqa: E402


def _replay(args):
    if args.inline:
        res = harness.replay_inline(args.replay)
    else:
        pool = harness.Pool(jobs=1, timeout=args.timeout, as_limit=args.as_limit << 30)
        res = next(iter(pool.run([args.replay])))
    print(f"{res['id']}: {res['outcome']}\n{res['desc']}\n{res['detail']}")
    if res.get("trace"):
        print("\n" + res["trace"])
    return 0 if res["outcome"] not in harness.BAD else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=1,
                   help="campaign seed: case seeds are seed * 10**6 + k (default 1; the CI "
                        "slice uses 0)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case (default 30)")
    p.add_argument("--as-limit", type=int, default=harness.AS_LIMIT >> 30,
                   help="address-space limit of a worker, GiB (default %(default)s)")
    p.add_argument("--generators", nargs="+", choices=sorted(cases.GENERATORS),
                   help="only these generators (default: all)")
    p.add_argument("--out", default="fuzz-bad.json", help="JSON of the bad cases")
    p.add_argument("--replay", metavar="ID", help="run one case and show its traceback")
    p.add_argument("--inline", action="store_true",
                   help="with --replay: in this process (no timeout or memory limit)")
    args = p.parse_args(argv)
    if args.replay:
        return _replay(args)
    if args.cases < 1 or args.jobs < 1 or not args.timeout > 0 or args.as_limit < 1:
        p.error("--cases, --jobs, --timeout and --as-limit must be positive")
    ids = cases.schedule(args.cases, args.seed, args.generators)
    pool = harness.Pool(jobs=args.jobs, timeout=args.timeout, as_limit=args.as_limit << 30)
    start = time.perf_counter()
    results = list(progress(pool.run(ids), total=len(ids), desc="fuzz"))
    seconds = time.perf_counter() - start
    bad = [r for r in results if r["outcome"] in harness.BAD]
    print(harness.outcome_table(results))
    print(f"\n{len(results)} cases in {seconds:.0f} s ({args.jobs} jobs); {len(bad)} bad")
    if bad:
        print(harness.bad_table(results, limit=100))
    with open(args.out, "w") as fh:
        json.dump({"cases": len(results), "seed": args.seed, "seconds": round(seconds, 1),
                   "counts": {o: sum(r["outcome"] == o for r in results)
                              for o in harness.OUTCOMES},
                   "bad": sorted(bad, key=lambda r: (r["outcome"], r["id"]))}, fh, indent=1)
    print(f"wrote {args.out} (replay a case: python scripts/fuzz_campaign.py --replay ID)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
