"""Bad input to the Telemetry API listener of the running extension (issue 9).

The test POSTs straight to the extension's listener (LAMBDA_OTEL_TELEMETRY_PORT) while the
simulator runs it (freeze off, so the extension answers between invocations). A batch that
cannot be used at all gets a 4xx; a bad event inside a usable batch is ignored and counted in
``lambda_otel.telemetry.ignored{reason}`` while the good events of that batch are processed;
real invocations keep working afterwards, and what they printed is delivered.
"""

import gzip
import http.client
import json
import math
import socket
import unittest
import uuid

from lambda_otel.config import TelemetryConfig
from tests.reliability_support import ReliabilityTestCase, expected_lines, function_lines, shutdown_summary
from lambda_otel.pipeline import SILENCE_WINDOW
from tests.support import counter_total, empty_log_records_request, histogram_totals

NOW = "2024-05-01T10:00:00.000Z"
MIN_NS, MAX_NS = 946_684_800 * 10**9, 4_102_444_800 * 10**9  # 2000..2100


def function_event(text, time=NOW):
    return {"time": time, "type": "function", "record": text}


class ListenerInputTest(ReliabilityTestCase):
    def setUp(self):
        self.sink = self.make_sink()
        self.env = self.make_env(self.sink, LAMBDA_OTEL_FLUSH_STRATEGY="end")
        self.port = int(self.env["LAMBDA_OTEL_TELEMETRY_PORT"])
        self.sim = self.make_sim(self.env, freeze=False)
        self.sim.start(timeout=30)
        self.results = [self.sim.invoke({"logs": 2}, timeout=30)]

    def post(self, body: bytes, headers=None, timeout=10.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        self.addCleanup(conn.close)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request("POST", "/", body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def finish(self):
        """One more real invocation, SHUTDOWN; everything the function printed arrived exactly once."""
        self.results.append(self.sim.invoke({"logs": 3}, timeout=30))
        self.sim.shutdown(timeout=30)
        output = self.extension_output(self.sim)
        for r in self.results:
            self.assertEqual(r.status, "success", output)
        self.assert_clean_exits(self.sim)
        seen = function_lines(self.sink)
        self.assertEqual(set(seen), expected_lines(self.results[:1], 2) | expected_lines(self.results[1:], 3))
        self.assertEqual(set(seen.values()), {1})
        self.assertEqual(shutdown_summary(output)["dropped"], {}, output)
        self.assertNotIn("Traceback", output)
        return output

    def test_unusable_batches_get_4xx_and_cost_nothing_else(self):
        deep = b"[" * 200_000 + b"]" * 200_000  # far past Python's recursion limit
        cases = {
            "not JSON": (b"this is not json", 400),
            "truncated JSON": (b'[{"time": "2024', 400),
            "JSON object": (b'{"type": "function", "record": "x"}', 400),
            "JSON string": (b'"hello"', 400),
            "JSON null": (b"null", 400),
            "deeply nested": (deep, 400),
            "invalid UTF-8": (b'[{"time": "2024-05-01T10:00:00Z", "type": "function", "record": "\xff\xfe\xc3"}]', 400),
            "empty body": (b"", 400),
        }
        for name, (body, status) in cases.items():
            with self.subTest(name):
                self.assertEqual(self.post(body)[0], status)
        # An empty array is a valid (empty) batch.
        self.assertEqual(self.post(b"[]")[0], 200)
        self.finish()

    def test_batch_far_over_twice_max_bytes_is_413_before_reading_it(self):
        limit = 2 * TelemetryConfig().max_bytes + 64 * 1024
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            # Declare 50 MB, send a little: the answer must come without the rest being read.
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 52428800\r\n\r\n[" + b" " * 1000)
            answer = s.recv(4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer)
        # A real body just over the limit, sent whole.
        body = json.dumps([function_event("x" * 1000)] * (limit // 1000 + 10)).encode()
        self.assertGreater(len(body), limit)
        try:
            status = self.post(body)[0]
        except (ConnectionResetError, BrokenPipeError):
            status = 413  # the listener answered and closed while we were still sending
        self.assertEqual(status, 413)
        for bad in ("abc", "\u00b2", "-1", "1e3", "0x10"):  # not a decimal number ('²' is a digit to str.isdigit)
            with self.subTest(content_length=bad), socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + bad.encode("utf-8") + b"\r\n\r\n[]")
                self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 400"))
        self.finish()

    def test_bad_events_are_ignored_and_counted_good_ones_in_the_same_batch_processed(self):
        marker = uuid.uuid4().hex
        good = [function_event(f"good {i} {marker}") for i in range(4)]
        rid = str(uuid.uuid4())
        bad = [
            {"time": NOW, "type": "platform.teleport", "record": {}},  # unknown type
            {"time": NOW, "type": "function"},  # no record
            {"record": "no type"},
            "not an object",
            42,
            None,
            [1, 2],
            {"time": NOW, "type": 17, "record": "type not a string"},
            {"time": NOW, "type": "platform.start", "record": "should be an object"},
            {"time": NOW, "type": "platform.start", "record": {"requestId": 12345}},
            {"time": NOW, "type": "platform.runtimeDone", "record": {"status": "success"}},  # no requestId
            {"time": NOW, "type": "platform.report", "record": {"requestId": rid, "status": "success",
                                                               "metrics": {"durationMs": -5.0, "billedDurationMs": "lots",
                                                                           "memorySizeMB": 128, "maxMemoryUsedMB": -1}}},
        ]
        # Timestamps far in the past / future / not timestamps: the event is kept, stamped now.
        odd_times = [function_event(f"odd time {t!r} {marker}", time=t)
                     for t in ("1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
                               "yesterday", 1714557600, None)]
        batch = [good[0], *bad[:6], good[1], *bad[6:], good[2], *odd_times, good[3]]
        self.assertEqual(self.post(json.dumps(batch).encode())[0], 200)

        # NaN / Infinity durations (Python's json accepts them; Lambda never sends them).
        nan_rid = str(uuid.uuid4())
        nan_batch = (b'[{"time": "2024-05-01T10:00:00.000Z", "type": "platform.report", "record": {"requestId": "'
                     + nan_rid.encode() + b'", "status": "success", "metrics": {"durationMs": NaN, '
                     b'"billedDurationMs": Infinity, "memorySizeMB": 128, "maxMemoryUsedMB": -Infinity}}},'
                     + json.dumps(function_event(f"after nan {marker}")).encode() + b"]")
        self.assertEqual(self.post(nan_batch)[0], 200)
        # A record nested deeper than anything we flatten, but still parseable JSON.
        nested = {"level": "INFO", "message": f"nested {marker}"}
        cur = nested
        for _ in range(500):
            cur["child"] = {}
            cur = cur["child"]
        self.assertEqual(self.post(json.dumps([{"time": NOW, "type": "function", "record": nested}]).encode())[0], 200)

        self.finish()
        texts = [item.record.body.string_value for item in self.sink.log_items()]
        for i in range(4):
            self.assertEqual(sum(f"good {i} {marker}" == t for t in texts), 1, i)
        self.assertEqual(sum(t.startswith("odd time") and t.endswith(marker) for t in texts), len(odd_times))
        self.assertEqual(sum(t == f"after nan {marker}" for t in texts), 1)
        self.assertEqual(sum(t == f"nested {marker}" for t in texts), 1)  # JSON record: body = message
        for item in self.sink.log_items():
            self.assertTrue(MIN_NS <= item.record.time_unix_nano <= MAX_NS, item.record)

        points = self.sink.metrics()
        ignored = {reason: counter_total(points, "lambda_otel.telemetry.ignored", reason=reason)
                   for reason in ("unknown_type", "malformed_event", "malformed_record", "bad_time", "bad_duration")}
        self.assertGreaterEqual(ignored["unknown_type"], 1, ignored)
        self.assertGreaterEqual(ignored["malformed_event"], 6, ignored)
        self.assertGreaterEqual(ignored["malformed_record"], 3, ignored)
        self.assertGreaterEqual(ignored["bad_time"], len(odd_times), ignored)
        self.assertGreaterEqual(ignored["bad_duration"], 2, ignored)
        # No NaN or negative value reached a histogram: the real invocations' durations are intact.
        reports = [e["record"] for e in self.sim.telemetry_events("platform.report")]
        for name, key, scale in (("faas.invoke_duration", "durationMs", 1000.0),
                                 ("aws.lambda.billed_duration", "billedDurationMs", 1000.0)):
            count, total = histogram_totals(points, name)
            self.assertTrue(math.isfinite(total), name)
            real = sum(r["metrics"][key] for r in reports) / scale
            self.assertGreaterEqual(total, real - 1e-6, name)
            self.assertGreaterEqual(count, len(reports))
        count, total = histogram_totals(points, "faas.mem_usage")
        self.assertTrue(math.isfinite(total) and total >= 0)


def vm_hwm_kb(pid: int) -> int:
    """Peak resident memory of a process so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class ReceiverMemoryTest(ReliabilityTestCase):
    """Bad input to the running extension's OTLP receiver costs a status code, not the function's memory."""

    def test_gzip_bomb_of_empty_records_at_128_mb_costs_no_memory(self):
        sink = self.make_sink()
        env = self.make_env(sink, LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim(env, freeze=False, memory_mb=128)
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 2}, timeout=30)]
        pid = sim.extension_pids["lambda-otel"]
        before = vm_hwm_kb(pid)
        # 15 KiB of gzip that inflates to 7 MiB of empty log records (3.5 million of them).
        bomb = gzip.compress(empty_log_records_request(7 * 1024 * 1024 // 2), 9)
        self.assertLess(len(bomb), 20 * 1024)
        statuses = []
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", int(env["LAMBDA_OTEL_RECEIVER_PORT"]), timeout=30)
            self.addCleanup(conn.close)
            conn.request("POST", "/v1/logs", body=bomb,
                         headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        grown_mib = (vm_hwm_kb(pid) - before) / 1024
        self.assertEqual(statuses, [413] * 5)
        self.assertLess(grown_mib, 24, f"peak RSS grew {grown_mib:.0f} MiB for 5 bombs")
        # The extension still works: what the function prints is delivered.
        results.append(sim.invoke({"logs": 3}, timeout=30))
        sim.shutdown(timeout=30)
        self.assert_clean_exits(sim)
        self.assertEqual(set(function_lines(sink)), expected_lines(results[:1], 2) | expected_lines(results[1:], 3))


class SilentSubscriptionE2ETest(ReliabilityTestCase):
    def test_a_subscription_without_platform_events_is_said_once(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink, LAMBDA_OTEL_TELEMETRY_TYPES="function,extension"))
        sim.start(timeout=30)
        results = [sim.invoke({"logs": 1}, timeout=30) for _ in range(SILENCE_WINDOW + 4)]
        sim.shutdown(timeout=30)
        output = self.extension_output(sim)
        self.assertEqual([r.status for r in results], ["success"] * (SILENCE_WINDOW + 4))
        self.assertEqual(output.count("no platform event"), 1, output)
        self.assertIn(results[0].request_id, output)
        self.assert_clean_exits(sim)

    def test_a_normal_subscription_says_nothing(self):
        sink = self.make_sink()
        sim = self.make_sim(self.make_env(sink))
        sim.start(timeout=30)
        for _ in range(3 * SILENCE_WINDOW):  # with periodic flushes, platform events lag several invocations
            sim.invoke({"logs": 1}, timeout=30)
        sim.shutdown(timeout=30)
        self.assertNotIn("no platform event", self.extension_output(sim))


if __name__ == "__main__":
    unittest.main()
