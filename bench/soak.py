"""Soak: many invocations of 50 log lines each through the real extension; nothing lost, nothing grows.

Runs the extension from the source tree under the local simulator (freeze on, default flush
strategy) against a real OtlpSink, then checks and reports:

- every log line (each carries a unique id) delivered exactly once, nothing counted as dropped;
- the extension's RSS (VmRSS of its process, read between invocations) after warm-up vs the end;
- the extension's overhead per invocation (runtime done -> its /next), median and p99 of the
  first and the last quarter.

``python -m bench.soak --invocations 10000 --max-seconds 840`` (stops early, cleanly, at the time
bound and reports what it did). tests/test_reliability_load.py runs it with 300 invocations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from lambda_otel.local.simulator import Simulator
from lambda_otel.local.sink import OtlpSink
from tests.reliability_support import (
    expected_lines,
    function_lines,
    quantile,
    shutdown_summary,
    vm_rss_kb,
)
from tests.support import EXTENSION_NAME, FUNCTIONS, free_port, write_launcher

LINES = 50


@dataclass
class SoakResult:
    invocations: int = 0
    lines_expected: int = 0
    lines_delivered: int = 0
    duplicates: int = 0
    missing: int = 0
    final_flush: str = ""  # the extension's final-flush line, when a count is short
    dropped: Dict[str, int] = field(default_factory=dict)
    statuses: Dict[str, int] = field(default_factory=dict)
    rss_kb_warm: Optional[int] = None  # after the first 10 % (at least 20 invocations)
    rss_kb_end: Optional[int] = None
    rss_kb_max: Optional[int] = None
    overhead_ms_first_quarter: Dict[str, float] = field(default_factory=dict)
    overhead_ms_last_quarter: Dict[str, float] = field(default_factory=dict)
    shutdown_exit_code: Optional[int] = None
    shutdown_in_time: bool = False
    wall_s: float = 0.0
    stopped_early: bool = False

    @property
    def rss_growth_kb(self) -> Optional[int]:
        if self.rss_kb_warm is None or self.rss_kb_end is None:
            return None
        return self.rss_kb_end - self.rss_kb_warm


def _summary(values: List[float]) -> Dict[str, float]:
    return {"median": round(quantile(values, 0.5), 2), "p99": round(quantile(values, 0.99), 2), "n": len(values)}


def run_soak(invocations: int, max_seconds: float = 600.0, lines: int = LINES,
             extra_env: Optional[Dict[str, str]] = None) -> SoakResult:
    """One soak; never raises on a finding (the caller asserts on the result)."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="lambda-otel-soak-"))
    sink = OtlpSink().start()
    sim = None
    result = SoakResult()
    try:
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_launcher(ext_dir)
        env = {
            "LAMBDA_OTEL_RECEIVER_PORT": str(free_port()),
            "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
            "LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint,
            "LAMBDA_OTEL_LOG_LEVEL": "info",
        }
        env.update(extra_env or {})
        sim = Simulator(extensions_dir=str(ext_dir), handler="e2e_handlers.handler", handler_dir=str(FUNCTIONS),
                        env=env, timeout_s=10.0)
        sim.start(timeout=60)
        pid = sim.extension_pids[EXTENSION_NAME]
        warm_at = max(20, invocations // 10)
        results, overheads = [], []
        for i in range(invocations):
            if time.monotonic() - started > max_seconds:
                result.stopped_early = True
                break
            r = sim.invoke({"logs": lines}, timeout=60)
            results.append(r)
            result.statuses[r.status] = result.statuses.get(r.status, 0) + 1
            if r.extension_overhead_ms is not None:
                overheads.append(r.extension_overhead_ms)
            if (i + 1) % 10 == 0 or i + 1 == warm_at:
                rss = vm_rss_kb(pid)
                if rss is not None:
                    result.rss_kb_max = max(result.rss_kb_max or 0, rss)
                    if i + 1 == warm_at:
                        result.rss_kb_warm = rss
                    result.rss_kb_end = rss
        result.invocations = len(results)
        q = max(1, len(overheads) // 4)
        result.overhead_ms_first_quarter = _summary(overheads[:q])
        result.overhead_ms_last_quarter = _summary(overheads[-q:])

        down = sim.shutdown("spindown", timeout=60)
        if down is not None:
            ext = down.extensions[EXTENSION_NAME]
            result.shutdown_exit_code, result.shutdown_in_time = ext.exit_code, ext.exited_in_time
        output = "\n".join(line for _, line in sim.process_output(EXTENSION_NAME))
        summary = shutdown_summary(output) or {"dropped": {"<no shutdown summary>": -1}}
        result.dropped = summary["dropped"]
        seen = function_lines(sink)
        expected = expected_lines(results, lines)
        result.lines_expected = len(expected)
        result.lines_delivered = len(set(seen) & expected)
        result.duplicates = sum(n - 1 for n in seen.values() if n > 1)
        result.missing = len(expected - set(seen))
        if result.missing:
            result.final_flush = next((line for line in reversed(output.splitlines()) if "final flush:" in line),
                                      "(no final flush line)")
    finally:
        if sim is not None:
            sim.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)
        result.wall_s = round(time.monotonic() - started, 1)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invocations", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=840.0)
    parser.add_argument("--lines", type=int, default=LINES)
    args = parser.parse_args(argv)
    result = run_soak(args.invocations, args.max_seconds, args.lines)
    report = asdict(result)
    report["rss_growth_kb"] = result.rss_growth_kb
    print(json.dumps(report, indent=2))
    ok = (result.missing == 0 and result.duplicates == 0 and not result.dropped and result.shutdown_exit_code == 0
          and result.shutdown_in_time and result.statuses == {"success": result.invocations})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
