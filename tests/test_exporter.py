"""OtlpExporter against a real OtlpSink on 127.0.0.1: success, retries, deadlines, stale connections, TLS."""

import email.utils
import gzip
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from lambda_otel import __version__
from lambda_otel import exporter as exporter_module
from lambda_otel.config import ExporterConfig, OtlpProtocol
from lambda_otel.exporter import NO_ENDPOINT, NOT_READY, REJECTED, RETRYABLE, SUCCESS, FailureCause, OtlpExporter, parse_retry_after
from lambda_otel.local.sink import OtlpSink, Reply
from lambda_otel.local.tools import free_port
from lambda_otel.loss import EXPORT_REJECTED, LOGS, TRACES, LossCounter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "Bearer s3cr3t-t0ken-value"


def trace_request(n: int = 3) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "exporter-test"
    ss = rs.scope_spans.add()
    for i in range(n):
        span = ss.spans.add()
        span.name = f"span-{i}"
        span.trace_id = bytes([7]) * 16
        span.span_id = bytes([i + 1]) * 8
        span.attributes.add(key="payload").value.string_value = "x" * 200
    return req


def trace_items(n: int = 3) -> list:
    return list(trace_request(n).resource_spans)


def items_for(signal: str) -> list:
    """A small batch of any signal."""
    if signal == TRACES:
        return trace_items()
    if signal == LOGS:
        req = ExportLogsServiceRequest()
        req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
        return list(req.resource_logs)
    rm = metrics_pb2.ResourceMetrics()
    rm.scope_metrics.add().metrics.add(name="g").gauge.data_points.add(as_int=1)
    return [rm]


def items_of(request) -> list:
    """The Resource* items of an Export*ServiceRequest (what OtlpExporter.export takes)."""
    return list(getattr(request, request.DESCRIPTOR.fields[0].name))


def quiet_exporter_logs(test: unittest.TestCase) -> None:
    """Expected warnings (dead backends on purpose) go nowhere unless the test captures them."""
    quiet = logging.NullHandler()
    logging.getLogger("lambda_otel.exporter").addHandler(quiet)
    test.addCleanup(logging.getLogger("lambda_otel.exporter").removeHandler, quiet)


class ExporterTestCase(unittest.TestCase):
    def setUp(self) -> None:
        quiet_exporter_logs(self)
        self.sink = OtlpSink().start()
        self.addCleanup(self.sink.stop)
        self.loss = LossCounter()

    def exporter(self, **overrides) -> OtlpExporter:
        fields = dict(
            traces_endpoint=self.sink.url("traces"),
            metrics_endpoint=None,
            logs_endpoint=self.sink.url("logs"),
            headers={},
            compression="gzip",
            timeout_s=5.0,
        )
        fields.update(overrides)
        exp = OtlpExporter(ExporterConfig(**fields), self.loss)
        self.addCleanup(exp.close)
        return exp

    def export(self, exp, request=None, within=10.0, signal=TRACES):
        request = request if request is not None else trace_request()
        return exp.export(signal, items_of(request), time.monotonic() + within)


