"""The extension's own metrics end to end: the real extension under the simulator, a decoding sink."""

import unittest

from opentelemetry.proto.metrics.v1 import metrics_pb2

from lambda_otel.local.sink import Reply
from tests.reliability_support import ReliabilityTestCase, shutdown_summary


def attrs(point):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


class DeltaDroppedTest(ReliabilityTestCase):
    def test_exported_deltas_sum_to_the_shutdown_line(self):
        """Delta temporality and a backend that rejects everything for a while, metrics exports
        included: the exported lambda_otel.dropped points sum to the totals of the shutdown line
        (a rejected delta item used to take its counts with it: 23 exported for 92 dropped)."""
        sink = self.make_sink()
        env = self.make_env(sink, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta",
                            LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        sim.invoke({"logs": 5}, timeout=30)
        sink.set_reply(Reply(status=400))  # every signal refused: its records are dropped for good
        for _ in range(4):
            self.assertEqual(sim.invoke({"logs": 10}, timeout=30).status, "success")
        sink.set_reply(Reply())
        for _ in range(3):
            self.assertEqual(sim.invoke({"logs": 2}, timeout=30).status, "success")
        sim.shutdown("spindown", timeout=30)
        self.assert_clean_exits(sim)
        output = self.extension_output(sim)
        summary = shutdown_summary(output)
        self.assertIsNotNone(summary, output)
        self.assertGreater(sum(summary["dropped"].values()), 0, "the scenario rejected nothing")
        points = [p for p in sink.metrics() if p.name == "lambda_otel.dropped"]
        by_reason = {}
        for p in points:
            self.assertEqual(p.metric.sum.aggregation_temporality, metrics_pb2.AGGREGATION_TEMPORALITY_DELTA)
            reason = attrs(p.point)["reason"]
            by_reason[reason] = by_reason.get(reason, 0) + p.point.as_int
        self.assertEqual(by_reason, summary["dropped"], output[-3000:])


if __name__ == "__main__":
    unittest.main()
