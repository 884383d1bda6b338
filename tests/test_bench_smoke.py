"""Smoke run of bench/: every benchmark runs at tiny sizes and prints its rows (no timing asserted).

It builds the layer with ./build_layer.sh like tests/test_layer.py, so it needs the package index.
Also checks the two things the benchmarks rely on: the simulator's spawn instant and the table code.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import shutil
import unittest
from pathlib import Path

from bench.common import Row, Stats, rst_table, write_noop_extension

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600  # generous: a shared, loaded machine; the quick run itself is meant to take < 60 s
BENCH_ROWS = {
    "ready": 2,
    "startup": 9,
    "memory": 2,
    "throughput": 1,
    "convert": 1,
    "listener": 1,
    "overhead": 6,
    "shutdown": 1,
    "layer": 2,
}


class QuickRunTest(unittest.TestCase):
    def test_run_all_quick_prints_every_row(self) -> None:
        proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick"], cwd=REPO,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        self.assertEqual(proc.returncode, 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
        lines = proc.stdout.splitlines()
        rules = [i for i, line in enumerate(lines) if re.fullmatch(r"[= ]+", line)]
        self.assertGreaterEqual(len(rules), 3, proc.stdout)
        body = lines[rules[1] + 1:rules[2]]
        for bench, count in BENCH_ROWS.items():
            rows = [line for line in body if line.split("  ", 1)[0] == bench]
            self.assertEqual(len(rows), count, f"{bench} rows:\n{proc.stdout}")
            for row in rows:
                self.assertRegex(row, r"(met|MISSED|–)\s*$")
                self.assertRegex(row, r"\d")  # a number was measured
        self.assertIn("quick run", proc.stdout)


class TableTest(unittest.TestCase):
    def test_ratio_and_verdicts(self) -> None:
        met = Row("x", "m", Stats([2.0, 4.0, 3.0]), Stats([1.0, 1.0, 2.0]), "ms", "≤ 4×", met=True)
        self.assertEqual(met.ratio, 3.0)
        missed = Row("y", "n", Stats([5.0]), None, "MiB", "≤ 4 MiB", met=False, note="why")
        table = rst_table([met, missed])
        self.assertIn("3.00×", table)
        self.assertIn("3.00 ms (2.00–4.00)", table)
        self.assertIn("MISSED", table)
        self.assertIn("- y / n: why", table)

    def test_percentile_is_nearest_rank(self) -> None:
        stats = Stats([float(i) for i in range(1, 101)])
        self.assertEqual(stats.percentile(99), 99.0)
        self.assertEqual(stats.percentile(50), 50.0)
        self.assertEqual(Stats([7.0]).percentile(99), 7.0)


class SpawnInstantTest(unittest.TestCase):
    """ExtensionInfo.spawned_at: taken before the fork, so it precedes registration and the first /next."""

    def test_spawned_before_registered_before_first_next(self) -> None:
        from lambda_otel.local.simulator import Simulator

        tmp = Path(tempfile.mkdtemp(prefix="bench-spawn-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        ext_dir = write_noop_extension(tmp / "extensions", "noop")
        before = time.monotonic()
        sim = Simulator(extensions_dir=str(ext_dir), init_timeout_s=30)
        self.addCleanup(sim.stop)
        sim.start(wait=False)
        info = sim.wait_for(lambda: next((e for e in sim.extensions if e.first_next_at), None), 30, "first /next")
        self.assertEqual(info.name, "noop")
        self.assertIsNotNone(info.spawned_at)
        self.assertLessEqual(before, info.spawned_at.mono)
        self.assertLessEqual(info.spawned_at.mono, info.registered_at.mono)
        self.assertLessEqual(info.registered_at.mono, info.first_next_at.mono)
        self.assertEqual(info.pid, sim.extension_pids["noop"])


if __name__ == "__main__":
    unittest.main()