class SuccessTest(ExporterTestCase):
    def test_gzip_body_decodes_to_the_same_request(self):
        request = trace_request()
        body = request.SerializeToString()
        outcome = self.export(self.exporter(), request)
        self.assertEqual((outcome.kind, outcome.status, outcome.attempts), (SUCCESS, 200, 1))
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        rec = self.sink.requests[0]
        self.assertEqual(rec.headers["content-encoding"], "gzip")
        self.assertEqual(rec.headers["content-type"], "application/x-protobuf")
        self.assertEqual(rec.headers["user-agent"], f"lambda-otel/{__version__}")
        self.assertEqual(rec.body_size, len(gzip.compress(body, 1)))
        self.assertEqual(rec.decoded, ExportTraceServiceRequest.FromString(body))

    def test_uncompressed_body(self):
        req = ExportLogsServiceRequest()
        req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
        outcome = self.export(self.exporter(compression="none"), req, signal=LOGS)
        self.assertEqual(outcome.kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        rec = self.sink.requests[0]
        self.assertNotIn("content-encoding", rec.headers)
        self.assertEqual(rec.body_size, req.ByteSize())
        self.assertEqual(rec.path, "/v1/logs")
        self.assertEqual([r.body.string_value for r in self.sink.log_records()], ["hello"])

    def test_user_headers_are_sent_but_cannot_break_the_encoding(self):
        exp = self.exporter(headers={"Authorization": SECRET, "X-Tenant": "t1", "Content-Encoding": "br"})
        self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        headers = self.sink.requests[0].headers
        self.assertEqual(headers["authorization"], SECRET)
        self.assertEqual(headers["x-tenant"], "t1")
        self.assertEqual(headers["content-encoding"], "gzip")
        self.assertEqual(len(self.sink.spans()), 3)

    def test_closed_exporters_leave_no_thread_behind(self):
        before = threading.active_count()
        for _ in range(5):
            exp = self.exporter()
            self.assertEqual(self.export(exp).kind, SUCCESS)
            exp.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:  # bounded
            time.sleep(0.02)
        self.assertLessEqual(threading.active_count(), before)

    def test_an_empty_batch_sends_no_request(self):
        self.assertEqual(self.exporter().export(TRACES, [], time.monotonic() + 5).kind, SUCCESS)
        self.assertEqual(self.sink.requests, [])

    def test_no_endpoint(self):
        outcome = self.export(self.exporter(), signal="metrics")
        self.assertEqual((outcome.kind, outcome.attempts), (NO_ENDPOINT, 0))
        self.assertEqual(self.sink.requests, [])

    def test_keep_alive_reuses_one_connection(self):
        exp = self.exporter()
        for _ in range(3):
            self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual(len({r.connection_id for r in self.sink.requests}), 1)

    def test_idle_session_opens_a_new_connection(self):
        exp = self.exporter()
        self.assertEqual(self.export(exp).kind, SUCCESS)
        with mock.patch.object(exporter_module, "IDLE_CLOSE_S", 0.0):  # "idle for longer than the threshold"
            self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(2, timeout=5))
        first, second = self.sink.requests
        self.assertNotEqual(first.connection_id, second.connection_id)
        self.assertEqual(second.nth_on_connection, 0)

    def test_partial_success_is_reported_and_counted(self):
        self.sink.set_reply(Reply(partial_rejected=2, partial_message="spans too old"))
        outcome = self.export(self.exporter())
        self.assertEqual((outcome.kind, outcome.rejected_records), (SUCCESS, 2))
        self.assertEqual(self.loss.snapshot(), {(TRACES, EXPORT_REJECTED): 2})

    def test_non_otlp_body_on_2xx_is_plain_success(self):
        self.sink.set_reply(Reply(status=200, non_otlp=True))
        outcome = self.export(self.exporter())
        self.assertEqual((outcome.kind, outcome.rejected_records), (SUCCESS, 0))
        self.assertEqual(self.loss.snapshot(), {})

    def test_requests_is_imported_lazily(self):
        code = ("import sys, lambda_otel.exporter as e, lambda_otel.config as c, lambda_otel.loss as l;"
                "e.OtlpExporter(c.ExporterConfig(traces_endpoint='http://127.0.0.1:1/v1/traces'), l.LossCounter());"
                "print('requests' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "False", out.stderr)


class RetryTest(ExporterTestCase):
    def test_503_twice_then_success(self):
        self.sink.script([Reply(status=503), Reply(status=503)])
        outcome = self.export(self.exporter())
        self.assertEqual((outcome.kind, outcome.status, outcome.attempts), (SUCCESS, 200, 3))
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual([r.status for r in self.sink.requests], [503, 503, 200])

    def test_connection_reset_mid_body_is_retried(self):
        self.sink.script([Reply(reset=True)])
        outcome = self.export(self.exporter(), trace_request(200))
        self.assertEqual((outcome.kind, outcome.attempts), (SUCCESS, 2))
        self.assertEqual(len(self.sink.spans()), 200)

    def test_retry_after_is_honoured(self):
        self.sink.script([Reply(status=429, retry_after="1")])
        outcome = self.export(self.exporter(), within=20)
        self.assertEqual((outcome.kind, outcome.attempts), (SUCCESS, 2))
        self.assertTrue(self.sink.wait_for_requests(2, timeout=5))
        first, second = self.sink.requests
        # A lower bound (the behaviour itself); slightly generous because the sink stamps "end"
        # just after its write, a hair after the client may have read the answer.
        self.assertGreaterEqual(second.start - first.end, 0.9)

    def test_retry_after_beyond_deadline_returns_at_once(self):
        self.sink.script([Reply(status=503, retry_after="30")])
        deadline = time.monotonic() + 5
        outcome = self.exporter().export(TRACES, trace_items(), deadline)
        self.assertLess(time.monotonic(), deadline)  # it did not wait for the Retry-After
        self.assertEqual((outcome.kind, outcome.status, outcome.retry_after, outcome.attempts),
                         (RETRYABLE, 503, 30.0, 1))
        self.assertEqual(len(self.sink.requests), 1)

    def test_retry_after_http_date(self):
        future = email.utils.formatdate(time.time() + 3, usegmt=True)
        value = parse_retry_after(future)
        self.assertIsNotNone(value)
        self.assertTrue(1.0 <= value <= 3.0, value)
        self.assertEqual(parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)), 0.0)
        self.assertEqual(parse_retry_after("2.5"), 2.5)
        self.assertIsNone(parse_retry_after("soon"))
        self.assertIsNone(parse_retry_after(None))

    def test_400_is_rejected_without_retry(self):
        self.sink.set_reply(Reply(status=400, body=b"bad payload"))
        outcome = self.export(self.exporter())
        self.assertEqual((outcome.kind, outcome.status, outcome.attempts), (REJECTED, 400, 1))
        self.assertIn("HTTP 400", outcome.error)
        self.assertIn("bad payload", outcome.error)
        self.assertEqual(len(self.sink.requests), 1)

    def test_500_and_501_are_rejected(self):
        for status in (500, 501):
            self.sink.clear()
            self.sink.set_reply(Reply(status=status))
            outcome = self.export(self.exporter())
            self.assertEqual((outcome.kind, outcome.status, outcome.attempts), (REJECTED, status, 1))
            self.assertEqual(len(self.sink.requests), 1)

    def test_retryable_until_deadline(self):
        self.sink.set_reply(Reply(status=502, non_otlp=True))
        deadline = time.monotonic() + 1.0
        outcome = self.exporter().export(TRACES, trace_items(), deadline)
        self.assertLess(time.monotonic(), deadline + 0.5)
        self.assertEqual((outcome.kind, outcome.status), (RETRYABLE, 502))
        self.assertGreaterEqual(outcome.attempts, 2)
        self.assertLessEqual(outcome.attempts, exporter_module.MAX_ATTEMPTS)
        self.assertEqual(len(self.sink.requests), outcome.attempts)

    def test_deadline_respected_with_a_hanging_backend(self):
        self.sink.set_reply(Reply(hang=True))
        exp = self.exporter(timeout_s=30.0)
        deadline = time.monotonic() + 0.5
        outcome = exp.export(TRACES, trace_items(), deadline)
        self.assertLess(time.monotonic(), deadline + 1.0)  # generous slack; the bound is the behaviour
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))

    def test_expired_deadline_sends_nothing(self):
        outcome = self.exporter().export(TRACES, trace_items(), time.monotonic() - 1)
        self.assertEqual((outcome.kind, outcome.attempts), (RETRYABLE, 0))
        self.assertEqual(self.sink.requests, [])

    def test_connection_refused_is_retryable(self):
        exp = self.exporter(traces_endpoint=f"http://127.0.0.1:{free_port()}/v1/traces")
        deadline = time.monotonic() + 0.5
        outcome = exp.export(TRACES, trace_items(), deadline)
        self.assertLess(time.monotonic(), deadline + 1.0)
        self.assertEqual((outcome.kind, outcome.status, outcome.stale_retries), (RETRYABLE, None, 0))
        self.assertGreaterEqual(outcome.attempts, 1)
        self.assertIn("refused", outcome.error.lower())

    def test_close_interrupts_a_retry_wait(self):
        self.sink.script([Reply(status=503, retry_after="20")])
        exp = self.exporter()
        threading.Timer(0.2, exp.close).start()
        deadline = time.monotonic() + 60
        outcome = exp.export(TRACES, trace_items(), deadline)
        self.assertLess(time.monotonic(), deadline - 30)  # nowhere near the 20 s Retry-After
        self.assertEqual(outcome.kind, RETRYABLE)
        self.assertEqual(exp.export(TRACES, trace_items(), time.monotonic() + 5).kind, RETRYABLE)
        self.assertEqual(len(self.sink.requests), 1)


