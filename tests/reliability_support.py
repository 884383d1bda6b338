"""Shared helpers for the reliability and security tests (issue 9).

Everything runs for real: the extension process under the simulator, the function in awslambdaric,
a real OtlpSink. The helpers here only add what those tests need on top of tests/support.py:
an extension launcher with extra code on its PYTHONPATH (a sitecustomize for fault injection or
an audit hook, for the extension process only), accounting of exported records by the unique
ids the function prints, and reading the extension's shutdown summary line.
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from lambda_otel.local.simulator import Simulator
from lambda_otel.local.sink import OtlpSink
from tests.support import EXTENSION_NAME, FUNCTIONS, ExtensionTestCase, counter_total, write_launcher

# The e2e handler prints "text line {i} of {request_id}": unique per invocation and line.
LINE_RE = re.compile(r"^text line (\d+) of ([0-9a-f-]{36})$")
SUMMARY_RE = re.compile(r"final flush: sent (\{.*?\}), unsent at deadline (\d+), dropped over lifetime (\{.*?\}), ")


def expected_lines(results: Iterable, per_invocation: int) -> set:
    return {f"text line {i} of {r.request_id}" for r in results for i in range(per_invocation)}


def function_lines(sink: OtlpSink) -> Counter:
    """How often each function line reached the sink in an accepted (2xx) request."""
    seen: Counter = Counter()
    for item in sink.log_items():
        text = item.record.body.string_value
        if LINE_RE.match(text):
            seen[text] += 1
    return seen


def records_in_failed_requests(sink: OtlpSink) -> Dict[str, int]:
    """Records per signal in requests the sink decoded but did not accept (answered non-2xx)."""
    from lambda_otel import otlp

    out = {"traces": 0, "metrics": 0, "logs": 0}
    for req in sink.requests:
        if req.decoded is None or req.status is None or 200 <= req.status < 300 or req.signal is None:
            continue
        items = getattr(req.decoded, otlp.spec(req.signal).items_field)
        out[req.signal] += sum(otlp.count_records(req.signal, item) for item in items)
    return out


def shutdown_summary(output: str) -> Optional[dict]:
    """The extension's one shutdown line: {"sent": {...}, "unsent": n, "dropped": {reason: n}}."""
    matches = SUMMARY_RE.findall(output)
    if not matches:
        return None
    sent, unsent, dropped = matches[-1]
    return {"sent": ast.literal_eval(sent), "unsent": int(unsent), "dropped": ast.literal_eval(dropped)}


def dropped_by(points, signal: Optional[str] = None, reason: Optional[str] = None) -> int:
    attrs = {}
    if signal:
        attrs["signal"] = signal
    if reason:
        attrs["reason"] = reason
    return counter_total(points, "lambda_otel.dropped", **attrs)


def vm_rss_kb(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[index]


class ReliabilityTestCase(ExtensionTestCase):
    """ExtensionTestCase plus a simulator whose extension gets ``extra_path`` on its PYTHONPATH."""

    def make_sim_with(self, env: Dict[str, str], extra_path: Optional[Path] = None,
                      handler: str = "e2e_handlers.handler", **kwargs) -> Simulator:
        root = Path(tempfile.mkdtemp(prefix="lambda-otel-rel-"))
        self.addCleanup(shutil.rmtree, root, True)
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_launcher(ext_dir, extra_path=extra_path)
        kwargs.setdefault("timeout_s", 3.0)
        kwargs.setdefault("handler_dir", str(FUNCTIONS))
        sim = Simulator(extensions_dir=str(ext_dir), handler=handler, env=env, **kwargs)
        self.addCleanup(sim.stop)
        return sim

    def make_site_dir(self, source: str) -> Path:
        """A folder with ``sitecustomize.py`` = ``source`` (for the extension process only)."""
        site = Path(tempfile.mkdtemp(prefix="lambda-otel-site-"))
        self.addCleanup(shutil.rmtree, site, True)
        (site / "sitecustomize.py").write_text(source)
        return site

    def assert_clean_exits(self, sim: Simulator) -> None:
        """Every shutdown so far: the extension exited by itself with 0, before the deadline."""
        self.assertTrue(sim.shutdowns)
        for down in sim.shutdowns:
            ext = down.extensions[EXTENSION_NAME]
            self.assertEqual(ext.exit_code, 0, f"{down.reason}: {ext}\n{self.extension_output(sim)}")
            self.assertTrue(ext.exited_in_time, f"{down.reason}: {ext}\n{self.extension_output(sim)}")
            self.assertLess(ext.exited_at.wall * 1000, down.deadline_ms)


# An audit hook for the extension process only (installed through sitecustomize): every name
# lookup and every connect, with a CLOCK_MONOTONIC time shared with the simulator's Instant.mono.
AUDIT_SITECUSTOMIZE = r'''
import json, os, sys, time

_path = os.environ.get("LAMBDA_OTEL_TEST_AUDIT_FILE")
if _path:
    _fh = open(_path, "a", buffering=1, encoding="utf-8")
    _events = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.connect",
               "socket.gethostbyaddr"}

    def _hook(event, args):
        if event not in _events:
            return
        if event == "socket.connect":
            detail = [repr(args[1])]
        else:
            detail = [repr(a) for a in args[:2]]
        _fh.write(json.dumps({"t": time.monotonic(), "event": event, "args": detail}) + "\n")

    sys.addaudithook(_hook)
'''


def read_audit(path: Path) -> List[dict]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
