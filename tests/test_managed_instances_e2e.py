"""Lambda Managed Instances end to end: the real extension under the simulator's managed-instances mode.

There, registering INVOKE is refused (and would fail init), only Telemetry API schema 2025-01-29 is
accepted, invocations overlap in several runtime worker processes (the real awslambdaric forks one
per concurrent request) and the environment never freezes. 40 overlapping invocations log lines
from their workers (through `logging`, as functions do); then SHUTDOWN. What the backend holds must be exactly what the platform
reported, exported while the environment runs (not only at SHUTDOWN), and the extension exits 0
in time.
"""

import re
import shutil
import tempfile
import unittest
from collections import Counter
from pathlib import Path

from lambda_otel.local.simulator import Simulator
from lambda_otel.local.sink import any_value
from tests.support import EXTENSION_NAME, FUNCTIONS, ExtensionTestCase, counter_total, write_launcher

WORKER_LINE = re.compile(r"worker (\d+) request (\S+) line (\d+)")
INVOCATIONS = 40
LINES = 3


def attr(item, key):
    for kv in item.attributes:
        if kv.key == key:
            return any_value(kv.value)
    return None


class FortyOverlappingInvocations(ExtensionTestCase):
    @classmethod
    def setUpClass(cls):
        # One scenario, several assertions: it takes ~10 s.
        case = ExtensionTestCase("run")
        cls._cleanups_holder = case
        cls.sink = case.make_sink()
        root = Path(tempfile.mkdtemp(prefix="lambda-otel-lmi-"))
        case.addCleanup(shutil.rmtree, root, True)
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_launcher(ext_dir)
        # The background export runs on the periodic timer (20 s by default): 1 s here, so that the
        # test sees exports while the environment runs without waiting for the default.
        env = case.make_env(cls.sink, LAMBDA_OTEL_FLUSH_INTERVAL_MS="1000")
        cls.sim = Simulator(extensions_dir=str(ext_dir), handler="lmi_handlers.handler", handler_dir=str(FUNCTIONS),
                            env=env, timeout_s=10.0, mode="managed-instances", concurrency=8)
        case.addCleanup(cls.sim.stop)
        try:
            cls.init = cls.sim.start(timeout=60)
            pending = [cls.sim.invoke_async({"sleep": 0.3, "lines": LINES}) for _ in range(INVOCATIONS)]
            cls.results = [p.wait(60) for p in pending]
            # Exports while the environment runs: give the background export its interval, bounded.
            cls.sink.wait_for(lambda: cls.exported_invocation_spans() >= INVOCATIONS, timeout=15)
            cls.before_shutdown = len(cls.sink.requests)
            cls.spans_before_shutdown = cls.exported_invocation_spans()
            cls.down = cls.sim.shutdown("spindown", timeout=30)
        except BaseException:
            case.doCleanups()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._cleanups_holder.doCleanups()

    @classmethod
    def exported_invocation_spans(cls):
        ids = {r.request_id for r in cls.results}
        return sum(1 for s in cls.sink.spans() if attr(s, "faas.invocation_id") in ids and s.kind == s.SPAN_KIND_SERVER)

    def output(self):
        return "\n".join(f"{stream}: {line}" for stream, line in self.sim.process_output(EXTENSION_NAME))

    def test_registration_schema_and_exit(self):
        self.assertTrue(self.init.ok, self.output())
        ext = next(e for e in self.sim.extensions if e.name == EXTENSION_NAME)
        self.assertEqual(ext.events, ["SHUTDOWN"])
        self.assertIn("Telemetry API subscribed with schema 2025-01-29", self.output())
        down = self.down.extensions[EXTENSION_NAME]
        self.assertEqual(down.exit_code, 0, self.output())
        self.assertTrue(down.exited_in_time, self.output())
        self.assertLess(down.exited_at.wall * 1000, self.down.deadline_ms)

    def test_invocations_overlapped_in_several_workers(self):
        self.assertEqual([r.status for r in self.results], ["success"] * INVOCATIONS)
        self.assertGreaterEqual(len({r.json()["pid"] for r in self.results}), 2)
        edges = sorted([(r.started_at.mono, 1) for r in self.results] + [(r.ended_at.mono, -1) for r in self.results])
        now = most = 0
        for _, step in edges:
            now += step
            most = max(most, now)
        self.assertGreaterEqual(most, 2)

    def test_exports_happen_before_shutdown(self):
        self.assertGreater(self.before_shutdown, 0, self.output())
        self.assertEqual(self.spans_before_shutdown, INVOCATIONS, self.output())

    def test_one_invocation_span_per_request_and_metrics_count_the_reports(self):
        ids = Counter(attr(s, "faas.invocation_id") for s in self.sink.spans() if s.kind == s.SPAN_KIND_SERVER)
        for r in self.results:
            self.assertEqual(ids[r.request_id], 1, r.request_id)
        reports = [e for e in self.sim.telemetry_events("platform.report")]
        self.assertEqual(len(reports), INVOCATIONS)
        self.assertEqual(counter_total(self.sink.metrics(), "faas.invocations"), len(reports))

    def test_each_workers_line_carries_its_own_invocation(self):
        lines = []
        for record in self.sink.log_records():
            match = WORKER_LINE.search(str(any_value(record.body)))
            if match:
                lines.append((match.group(2), attr(record, "faas.invocation_id")))
        self.assertEqual(len(lines), INVOCATIONS * LINES)
        for printed_in, attributed_to in lines:
            self.assertEqual(attributed_to, printed_in)


if __name__ == "__main__":
    unittest.main()