class InvalidHostTest(ExporterTestCase):
    def test_host_under_invalid_is_rejected_without_a_lookup(self):
        looked_up = []
        real = socket.getaddrinfo

        def spy(host, *args, **kwargs):
            looked_up.append(host)
            return real(host, *args, **kwargs)

        exp = self.exporter(traces_endpoint="http://collector.example.INVALID.:4318/v1/traces")
        socket.getaddrinfo = spy
        try:
            with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
                outcomes = [self.export(exp) for _ in range(2)]
        finally:
            socket.getaddrinfo = real
        for outcome in outcomes:
            self.assertEqual((outcome.kind, outcome.attempts), (REJECTED, 0))
            self.assertIn(".invalid", outcome.error)
        self.assertEqual(len(logs.output), 1)
        self.assertEqual(looked_up, [])

    def test_only_the_invalid_tld_is_special(self):
        from lambda_otel.exporter import _never_resolves

        for host in ("invalid", "a.invalid", "A.B.INVALID", "x.invalid."):
            self.assertTrue(_never_resolves(f"http://{host}:4318/v1/traces"), host)
        for host in ("invalid-collector.example.com", "invalid.example.com", "localhost", "127.0.0.1", "[::1]"):
            self.assertFalse(_never_resolves(f"http://{host}:4318/v1/traces"), host)


def loopback_alias() -> "str | None":
    """A name this machine's resolver (hosts file) maps to loopback only and config cannot see to be
    loopback without DNS (so not ``localhost.localdomain``), if it has one."""
    from lambda_otel.config import is_loopback_host

    for name in (socket.gethostname(), "vm", "runsc"):
        if not name or is_loopback_host(name):
            continue
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)}
        except OSError:
            continue
        if addresses and all(a.startswith("127.") or a == "::1" for a in addresses):
            return name
    return None


class SelfExportAtRunTimeTest(ExporterTestCase):
    """A name that resolves to this machine on our receiver's port would loop: the connection refuses
    it, on the addresses it resolved itself (config sees only the spellings that need no DNS)."""

    def own_exporter(self, url: str, own_port: int) -> OtlpExporter:
        exp = OtlpExporter(ExporterConfig(traces_endpoint=url, timeout_s=5.0), self.loss, own_receiver_port=own_port)
        self.addCleanup(exp.close)
        return exp

    def test_a_hosts_file_alias_of_our_receiver_is_refused_and_nothing_is_sent(self):
        name = loopback_alias()
        if name is None:
            self.skipTest("no hosts-file alias of 127.0.0.1 on this machine")
        # The sink stands where our receiver would: same address, same port.
        exp = self.own_exporter(f"http://{name}:{self.sink.port}/v1/traces", own_port=self.sink.port)
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcomes = [self.export(exp) for _ in range(3)]
        for outcome in outcomes:
            self.assertEqual((outcome.kind, outcome.cause), (REJECTED, FailureCause.CONFIG))
            self.assertIn(f"port {self.sink.port}", outcome.error)
            self.assertIn("would loop", outcome.error)
        self.assertEqual(len(logs.output), 1, "one line for the endpoint, not one per export")
        self.assertEqual(self.sink.requests, [])
        # The same name on another port is somebody else's: exported.
        other = self.own_exporter(f"http://{name}:{self.sink.port}/v1/traces", own_port=self.sink.port + 1)
        self.assertEqual(self.export(other).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))

    def test_judged_on_the_connections_own_lookup_even_when_dns_is_flaky(self):
        # The first answer fails, the next one is loopback: no export may reach the receiver's
        # address, and no export asks DNS more than once (the check has no lookup of its own).
        calls = []
        real = socket.getaddrinfo
        answers = iter([None, "127.0.0.1", "::1"])

        def dns(host, port, family=0, type=0, proto=0, flags=0):
            if flags & socket.AI_NUMERICHOST or host != "flaky.test":
                return real(host, port, family, type, proto, flags)
            calls.append(host)
            answer = next(answers)
            if answer is None:
                raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")
            family = socket.AF_INET6 if ":" in answer else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (answer, port) if family == socket.AF_INET else (answer, port, 0, 0))]

        port = self.sink.port
        exp = self.own_exporter(f"http://flaky.test:{port}/v1/traces", own_port=port)
        causes = []
        with mock.patch("socket.getaddrinfo", dns):
            for _ in range(3):
                before = len(calls)
                causes.append(self.export(exp, within=2.0).cause)
                self.assertLessEqual(len(calls) - before, 1, "one lookup per export at most")
                exp._transports[TRACES].resolver.forget()  # the next export asks DNS again
        self.assertEqual(causes, [FailureCause.DNS, FailureCause.CONFIG, FailureCause.CONFIG])
        self.assertEqual(self.sink.requests, [])

    def test_no_receiver_no_check(self):
        name = loopback_alias()
        if name is None:
            self.skipTest("no hosts-file alias of 127.0.0.1 on this machine")
        exp = self.own_exporter(f"http://{name}:{self.sink.port}/v1/traces", own_port=None)
        self.assertEqual(self.export(exp).kind, SUCCESS)


class StaleConnectionTest(ExporterTestCase):
    def test_dead_pooled_connection_is_resent_once_without_counting(self):
        # The sink resets any request that arrives on an already-used keep-alive connection:
        # what a connection killed during a freeze looks like to the client.
        self.sink.set_reply(Reply(stale_keepalive=True))
        exp = self.exporter()
        first = self.export(exp)
        self.assertEqual((first.kind, first.attempts, first.stale_retries), (SUCCESS, 1, 0))
        second = self.export(exp)
        self.assertEqual((second.kind, second.attempts, second.stale_retries), (SUCCESS, 1, 1))
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual([r.outcome for r in self.sink.requests], ["answered", "reset", "answered"])
        self.assertEqual(len(self.sink.spans()), 6)

    def test_reset_on_a_fresh_connection_is_a_normal_attempt(self):
        self.sink.script([Reply(close=True)])
        outcome = self.export(self.exporter())
        self.assertEqual((outcome.kind, outcome.attempts, outcome.stale_retries), (SUCCESS, 2, 0))


class SecretsTest(ExporterTestCase):
    def test_header_values_never_in_errors_or_logs(self):
        exp = self.exporter(headers={"Authorization": SECRET})
        refused = self.exporter(traces_endpoint=f"http://127.0.0.1:{free_port()}/v1/traces",
                                headers={"Authorization": SECRET})
        self.sink.set_reply(Reply(status=401, body=f"invalid credentials: {SECRET}".encode()))
        with self.assertLogs("lambda_otel", level=logging.DEBUG) as logs:
            outcomes = [self.export(exp), refused.export(TRACES, trace_items(), time.monotonic() + 0.3)]
        self.assertEqual([o.kind for o in outcomes], [REJECTED, RETRYABLE])
        for outcome in outcomes:
            self.assertNotIn(SECRET, outcome.error)
            self.assertNotIn("s3cr3t", outcome.error)
        self.assertIn("<redacted>", outcomes[0].error)
        text = "\n".join(logs.output)
        self.assertNotIn("s3cr3t", text)
        self.assertTrue(all(not r.startswith("INFO") for r in logs.output))  # never INFO per request


