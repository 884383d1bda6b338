"""Chatty functions: the sustained rate of ~110-byte log lines each flush strategy carries without loss.

The real extension runs under the simulator (real freezes) beside a function that prints lines at a
fixed pace for ``SECONDS`` per invocation, ``INVOCATIONS`` invocations back to back, exporting to a
decoding OtlpSink that answers at once. For each strategy and memory size the asked rate doubles from
``START_RATE`` until a run loses a line (or ``MAX_RATE``); the table gives the highest rate the
function achieved (it cannot always print as fast as asked) at which every line arrived, and the
first that lost some, with what the extension counted (its final-flush line).

Run: ``python -m bench.bench_chatty`` (``--quick``: 128 MB, fewer rates).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lambda_otel.local.tools import free_port

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = REPO / "tests" / "fixtures" / "functions"
STRATEGIES = ("default", "end", "periodic", "continuous")
MEMORIES = (128, 1769)
SECONDS = 1.0
INVOCATIONS = 3
START_RATE = 5_000
MAX_RATE = 80_000
LINE_RE = re.compile(r"^chatty (\d{6}) of ([0-9a-f-]{36}) x+$")


def _launcher(ext_dir: Path) -> None:
    path = ext_dir / "lambda-otel"
    path.write_text(f"#!/bin/sh\nexport PYTHONPATH={shlex.quote(str(REPO))}\n"
                    f"exec {shlex.quote(sys.executable)} -m lambda_otel\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def run_once(strategy: str, memory_mb: int, rate: int) -> Tuple[int, int, str, float]:
    """(lines sent, lines delivered, the extension's final-flush line, the rate the function
    achieved in lines/s: it cannot always print as fast as asked) for one run."""
    from lambda_otel.local.simulator import Simulator
    from lambda_otel.local.sink import OtlpSink, any_value

    root = Path(tempfile.mkdtemp(prefix="bench-chatty-"))
    ext_dir = root / "extensions"
    ext_dir.mkdir()
    _launcher(ext_dir)
    sink = OtlpSink().start()
    env = {"LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint, "LAMBDA_OTEL_FLUSH_STRATEGY": strategy,
           "LAMBDA_OTEL_RECEIVER_PORT": str(free_port()), "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
           "LAMBDA_OTEL_LOG_LEVEL": "warning"}
    sim = Simulator(extensions_dir=str(ext_dir), handler="chatty_handlers.handler", handler_dir=str(FUNCTIONS),
                    env=env, memory_mb=memory_mb, timeout_s=30)
    lines = int(rate * SECONDS)
    try:
        sim.start(timeout=30)
        seconds = 0.0
        for _ in range(INVOCATIONS):
            res = sim.invoke({"lines": lines, "rate": rate}, timeout=120)
            seconds += json.loads(res.response or b"{}").get("seconds", SECONDS)
        sim.shutdown("spindown", timeout=30)
        sink.wait_for(lambda: not sink.open_requests(), timeout=10)
        got = {any_value(lr.body).strip() for lr in sink.log_records()
               if isinstance(any_value(lr.body), str) and LINE_RE.match(any_value(lr.body).strip())}
        summary = next((line for _, line in reversed(sim.process_output("lambda-otel")) if "final flush:" in line),
                       "(no final flush line: nothing was dropped)")
        return lines * INVOCATIONS, len(got), summary, lines * INVOCATIONS / max(seconds, 1e-9)
    finally:
        sim.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)


def sustained(strategy: str, memory_mb: int, max_rate: int, log) -> Dict[str, object]:
    best, first_loss = 0.0, None
    rate = START_RATE
    while rate <= max_rate:
        sent, got, summary, achieved = run_once(strategy, memory_mb, rate)
        log(f"  {strategy:10s} {memory_mb:5d} MB {rate:7,d} lines/s asked, {achieved:7,.0f} achieved: {got:,}/{sent:,}")
        if got < sent:
            first_loss = (achieved, sent - got, summary)
            break
        best = achieved
        rate *= 2
    return {"strategy": strategy, "memory_mb": memory_mb, "best": best, "first_loss": first_loss}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 MB only, up to 20,000 lines/s")
    args = parser.parse_args(argv)
    memories = (128,) if args.quick else MEMORIES
    max_rate = 20_000 if args.quick else MAX_RATE
    started = time.monotonic()
    results = [sustained(s, m, max_rate, lambda line: print(line, file=sys.stderr, flush=True))
               for m in memories for s in STRATEGIES]
    print(f"\n{INVOCATIONS} back-to-back invocations of {SECONDS:g} s each, ~110-byte lines, "
          f"rates doubling from {START_RATE:,}/s ({time.monotonic() - started:.0f} s)\n")
    print("==========  ======  ============================  ==========================================")
    print("strategy    memory  highest rate with no loss     first rate with a loss: lost (counted as)")
    print("==========  ======  ============================  ==========================================")
    for r in results:
        loss = r["first_loss"]
        if loss is None:
            lost = f"none up to {max_rate:,}/s"
        else:
            m = re.search(r"dropped over lifetime (\{.*?\})", loss[2])
            lost = f"{loss[0]:,.0f}/s: {loss[1]:,} ({m.group(1) if m else loss[2]})"
        print(f"{r['strategy']:10s}  {r['memory_mb']:4d}MB  {r['best']:>9,.0f} lines/s              {lost}")
    print("==========  ======  ============================  ==========================================")
    return 0


if __name__ == "__main__":
    sys.exit(main())
