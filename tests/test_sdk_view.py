"""The function's SDK as the converter sees it, through the real receiver, with real clients.

One Python ``logging`` record goes both to the OpenTelemetry SDK's ``LoggingHandler`` (exported
over OTLP/HTTP to our receiver) and to awslambdaric's own Lambda handler (the line Lambda turns
into a Telemetry API ``function`` event), exactly the usual setup that doubles every record. The
converter must export none of the Telemetry API copies. A real SDK SERVER span parented on the
X-Ray header (``xray-lambda`` propagator) must turn our invocation span INTERNAL.
"""

import copy
import logging
import os
import time
import unittest
import warnings
from unittest import mock

from awslambdaric import bootstrap
from awslambdaric.lambda_runtime_log_utils import LogFormat
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.aws import AwsXRayLambdaPropagator
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from lambda_otel.aggregator import Aggregator
from lambda_otel.convert import TelemetryConverter
from lambda_otel.loss import LossCounter
from lambda_otel.metrics import MetricsState
from lambda_otel.receiver import OtlpReceiver
from lambda_otel.sdk_view import FunctionSdkView
from tests.test_convert import HEADER, RID, START, TRACING, XRAY_PARENT, by_name, make_resource, parse_logs, parse_spans

WAIT = 5.0


class _Capture:
    """awslambdaric's log sink interface: what the runtime would write for Lambda to pick up."""

    def __init__(self):
        self.lines = []

    def log(self, msg, frame_type=None):
        self.lines.append(msg)

    def log_error(self, lines):
        self.lines.append("\r".join(lines) + "\n")