class HostileRetryAfterTest(ExporterTestCase):
    """A Retry-After no backend should send is capped (a few minutes), never trusted as is."""

    def test_values_are_capped_or_ignored(self):
        now = time.time()
        future = email.utils.formatdate(now + 10 * 365 * 86400, usegmt=True)
        cases = {"1e10": exporter_module.MAX_RETRY_AFTER_S, "inf": exporter_module.MAX_RETRY_AFTER_S,
                 "1e400": exporter_module.MAX_RETRY_AFTER_S, "-Infinity": 0.0, "-5": 0.0, "NaN": None,
                 "nan": None, future: exporter_module.MAX_RETRY_AFTER_S, "Fri, 31 Dec 9999 23:59:59 GMT":
                 exporter_module.MAX_RETRY_AFTER_S, "x" * 10_000: None, "2.5": 2.5}
        for value, expected in cases.items():
            with self.subTest(value=value[:40]):
                self.assertEqual(parse_retry_after(value, now=now), expected)
        self.assertLessEqual(exporter_module.MAX_RETRY_AFTER_S, 300)

    def test_huge_retry_after_returns_at_once_with_the_cap(self):
        for value in ("1e10", "inf", "1e400", "Fri, 31 Dec 9999 23:59:59 GMT"):
            with self.subTest(value=value):
                self.sink.set_reply(Reply(status=503, retry_after=value))
                started = time.monotonic()
                outcome = self.export(self.exporter(), within=2.0)
                self.assertLess(time.monotonic() - started, 1.5)
                self.assertEqual((outcome.kind, outcome.retry_after), (RETRYABLE, exporter_module.MAX_RETRY_AFTER_S))

    def test_nan_and_negative_retry_after_fall_back_to_backoff(self):
        for value in ("NaN", "-1"):
            with self.subTest(value=value):
                self.sink.reset_behaviour()
                self.sink.script([Reply(status=503, retry_after=value)])
                outcome = self.export(self.exporter(), within=5.0)
                self.assertEqual((outcome.kind, outcome.attempts), (SUCCESS, 2))


class WholeRequestDeadlineTest(ExporterTestCase):
    """A request ends at its deadline whatever the backend does (requests' timeout is per read)."""

    def test_an_answer_dripped_a_byte_at_a_time_is_cut_at_the_deadline(self):
        self.sink.set_reply(Reply(drip=0.05))  # ~150 bytes: 7 s to answer, each byte well within any read timeout
        exp = self.exporter(timeout_s=5.0)
        started = time.monotonic()
        deadline = started + 0.6
        outcome = exp.export(TRACES, trace_items(), deadline)
        ended = time.monotonic()
        self.assertLess(ended, deadline + 0.5)  # slack for a loaded machine; the bound is the behaviour
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))
        self.assertIn("deadline", outcome.error)
        # The backend saw the connection go: nothing of ours stays open past the deadline.
        self.assertTrue(self.sink.wait_for(lambda: not self.sink.open_requests(), timeout=5))
        self.assertLess(max(r.end for r in self.sink.requests), deadline + 0.5)

    def test_a_dripping_backend_does_not_poison_the_next_request(self):
        self.sink.script([Reply(drip=0.05)])
        exp = self.exporter(timeout_s=5.0)
        self.assertEqual(exp.export(TRACES, trace_items(), time.monotonic() + 0.4).kind, RETRYABLE)
        self.assertEqual(self.export(exp).kind, SUCCESS)

    def test_a_backend_that_reads_the_body_slowly_is_cut_at_the_deadline(self):
        # The send phase: the backend takes 1 KiB every 20 ms, so the whole body would take minutes.
        # (sendall's timeout covers the whole call, so the deadline holds here with or without the
        # watchdog; the test pins the behaviour.)
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def slow_reader():
            conn, _ = server.accept()
            with conn:
                for _ in range(30_000):  # bounded: ~10 minutes at most, stopped by the test
                    if stop.wait(0.02):
                        return
                    try:
                        if not conn.recv(1024):
                            return
                    except OSError:
                        return

        threading.Thread(target=slow_reader, daemon=True).start()
        request = trace_request(1)
        request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="big").value.string_value = \
            os.urandom(16 * 1024 * 1024).hex()  # 32 MiB that do not compress away
        exp = self.exporter(traces_endpoint=f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces",
                            compression="none", timeout_s=5.0)
        items = items_of(request)
        deadline = time.monotonic() + 0.8
        outcome = exp.export(TRACES, items, deadline)
        self.assertLess(time.monotonic(), deadline + 1.5)  # generous slack for a loaded machine
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))

    def test_dns_resolution_is_bounded_by_the_deadline(self):
        real = socket.getaddrinfo
        release = threading.Event()
        self.addCleanup(release.set)

        def slow_dns(host, port, family=0, type=0, proto=0, flags=0):
            if host == "slow-dns.example" and not flags & socket.AI_NUMERICHOST:
                release.wait(30)  # a resolver that does not answer
                raise socket.gaierror(socket.EAI_AGAIN, "no answer")
            return real(host, port, family, type, proto, flags)

        with mock.patch("socket.getaddrinfo", slow_dns):
            exp = self.exporter(traces_endpoint="http://slow-dns.example:4318/v1/traces", timeout_s=5.0)
            started = time.monotonic()
            outcome = exp.export(TRACES, trace_items(), started + 0.5)
            self.assertLess(time.monotonic() - started, 1.5)
            self.assertEqual(outcome.kind, RETRYABLE)
            self.assertIn(outcome.cause, (FailureCause.DNS, FailureCause.TIMEOUT))
            # One lookup in flight per host, however many exports wait for it.
            before = threading.active_count()
            exp.export(TRACES, trace_items(), time.monotonic() + 0.2)
            self.assertLessEqual(threading.active_count(), before)


