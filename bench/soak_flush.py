"""Issue 6's full flush soak: 200 invocations per strategy with real freezes of seconds.

The same scenario and assertions as ``tests/test_flush_e2e.py`` (``StrategySoakTest``: no export
request open at any freeze or started while frozen, every function log line and invocation span
exactly once, metric totals equal to the invocations), with the full plan instead of CI's reduced
one. Runs the real extension from this checkout under the simulator, a sink on 127.0.0.1.

    .venv/bin/python -m bench.soak_flush [--invocations 200] [--long-freezes 8] [--long-freeze-s 2]

Takes a few minutes (the freezes are real time). Exit status 0 = every strategy passed.
"""

from __future__ import annotations

import argparse
import sys
import unittest
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_flush_e2e import SoakPlan, StrategySoakTest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=200, choices=range(1, 5001), metavar="N")
    parser.add_argument("--short-gap-max-s", type=float, default=0.2)
    parser.add_argument("--long-freezes", type=int, default=8)
    parser.add_argument("--long-freeze-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--strategies", default="default,end,periodic,continuous")
    args = parser.parse_args(argv)

    class FullSoak(StrategySoakTest):
        PLAN = SoakPlan(invocations=args.invocations, short_gap_max_s=min(args.short_gap_max_s, 5.0),
                        long_freezes=args.long_freezes, long_freeze_s=min(args.long_freeze_s, 30.0), seed=args.seed)
        REPORTS = []

    suite = unittest.TestSuite(FullSoak(f"test_{s.strip()}") for s in args.strategies.split(",") if s.strip())
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print(f"\nplan: {FullSoak.PLAN}")
    print(f"{'strategy':<11} {'inv':>4} {'freezes':>7} {'frozen s':>8} {'requests':>8} {'spans before SHUTDOWN':>21} "
          f"{'overhead ms median/p99/max':>27} {'shutdown ms':>11} {'wall s':>6}")
    for r in FullSoak.REPORTS:
        o = r["overhead"]
        print(f"{r['strategy']:<11} {r['invocations']:>4} {r['freezes']:>7} {r['frozen_s']:>8.1f} {r['requests']:>8} "
              f"{r['before_shutdown']:>21} {o['median']:>9.1f}/{o['p99']:>6.1f}/{o['max']:>6.1f}     "
              f"{r['shutdown_ms']:>11.0f} {r['wall_s']:>6.1f}")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
