"""SnapStart end to end: the real extension, restored twice from one snapshot by os.fork().

The simulator's snapstart mode runs init once (the snapshot), then restores it: restore 1 in the
first copy of the extension's process, restore 2 in a second copy forked from the same memory
image (``lambda_otel.local.restore_fork``: the two copies start from one state, exactly as two
restores of one snapshot do). What each copy exports must be its own: disjoint span ids, its own
``faas.instance``, its own cumulative metric series starting after its restore.
"""

import shlex
import shutil
import stat
import sys
import tempfile
import unittest
from pathlib import Path

from lambda_otel.local.simulator import Simulator
from tests.support import EXTENSION_NAME, FUNCTIONS, REPO, ExtensionTestCase, final_cumulative


def write_fork_launcher(ext_dir: Path) -> None:
    launcher = ext_dir / EXTENSION_NAME
    cmd = f"exec {shlex.quote(sys.executable)} -m lambda_otel.local.restore_fork \"$0\""
    launcher.write_text(f"#!/bin/sh\nexport PYTHONPATH={shlex.quote(str(REPO))}\n{cmd}\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class TwoRestoresOfOneSnapshot(ExtensionTestCase):
    INVOCATIONS = 3

    def setUp(self):
        self.sink = self.make_sink()
        root = Path(tempfile.mkdtemp(prefix="lambda-otel-snapstart-"))
        self.addCleanup(shutil.rmtree, root, True)
        ext_dir = root / "extensions"
        ext_dir.mkdir()
        write_fork_launcher(ext_dir)
        env = self.make_env(self.sink, LAMBDA_OTEL_FLUSH_STRATEGY="end")
        self.sim = Simulator(extensions_dir=str(ext_dir), handler="e2e_handlers.handler", handler_dir=str(FUNCTIONS),
                             env=env, timeout_s=3.0, mode="snapstart")
        self.addCleanup(self.sim.stop)
        self.init = self.sim.start(timeout=60)
        self.results, self.downs = [], []
        for _ in range(2):  # each round: an invocation restores the snapshot, then SHUTDOWN
            self.results.append([self.sim.invoke({"logs": 1}, timeout=30) for _ in range(self.INVOCATIONS)])
            self.downs.append(self.sim.shutdown("spindown", timeout=30))
        self.sim.stop()  # SIGTERM to the snapshot's process: it reaps the copies and exits

    def output(self):
        return "\n".join(f"{stream}: {line}" for stream, line in self.sim.process_output(EXTENSION_NAME))

    def test_each_restore_is_its_own_environment(self):
        self.assertTrue(self.init.ok, self.output())
        self.assertEqual([r.number for r in self.sim.restores], [1, 2])
        for round_results in self.results:
            self.assertEqual([r.status for r in round_results], ["success"] * self.INVOCATIONS, self.output())
        for down in self.downs:
            ext = down.extensions[EXTENSION_NAME]
            self.assertEqual(ext.exit_code, 0, self.output())
            self.assertTrue(ext.exited_in_time, self.output())
        copies = [r.extension_pids[EXTENSION_NAME] for r in self.sim.restores]
        self.assertNotEqual(copies[0], copies[1])

        # Which copy exported which invocation: the request ids of each round.
        items = [i for i in self.sink.span_items() if i.span.kind == i.span.SPAN_KIND_SERVER or
                 any(kv.key == "faas.invocation_id" for kv in i.span.attributes)]
        by_round = []
        for round_results in self.results:
            ids = {r.request_id for r in round_results}
            by_round.append([i for i in items if any(kv.key == "faas.invocation_id" and kv.value.string_value in ids
                                                     for kv in i.span.attributes)])
        for spans in by_round:
            self.assertGreaterEqual(len(spans), self.INVOCATIONS, self.output())
        instances = [{i.resource.get("faas.instance") for i in spans} for spans in by_round]
        self.assertEqual(len(instances[0]), 1, instances)
        self.assertEqual(len(instances[1]), 1, instances)
        self.assertNotEqual(instances[0], instances[1])

        # Every span either copy exported: no span id (nor trace id of ours) in both.
        all_items = self.sink.span_items()
        span_ids = [{i.span.span_id for i in all_items if i.resource.get("faas.instance") in inst} for inst in instances]
        self.assertTrue(span_ids[0] and span_ids[1])
        self.assertEqual(span_ids[0] & span_ids[1], set())

        # Cumulative metrics: one series per copy, each counting its own invocations, none of them
        # starting before that copy's restore.
        latest = final_cumulative(self.sink.metrics(), "faas.invocations")
        per_instance = {}
        for (instance, _), point in latest.items():
            per_instance[instance] = per_instance.get(instance, 0) + point.as_int
        for inst in instances:
            self.assertEqual(per_instance.get(next(iter(inst))), self.INVOCATIONS, per_instance)
        for restore, inst in zip(self.sim.restores, instances):
            starts = [p.point.start_time_unix_nano for p in self.sink.metrics()
                      if p.name == "faas.invocations" and p.resource.get("faas.instance") in inst]
            self.assertTrue(starts)
            self.assertGreaterEqual(min(starts), int(restore.started_at.wall * 1e9) - 1_000_000)
        self.assertEqual(self.sim.fork_server_exits, {EXTENSION_NAME: 0})


if __name__ == "__main__":
    unittest.main()