class WireTest(ExporterTestCase):
    """What one export costs on the wire and in lookups (the per-request cost of a hold's flush)."""

    def test_head_and_body_go_out_in_one_send(self):
        import http.client

        real_send = http.client.HTTPConnection.send
        sent = []

        def spy(conn, data):
            sent.append(bytes(data))
            return real_send(conn, data)

        exp = self.exporter()
        with mock.patch.object(http.client.HTTPConnection, "send", spy):
            for _ in range(2):  # a new connection, then the pooled one
                self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertEqual(len(sent), 2, "one send per request")
        self.assertTrue(self.sink.wait_for_requests(2, timeout=5))
        for data, received in zip(sent, self.sink.requests):
            head, _, body = data.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"POST /v1/traces HTTP/1.1"))
            self.assertIn(b"Content-Length: %d" % len(body), head)
            self.assertEqual(gzip.decompress(body), trace_request().SerializeToString())
            self.assertEqual(received.body_sha256, hashlib.sha256(body).hexdigest())  # exactly these bytes
            self.assertEqual(received.decoded, trace_request())

    def test_the_pool_is_looked_up_once_per_url_and_again_after_a_close(self):
        import requests.adapters

        real = requests.adapters.HTTPAdapter.get_connection_with_tls_context
        lookups = []

        def spy(adapter, request, *args, **kwargs):
            lookups.append(request.url)
            return real(adapter, request, *args, **kwargs)

        exp = self.exporter()
        with mock.patch.object(requests.adapters.HTTPAdapter, "get_connection_with_tls_context", spy):
            for _ in range(3):
                self.assertEqual(self.export(exp).kind, SUCCESS)
            self.assertEqual(len(lookups), 1)
            exp._transports[TRACES].drop_connections()  # closes the pools
            self.assertEqual(self.export(exp).kind, SUCCESS)
            self.assertEqual(len(lookups), 2)
        self.assertTrue(self.sink.wait_for_requests(4, timeout=5))
        self.assertEqual(len({r.connection_id for r in self.sink.requests}), 2)

    def test_a_sooner_deadline_is_cut_while_the_watchdog_sleeps_toward_a_later_one(self):
        exp = self.exporter(timeout_s=5.0)
        self.assertEqual(self.export(exp, within=60.0).kind, SUCCESS)  # the watchdog now sleeps toward +60 s
        self.sink.set_reply(Reply(drip=0.05))  # ~7 s to answer, each byte within the read timeout
        outcome = exp.export(TRACES, trace_items(), time.monotonic() + 0.5)
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))
        self.assertIn("deadline", outcome.error)

    def test_a_later_deadline_is_cut_after_the_watchdog_woke_for_an_earlier_one(self):
        exp = self.exporter(timeout_s=5.0)
        self.assertEqual(self.export(exp, within=0.2).kind, SUCCESS)  # the watchdog wakes at +0.2 s for nothing
        self.sink.set_reply(Reply(drip=0.05))
        outcome = exp.export(TRACES, trace_items(), time.monotonic() + 0.6)
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))
        self.assertIn("deadline", outcome.error)

    def test_signals_sent_at_once_are_each_cut_at_their_own_deadline(self):
        # One watchdog for the exporter: two attempts armed together (logs' deadline later than
        # traces'), each cut at its own deadline, not at the read timeout.
        exp = self.exporter(timeout_s=5.0)
        self.sink.set_reply(Reply(drip=0.05))
        outcomes = {}

        def send(signal, within):
            outcomes[signal] = exp.export(signal, items_for(signal), time.monotonic() + within)

        threads = [threading.Thread(target=send, args=(LOGS, 1.2)), threading.Thread(target=send, args=(TRACES, 0.5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for signal in (TRACES, LOGS):
            self.assertEqual((outcomes[signal].kind, outcomes[signal].cause), (RETRYABLE, FailureCause.TIMEOUT))
            self.assertIn("deadline", outcomes[signal].error)
        self.assertEqual(len({r.connection_id for r in self.sink.requests}), 2, "a connection per signal")

    def test_a_whole_answer_is_a_success_even_if_the_deadline_passed_right_after_it(self):
        # Under load the watchdog may fire between the last byte read and its disarm: an answer
        # that says where it ends (Content-Length) and was read whole is delivered data; calling it
        # a timeout sent it again (duplicates in tests.test_flush_e2e.ChattyFunctionTest).
        from lambda_otel import export_http

        exp = self.exporter(timeout_s=5.0)
        real = export_http.Watchdog.disarm

        def fired_late(watchdog, watch):
            real(watchdog, watch)
            return True

        with mock.patch.object(export_http.Watchdog, "disarm", fired_late):
            outcome = self.export(exp)
        self.assertEqual(outcome.kind, SUCCESS, outcome)
        self.assertEqual(len(self.sink.requests), 1)

    def test_an_answer_cut_after_its_status_line_is_not_a_success(self):
        # "HTTP/1.0 200 OK\r\n" has come (17 bytes at 50 ms each) when the deadline cuts the rest:
        # http.client takes the EOF for the end of the head and of the body.
        self.sink.set_reply(Reply(drip=0.05))
        exp = self.exporter(timeout_s=5.0)
        outcome = exp.export(TRACES, trace_items(), time.monotonic() + 1.5)
        self.assertEqual((outcome.kind, outcome.cause), (RETRYABLE, FailureCause.TIMEOUT))
        self.assertIn("deadline", outcome.error)


class ResolverTest(unittest.TestCase):
    def test_answers_are_cached_for_a_while_failures_are_not(self):
        from lambda_otel.export_http import Resolver

        now = [100.0]
        calls = []
        answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]

        def fake(host, port, family=0, type=0, proto=0, flags=0):
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            calls.append(host)
            if host == "broken.test":
                raise socket.gaierror(socket.EAI_NONAME, "no such host")
            return answer

        resolver = Resolver(cache_s=30.0, clock=lambda: now[0])
        with mock.patch("socket.getaddrinfo", fake):
            self.assertEqual(resolver.resolve("a.test", 80, 1.0), answer)
            self.assertEqual(resolver.resolve("a.test", 80, 1.0), answer)
            self.assertEqual(calls, ["a.test"])
            now[0] += 31
            resolver.resolve("a.test", 80, 1.0)
            self.assertEqual(calls, ["a.test", "a.test"])
            resolver.forget("a.test")
            resolver.resolve("a.test", 80, 1.0)
            self.assertEqual(len(calls), 3)
            for _ in range(2):
                with self.assertRaises(socket.gaierror):
                    resolver.resolve("broken.test", 80, 1.0)
            self.assertEqual(calls.count("broken.test"), 2)


class PartialSuccessCapTest(ExporterTestCase):
    def test_rejections_are_capped_at_what_was_sent(self):
        self.sink.set_reply(Reply(partial_rejected=2_000_000, partial_message="nope"))
        outcome = self.export(self.exporter(), trace_request(3))
        self.assertEqual((outcome.kind, outcome.rejected_records), (SUCCESS, 3))
        self.assertEqual(self.loss.snapshot(), {(TRACES, EXPORT_REJECTED): 3})


class DeadBackendIsNotSilentTest(ExporterTestCase):
    def test_first_failure_of_each_kind_is_logged_once_with_endpoint_and_cause(self):
        port = free_port()
        exp = self.exporter(traces_endpoint=f"http://user:hunter2@127.0.0.1:{port}/v1/traces?token=tok3n")
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcomes = [exp.export(TRACES, trace_items(), time.monotonic() + 0.3) for _ in range(3)]
        self.assertEqual({(o.kind, o.cause) for o in outcomes}, {(RETRYABLE, FailureCause.CONNECT)})
        self.assertEqual(len(logs.output), 1, logs.output)
        line = logs.output[0]
        self.assertIn(f"127.0.0.1:{port}/v1/traces", line)
        self.assertIn("refused", line)
        for secret in ("hunter2", "user", "tok3n"):
            self.assertNotIn(secret, line)
            self.assertNotIn(secret, outcomes[0].error)

    def test_each_http_status_is_its_own_kind(self):
        self.sink.script([Reply(status=503), Reply(status=503), Reply(status=502)])
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            self.assertEqual(self.export(self.exporter()).kind, SUCCESS)
        self.assertEqual(len(logs.output), 2, logs.output)


class SecretsInLogsTest(ExporterTestCase):
    def test_header_value_with_cr_lf_is_never_sent_nor_printed(self):
        for value in ("Bearer abc\r\nX-Injected: 1", "tok\nen", "a\x00b"):
            with self.subTest(value=repr(value)):
                exp = self.exporter(headers={"Authorization": value})
                with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
                    outcome = self.export(exp)
                self.assertEqual((outcome.kind, outcome.cause), (REJECTED, FailureCause.CONFIG))
                text = "\n".join(logs.output) + outcome.error
                for part in value.replace("\r", "\n").replace("\x00", "\n").split("\n"):
                    if len(part) > 2:
                        self.assertNotIn(part, text)
                self.assertNotIn("\r", text)
                self.assertIn("Authorization", text)
        self.assertEqual(self.sink.requests, [])

    def test_error_bodies_cannot_inject_log_lines(self):
        self.sink.set_reply(Reply(status=400, body=b"bad\r\nlambda-otel: FAKE LINE " + SECRET.encode()))
        exp = self.exporter(headers={"Authorization": SECRET})
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcome = self.export(exp)
        self.assertEqual(outcome.kind, REJECTED)
        for text in logs.output + [outcome.error]:
            self.assertNotIn("\n", text)
            self.assertNotIn("\r", text)
            self.assertNotIn("s3cr3t", text)


class HooksTest(ExporterTestCase):
    """RequestSigner and HeaderSource (docs/design.md): what the AWS signer and secret headers plug into."""

    class Signer:
        def __init__(self):
            self.calls = []
            self.rejected = []

        def sign(self, method, url, headers, body):
            self.calls.append((method, url, dict(headers), body))
            return {"X-Test-Signature": hashlib.sha256(body).hexdigest(), "X-Test-Token": "signer-secret-token"}

        def on_rejected(self, status, body):
            self.rejected.append(status)
            return len(self.rejected) == 1  # renewed once

        def secret_values(self):
            return ("signer-secret-token",)

    class Headers:
        def __init__(self, value=None):
            self.value = value

        def headers(self, signal=None):
            return None if self.value is None else {"Authorization": self.value}

        def secret_values(self):
            return (self.value,) if self.value else ()

    def test_signer_signs_exactly_the_bytes_sent_once_per_attempt(self):
        self.sink.script([Reply(status=503)])
        signer = self.Signer()
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces"), compression="gzip"), self.loss,
                           signer=signer)
        self.addCleanup(exp.close)
        self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(2, timeout=5))
        self.assertEqual(len(signer.calls), 2)
        for (method, url, headers, body), rec in zip(signer.calls, self.sink.requests):
            self.assertEqual((method, url), ("POST", self.sink.url("traces")))
            self.assertEqual(rec.body_sha256, hashlib.sha256(body).hexdigest())
            self.assertEqual(rec.headers["x-test-signature"], rec.body_sha256)
            self.assertEqual(headers["Content-Encoding"], "gzip")
            self.assertEqual(headers["Content-Type"], "application/x-protobuf")

    def test_a_refused_signature_is_renewed_and_resent_once(self):
        self.sink.set_reply(Reply(status=403, body=b"SignatureDoesNotMatch: x-amz-security-token:signer-secret-token"))
        signer = self.Signer()
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces")), self.loss, signer=signer)
        self.addCleanup(exp.close)
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcome = self.export(exp)
        self.assertEqual((outcome.kind, outcome.status, len(signer.calls)), (REJECTED, 403, 2))
        self.assertEqual(signer.rejected, [403])  # renewed once; the second refusal is final
        self.assertNotIn("signer-secret-token", outcome.error + "".join(logs.output))

    def test_a_signer_that_cannot_sign_sends_nothing(self):
        class NoCredentials(self.Signer):
            def sign(self, method, url, headers, body):
                raise RuntimeError("no AWS credentials in the environment")

        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces")), self.loss, signer=NoCredentials())
        self.addCleanup(exp.close)
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcome = self.export(exp)
        self.assertEqual((outcome.kind, outcome.cause, outcome.attempts), (RETRYABLE, FailureCause.AUTH, 0))
        self.assertIn("no AWS credentials", logs.output[0])
        self.assertEqual(self.sink.requests, [])

    def test_header_source_not_ready_defers_without_sending(self):
        source = self.Headers()
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces")), self.loss, header_source=source)
        self.addCleanup(exp.close)
        self.assertEqual(self.export(exp).kind, NOT_READY)
        self.assertEqual(self.sink.requests, [])
        source.value = "Bearer resolved-secret-value"
        self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertEqual(self.sink.requests[0].headers["authorization"], source.value)
        self.sink.set_reply(Reply(status=400, body=source.value.encode()))
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcome = self.export(exp)
        self.assertNotIn("resolved-secret-value", outcome.error + "".join(logs.output))

    def test_warm_up_imports_and_resolves_ahead_of_the_first_export(self):
        looked_up = []
        real = socket.getaddrinfo

        def recording(host, port, family=0, type=0, proto=0, flags=0):
            if flags & socket.AI_NUMERICHOST or host != "backend.test":
                return real(host, port, family, type, proto, flags)
            looked_up.append(host)
            return real("127.0.0.1", port, family, type, proto, flags)

        with mock.patch("socket.getaddrinfo", recording):
            exp = self.exporter(traces_endpoint=f"http://backend.test:{self.sink.port}/v1/traces")
            self.assertTrue(exp.ready())  # nobody said a warm-up is coming: the first export imports
            exp.expect_warm_up()
            self.assertFalse(exp.ready())
            woken = []
            exp.warm_up(on_ready=lambda: woken.append(exp.ready()))
            self.assertEqual(woken, [True])
            self.assertTrue(exp.ready())
            self.assertEqual(looked_up, ["backend.test"])
            self.assertEqual(self.export(exp).kind, SUCCESS)
            self.assertEqual(looked_up, ["backend.test"])  # the export used the warm answer

    def test_a_header_source_that_raises_defers_the_export(self):
        class Broken(self.Headers):
            def headers(self, signal=None):
                raise KeyError("secret-ref")

        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces")), self.loss, header_source=Broken())
        self.addCleanup(exp.close)
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcomes = [self.export(exp) for _ in range(2)]
        self.assertEqual({o.kind for o in outcomes}, {NOT_READY})
        self.assertEqual(len(logs.output), 1)
        self.assertEqual(self.sink.requests, [])

    def test_requests_are_http_1_1(self):
        self.assertEqual(self.export(self.exporter()).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(1, timeout=5))
        self.assertEqual(self.sink.requests[0].http_version, "HTTP/1.1")