class ThroughTheReceiver(unittest.TestCase):
    def setUp(self):
        self.loss = LossCounter()
        self.view = FunctionSdkView()
        self.receiver = OtlpReceiver(Aggregator(1 << 26, 100_000, self.loss), self.loss, port=0, poll_interval_s=0.02,
                                     observer=self.view)
        self.receiver.start()
        self.addCleanup(self.receiver.stop)
        self.metrics = MetricsState(make_resource(), "cumulative", self.loss)
        self.conv = TelemetryConverter(make_resource(), self.metrics, self.loss, sdk_view=self.view)

    def lambda_handler(self, log_format):
        """awslambdaric's real handler and formatter, taken off the root logger it installs itself on."""
        root = logging.getLogger()
        before = list(root.handlers)
        converter = logging.Formatter.converter
        sink = _Capture()
        bootstrap._setup_logging(log_format, None, sink)
        self.addCleanup(setattr, logging.Formatter, "converter", converter)
        (handler,) = [h for h in root.handlers if h not in before]
        root.removeHandler(handler)
        return handler, sink

    def run_logging(self, log_format):
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{self.receiver.address}/v1/logs", timeout=WAIT)))
        self.addCleanup(provider.shutdown)
        lambda_handler, sink = self.lambda_handler(log_format)
        logger = logging.getLogger(f"sdk-view-{log_format}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        with warnings.catch_warnings():  # SDK 1.45 deprecates it; functions still use it
            warnings.simplefilter("ignore", DeprecationWarning)
            logger.addHandler(LoggingHandler(logger_provider=provider))
        logger.addHandler(lambda_handler)
        self.addCleanup(logger.handlers.clear)
        bootstrap._GLOBAL_AWS_REQUEST_ID = RID
        self.addCleanup(setattr, bootstrap, "_GLOBAL_AWS_REQUEST_ID", None)

        now = time.time_ns()
        start = dict(copy.deepcopy(START), time=_iso(now - 10**9))
        self.conv.process([start])
        for i in range(30):
            level = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[i % 4]
            logger.log(level, "record %d with args %s", i, {"k": i})
            if i % 10 == 0:
                time.sleep(0.0013)  # land on different milliseconds
        try:
            raise KeyError("missing")
        except KeyError:
            logger.exception("failed on purpose")
        provider.force_flush()
        self.assertEqual(len(sink.lines), 31)
        events = [{"time": _iso(time.time_ns()), "type": "function", "record": line} for line in sink.lines]
        if log_format == LogFormat.JSON:  # Lambda hands JSON-format lines over as objects
            import json
            for e in events:
                e["record"] = json.loads(e["record"])
        held = self.conv.process(events)
        done = {"time": _iso(time.time_ns()), "type": "platform.runtimeDone",
                "record": {"requestId": RID, "status": "success", "tracing": TRACING}}
        out = self.conv.process([done])
        return held, out

    def test_text_format_every_record_once(self):
        held, out = self.run_logging(LogFormat.TEXT)
        self.assertEqual(held.log_count, 0)
        self.assertEqual(parse_logs(out), [])
        self.assertEqual(out.deduplicated, 31)

    def test_json_format_every_record_once(self):
        held, out = self.run_logging(LogFormat.JSON)
        self.assertEqual(parse_logs(held) + parse_logs(out), [])
        self.assertEqual(out.deduplicated, 31)

    def test_real_server_span_turns_ours_internal(self):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{self.receiver.address}/v1/traces", timeout=WAIT)))
        self.addCleanup(provider.shutdown)
        with mock.patch.dict(os.environ, {"_X_AMZN_TRACE_ID": HEADER}):
            parent = AwsXRayLambdaPropagator().extract({})
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("my-fn", context=parent, kind=trace.SpanKind.SERVER):
            pass
        now = time.time_ns()
        out = self.conv.process([dict(copy.deepcopy(START), time=_iso(now)),
                                 {"time": _iso(now + 10**6), "type": "platform.runtimeDone",
                                  "record": {"requestId": RID, "status": "success"}}])
        inv = by_name(parse_spans(out))["my-fn"][0]
        self.assertEqual(inv.span_id, XRAY_PARENT)
        self.assertEqual(inv.kind, trace_pb2.Span.SPAN_KIND_INTERNAL)


class Bounded(unittest.TestCase):
    def test_memory_is_bounded_and_garbage_ignored(self):
        from tests.test_convert import sdk_log, sdk_server_span

        view = FunctionSdkView(max_server_parents=10, max_log_keys=10)
        for i in range(100):
            view.observe("traces", [sdk_server_span(parent=(i + 1).to_bytes(8, "big"))])
            view.observe("logs", [sdk_log(f"m{i}", 10**18 + i)])
        self.assertEqual(len(view._server_parents), 10)
        self.assertEqual(len(view._sdk_logs), 10)
        self.assertTrue(view.has_server_child(b"", (100).to_bytes(8, "big")) is False)  # other trace
        self.assertFalse(view.take_log(9, "m0", 0, 2 * 10**18))  # forgotten
        self.assertTrue(view.take_log(9, "m99", 0, 2 * 10**18))
        self.assertFalse(view.take_log(9, "m99", 0, 2 * 10**18))  # consumed
        view.observe("logs", [object()])  # never raises
        view.observe("traces", None)


def _iso(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac // 10**6:03d}Z"


if __name__ == "__main__":
    unittest.main()


class LateCopiesBeforeAnySdkLog(unittest.TestCase):
    def test_lines_are_remembered_up_to_the_index_size_until_the_sdk_sends_logs(self):
        from tests.test_convert import sdk_log

        seen = []
        view = FunctionSdkView(max_log_keys=5, on_deduplicated=seen.append)
        t = 10**18
        self.assertEqual(view.take_logs([(9, f"m{i}", t, t + 10) for i in range(8)]), [False] * 8)
        self.assertEqual(len(view._exported), 5)  # a function with no SDK logs pays for 5 lines only
        self.assertEqual(view.take_logs([(9, "m8", t, t + 10)]), [False])
        self.assertEqual(len(view._exported), 5)
        late = sdk_log("m0", t + 1)
        view.observe("logs", [late])
        self.assertEqual(len(late.scope_logs[0].log_records), 0)  # remembered: the late copy is dropped
        self.assertEqual(seen, [1])
        later = sdk_log("m8", t + 1)  # past the budget while no SDK log had come: kept (exported twice)
        view.observe("logs", [later])
        self.assertEqual(len(later.scope_logs[0].log_records), 1)
        # Once the SDK sends logs, every exported line is remembered again.
        self.assertEqual(view.take_logs([(9, "m9", t, t + 10)]), [False])
        view.observe("logs", [sdk_log("m9", t + 2)])
        self.assertEqual(seen, [1, 1])