class RequestCapTest(ExporterTestCase):
    def test_a_batch_over_the_record_cap_is_split_in_order(self):
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces")), self.loss, max_request_records=2)
        self.addCleanup(exp.close)
        outcome = exp.export(TRACES, trace_items(5), time.monotonic() + 10)
        self.assertEqual((outcome.kind, outcome.attempts), (SUCCESS, 3))
        self.assertEqual([s.name for s in self.sink.spans()], [f"span-{i}" for i in range(5)])
        self.assertEqual([sum(len(ss.spans) for rs in r.decoded.resource_spans for ss in rs.scope_spans)
                          for r in self.sink.requests], [2, 2, 1])
        for rec in self.sink.requests:  # every piece keeps its resource
            self.assertEqual(rec.decoded.resource_spans[0].resource.attributes[0].value.string_value, "exporter-test")

    def test_a_batch_over_the_byte_cap_is_split_under_it(self):
        cap = 1000
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces"), compression="none"), self.loss,
                           max_request_bytes=cap)
        self.addCleanup(exp.close)
        self.assertEqual(exp.export(TRACES, trace_items(12), time.monotonic() + 10).kind, SUCCESS)
        self.assertGreater(len(self.sink.requests), 2)
        self.assertTrue(all(r.body_size <= cap for r in self.sink.requests), [r.body_size for r in self.sink.requests])
        self.assertEqual(len(self.sink.spans()), 12)


def metric_items() -> list:
    rm = metrics_pb2.ResourceMetrics()
    rm.resource.attributes.add(key="service.name").value.string_value = "exporter-test"
    metric = rm.scope_metrics.add().metrics.add(name="requests", unit="1")
    metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = True
    metric.sum.data_points.add(as_int=42, start_time_unix_nano=1_700_000_000_000_000_000,
                               time_unix_nano=1_700_000_001_000_000_000)
    return [rm]


def log_items() -> list:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "exporter-test"
    lr = rl.scope_logs.add().log_records.add(time_unix_nano=1_700_000_000_000_000_000, severity_number=9,
                                              trace_id=bytes([7]) * 16, span_id=bytes([1]) * 8)
    lr.body.string_value = "hello json"
    return list(req.resource_logs)


JSON_PROTOCOLS = {"traces_protocol": OtlpProtocol.HTTP_JSON, "metrics_protocol": OtlpProtocol.HTTP_JSON,
                  "logs_protocol": OtlpProtocol.HTTP_JSON}


class JsonExportTest(ExporterTestCase):
    """OTLP/JSON export (OTEL_EXPORTER_OTLP_PROTOCOL=http/json)."""

    def test_json_requests_per_signal(self):
        exp = self.exporter(metrics_endpoint=self.sink.url("metrics"), **JSON_PROTOCOLS)
        for signal, items in ((TRACES, trace_items()), ("metrics", metric_items()), (LOGS, log_items())):
            self.assertEqual(exp.export(signal, items, time.monotonic() + 10).kind, SUCCESS)
        self.assertTrue(self.sink.wait_for_requests(3, timeout=5))
        self.assertEqual({r.headers["content-type"] for r in self.sink.requests}, {"application/json"})
        self.assertEqual(self.sink.spans(), [s for rs in trace_items() for ss in rs.scope_spans for s in ss.spans])
        self.assertEqual(self.sink.log_records()[0], log_items()[0].scope_logs[0].log_records[0])
        self.assertEqual(self.sink.metrics()[0].point.as_int, 42)

    def test_partial_success_in_a_json_answer(self):
        self.sink.set_reply(Reply(partial_rejected=1, partial_message="one too old"))
        outcome = self.exporter(**JSON_PROTOCOLS).export(TRACES, trace_items(), time.monotonic() + 10)
        self.assertEqual((outcome.kind, outcome.rejected_records), (SUCCESS, 1))
        self.assertEqual(self.loss.snapshot(), {(TRACES, EXPORT_REJECTED): 1})

    def test_one_signal_json_the_others_protobuf(self):
        exp = self.exporter(logs_protocol=OtlpProtocol.HTTP_JSON)
        self.assertEqual(self.export(exp).kind, SUCCESS)
        self.assertEqual(exp.export(LOGS, log_items(), time.monotonic() + 10).kind, SUCCESS)
        self.assertEqual([r.headers["content-type"] for r in self.sink.requests],
                         ["application/x-protobuf", "application/json"])


def _rotel_agent() -> str:
    import rotel

    return os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")


class RotelAcceptsOurJsonTest(ExporterTestCase):
    """A real collector we did not write (Rotel) decodes our OTLP/JSON: what it forwards (as
    protobuf, to the sink) is exactly what we sent, ids included."""

    def setUp(self) -> None:
        super().setUp()
        self.port = free_port()
        self.agent = subprocess.Popen(
            [_rotel_agent(), "start", "--otlp-http-endpoint", f"127.0.0.1:{self.port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "otlp",
             "--otlp-exporter-endpoint", self.sink.endpoint, "--otlp-exporter-protocol", "http",
             "--disable-batching"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self._stop_agent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: until its HTTP receiver listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        else:
            self.fail("rotel-agent did not start listening")

    def _stop_agent(self) -> None:
        self.agent.terminate()
        try:
            self.agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait(timeout=10)

    def test_traces_metrics_logs(self):
        base = f"http://127.0.0.1:{self.port}"
        exp = self.exporter(traces_endpoint=base + "/v1/traces", metrics_endpoint=base + "/v1/metrics",
                            logs_endpoint=base + "/v1/logs", **JSON_PROTOCOLS)
        sent = {TRACES: trace_items(), "metrics": metric_items(), LOGS: log_items()}
        for signal, items in sent.items():
            outcome = exp.export(signal, items, time.monotonic() + 10)
            self.assertEqual(outcome.kind, SUCCESS, outcome)
        arrived = lambda: self.sink.spans() and self.sink.metrics() and self.sink.log_records()  # noqa: E731
        self.assertTrue(self.sink.wait_for(arrived, timeout=20), self.sink.requests)
        self.assertEqual(self.sink.spans(), [s for rs in sent[TRACES] for ss in rs.scope_spans for s in ss.spans])
        self.assertEqual(self.sink.log_records(), [lr for rl in sent[LOGS] for sl in rl.scope_logs
                                                   for lr in sl.log_records])
        point = self.sink.metrics()[0]
        self.assertEqual((point.name, point.point.as_int, point.metric.sum.is_monotonic), ("requests", 42, True))
        self.assertEqual(self.sink.span_items()[0].resource["service.name"], "exporter-test")


class ExportBenchSmokeTest(unittest.TestCase):
    """bench/bench_export.py runs (tiny size; nothing about its timings is asserted)."""

    def test_runs_every_client(self):
        from bench import bench_export

        quiet_exporter_logs(self)
        with mock.patch.object(bench_export, "WARMUP_ROUNDS", 1):
            results = bench_export.run(2)
        self.assertEqual(set(results), {"http.client", "requests.post", "OtlpExporter"})
        self.assertTrue(all(r["cpu"].n == 2 and r["wall"].n == 2 for r in results.values()))
        self.assertIn("OtlpExporter", bench_export.report(results))


def make_self_signed(directory: str):
    """A throwaway certificate for 127.0.0.1 (cryptography if installed, else the openssl CLI)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            return None
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )
        return cert, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(pkey, hashes.SHA256())
    )
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert, key


class CertificateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.pair = make_self_signed(cls.tmp.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def setUp(self) -> None:
        quiet_exporter_logs(self)
        if self.pair is None:
            self.skipTest("needs the 'cryptography' package or the openssl CLI to make a test certificate")
        self.sink = OtlpSink(tls=self.pair).start()
        self.addCleanup(self.sink.stop)
        self.loss = LossCounter()

    def exporter(self, certificate=None) -> OtlpExporter:
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces"), headers={"Authorization": SECRET},
                                          timeout_s=5.0, certificate=certificate), self.loss)
        self.addCleanup(exp.close)
        return exp

    def test_untrusted_certificate_is_a_failure_tried_once_and_logged_once(self):
        # A failure like a refused connection (so the flush breaker opens), not a rejection of the
        # data, and not retried within the export: it will not verify a moment later.
        exp = self.exporter()
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            outcomes = [exp.export(TRACES, trace_items(), time.monotonic() + 10) for _ in range(2)]
        for outcome in outcomes:
            self.assertEqual((outcome.kind, outcome.attempts, outcome.status, outcome.cause),
                             (RETRYABLE, 1, None, FailureCause.TLS))
            self.assertIn("certificate verification", outcome.error)
            self.assertNotIn("s3cr3t", outcome.error)
        self.assertEqual(len(logs.output), 1)
        self.assertEqual(self.sink.spans(), [])

    def test_untrusted_certificate_is_logged_once_per_endpoint_not_per_signal(self):
        exp = OtlpExporter(ExporterConfig(traces_endpoint=self.sink.url("traces"), metrics_endpoint=self.sink.url("metrics"),
                                          logs_endpoint=self.sink.url("logs"), headers={}, compression="gzip",
                                          timeout_s=5.0), self.loss)
        self.addCleanup(exp.close)
        with self.assertLogs("lambda_otel.exporter", level=logging.WARNING) as logs:
            for signal in (TRACES, "metrics", "logs"):
                self.assertEqual(exp.export(signal, items_for(signal), time.monotonic() + 10).kind, RETRYABLE)
        self.assertEqual(len(logs.output), 1, logs.output)

    def test_configured_ca_bundle_is_trusted(self):
        outcome = self.exporter(certificate=self.pair[0]).export(TRACES, trace_items(), time.monotonic() + 10)
        self.assertEqual(outcome.kind, SUCCESS)
        self.assertEqual(len(self.sink.spans()), 3)

    def test_missing_ca_bundle_is_a_clear_rejection(self):
        missing = os.path.join(self.tmp.name, "nope.pem")
        outcome = self.exporter(certificate=missing).export(TRACES, trace_items(), time.monotonic() + 10)
        self.assertEqual(outcome.kind, REJECTED)
        self.assertIn("nope.pem", outcome.error)
        self.assertEqual(self.sink.requests, [])


# In a fresh interpreter, as the extension's start-up thread: warm_up, then the first export of each
# signal (traces over OTLP/JSON, the others over protobuf); prints what those exports still imported.
FIRST_EXPORT_IMPORTS = r"""
import json, sys, time
from lambda_otel.config import load_config
from lambda_otel.exporter import OtlpExporter
from lambda_otel.local.sink import OtlpSink
from lambda_otel.loss import LossCounter
from lambda_otel.metrics import MetricsState
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

sink = OtlpSink().start()
config = load_config({"LAMBDA_OTEL_EXPORTER_ENDPOINT": sink.endpoint,
                      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json", "LAMBDA_OTEL_EXPORTER_COMPRESSION": "none"})
exporter = OtlpExporter(config.exporter, LossCounter())
exporter.expect_warm_up()
exporter.warm_up()
metrics = MetricsState(resource_pb2.Resource(), "delta", LossCounter())
metrics.add("faas.invocations", 1)
rs = trace_pb2.ResourceSpans()
rs.scope_spans.add().spans.add(name="first", trace_id=b"t" * 16, span_id=b"s" * 8)
rl = logs_pb2.ResourceLogs()
rl.scope_logs.add().log_records.add()
items = {"traces": rs, "logs": rl, "metrics": metrics.collect(time.time_ns())}
before = set(sys.modules)
kinds = [exporter.export(signal, [item], time.monotonic() + 10).kind.name for signal, item in items.items()]
print(json.dumps({"kinds": kinds, "imported": sorted(set(sys.modules) - before)}))
sink.stop()
"""


class WarmUpImportsTest(unittest.TestCase):
    """No hold waits for an import (#12.5): after ``warm_up`` the first export of each signal
    imports nothing (its collector request module, OTLP/JSON's codec: a few ms on a full core, ten
    times that at 128 MB, in the first hold that exports)."""

    def test_the_first_exports_after_warm_up_import_nothing(self):
        import json

        from tests.support import REPO

        out = subprocess.run([sys.executable, "-c", FIRST_EXPORT_IMPORTS], cwd=str(REPO), capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(result["kinds"], ["SUCCESS"] * 3, out.stderr)
        self.assertEqual(result["imported"], [])


if __name__ == "__main__":
    unittest.main()
