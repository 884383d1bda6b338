"""Status codes and error bodies of the simulator's HTTP APIs (Runtime, Extensions, Telemetry), malformed input too.

The test itself plays the runtime (no runtime process) and registers internal extensions by hand.
"""

import unittest
import uuid
from concurrent.futures import ThreadPoolExecutor

from lambda_otel.local.simulator import Simulator
from tests.fixtures.sim.support import Collector, api, subscription

NEXT = "/2018-06-01/runtime/invocation/next"
REGISTER = "/2020-01-01/extension/register"
EXT_NEXT = "/2020-01-01/extension/event/next"
TELEMETRY = "/2022-07-01/telemetry"


class ApiTestCase(unittest.TestCase):
    lenient = False

    def setUp(self):
        self.sim = Simulator(handler=None, timeout_s=3.0, lenient=self.lenient)
        self.addCleanup(self.sim.stop)
        self.rt = self.sim.runtime_api
        self.pool = ThreadPoolExecutor(4)
        self.addCleanup(self.pool.shutdown, wait=False)
        self.sim.start(wait=False)
        self.sim.wait_for(lambda: self.sim.telemetry_events("platform.initStart"), 5, "initStart")

    def register(self, name, events=("INVOKE",), headers=None):
        hdrs = {"Lambda-Extension-Name": name, **(headers or {})}
        return api(self.rt, "POST", REGISTER, {"events": list(events)}, hdrs)

    def assert_error(self, response, status, error_type):
        code, _, body = response
        self.assertEqual(code, status, body)
        self.assertEqual(body["errorType"], error_type, body)
        self.assertIsInstance(body["errorMessage"], str)

    def runtime_ready(self):
        """The runtime's first /next (blocks in a thread until an invocation comes)."""
        fut = self.pool.submit(api, self.rt, "GET", NEXT)
        self.sim.wait_for(lambda: self.sim._env.runtime_ready_at is not None, 5, "runtime ready")
        return fut


class RegistrationRules(ApiTestCase):
    def test_register_errors_and_limits(self):
        """Check 1: empty name, bad body, duplicate, SHUTDOWN from internal, 11th extension, closed."""
        self.assert_error(api(self.rt, "POST", REGISTER, {"events": []}, {}), 403, "Extension.InvalidExtensionName")
        self.assert_error(api(self.rt, "POST", REGISTER, "{not json", {"Lambda-Extension-Name": "x"}),
                          403, "InvalidRequestFormat")
        self.assert_error(self.register("x", ["INVOKE", "BOGUS"]), 403, "Extension.InvalidEventType")
        self.assert_error(self.register("x", ["SHUTDOWN"]), 403, "Extension.InvalidEventType")
        code, headers, body = self.register("ext-0", [], {"Lambda-Extension-Accept-Feature": "accountId"})
        self.assertEqual(code, 200)
        uuid.UUID(headers["lambda-extension-identifier"])
        self.assertEqual(body, {"functionName": "test-function", "functionVersion": "$LATEST", "handler": "",
                                "accountId": "123456789012"})
        self.assert_error(self.register("ext-0"), 403, "Extension.InvalidExtensionState")
        for i in range(1, 10):
            code, _, body = self.register(f"ext-{i}")
            self.assertEqual(code, 200, body)
            self.assertNotIn("accountId", body)
        self.assert_error(self.register("ext-10"), 403, "Extension.TooManyExtensions")

    def test_registration_closes_at_runtime_first_next(self):
        self.assertEqual(self.register("early")[0], 200)
        self.runtime_ready()
        self.assert_error(self.register("late"), 403, "Extension.RegistrationClosed")


class ExtensionNextRules(ApiTestCase):
    def test_identifier_errors(self):
        """Check 2: three distinct errorTypes for missing / invalid / unknown identifiers."""
        self.assert_error(api(self.rt, "GET", EXT_NEXT), 403, "Extension.MissingExtensionIdentifier")
        self.assert_error(api(self.rt, "GET", EXT_NEXT, headers={"Lambda-Extension-Identifier": "nope"}),
                          403, "Extension.InvalidExtensionIdentifier")
        self.assert_error(api(self.rt, "GET", EXT_NEXT, headers={"Lambda-Extension-Identifier": str(uuid.uuid4())}),
                          403, "Extension.UnknownExtensionIdentifier")
        for path in ("/2020-01-01/extension/init/error", "/2020-01-01/extension/exit/error"):
            self.assert_error(api(self.rt, "POST", path, b"{}", {}), 403, "Extension.MissingExtensionIdentifier")

    def test_error_endpoints(self):
        _, headers, _ = self.register("a")
        ext_id = headers["lambda-extension-identifier"]
        self.assert_error(api(self.rt, "POST", "/2020-01-01/extension/init/error", b"{}",
                              {"Lambda-Extension-Identifier": ext_id}), 403, "Extension.MissingHeader")
        code, _, body = api(self.rt, "POST", "/2020-01-01/extension/init/error", b'{"errorMessage":"x"}',
                            {"Lambda-Extension-Identifier": ext_id,
                             "Lambda-Extension-Function-Error-Type": "Extension.ConfigInvalid"})
        self.assertEqual((code, body), (202, {"status": "OK"}))
        self.assert_error(api(self.rt, "GET", EXT_NEXT, headers={"Lambda-Extension-Identifier": ext_id}),
                          403, "Extension.InvalidExtensionState")
        init = self.sim.wait_init(5)  # the extension init error fails init
        self.assertEqual((init.status, init.error_type), ("error", "Extension.InitError"))
        report = self.sim.telemetry_events("platform.initReport")[-1]["record"]
        self.assertEqual((report["status"], report["errorType"]), ("error", "Extension.InitError"))
        ext = self.sim.telemetry_events("platform.extension")[-1]["record"]
        self.assertEqual((ext["name"], ext["errorType"]), ("a", "Extension.ConfigInvalid"))


class RuntimeRules(ApiTestCase):
    def test_response_status_codes(self):
        """Check 3 (+13): wrong id 400, 202 OK (any bytes), twice 403, > 6 MB 413, /error normalisation."""
        fut = self.runtime_ready()
        self.assertTrue(self.sim.wait_init(5).ok)
        self.assert_error(api(self.rt, "POST", "/2018-06-01/runtime/init/error", b"{}",
                              {"Lambda-Runtime-Function-Error-Type": "Runtime.X"}), 403, "InvalidStateTransition")
        self.assert_error(api(self.rt, "GET", "/2018-06-01/nope"), 404, "NotFound")

        res = self.sim.invoke_async(b'{"a": 1}', client_context={"custom": {"k": "v"}})
        code, headers, body = fut.result(5)
        self.assertEqual((code, body), (200, {"a": 1}))
        rid = headers["lambda-runtime-aws-request-id"]
        self.assertEqual(rid, res.request_id)
        self.assertEqual(headers["lambda-runtime-invoked-function-arn"],
                         "arn:aws:lambda:us-east-1:123456789012:function:test-function")
        self.assertEqual(int(headers["lambda-runtime-deadline-ms"]), res.deadline_ms)
        self.assertEqual(headers["lambda-runtime-trace-id"], res.trace_header)
        self.assertEqual(headers["lambda-runtime-client-context"], '{"custom": {"k": "v"}}')
        self.assert_error(api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{uuid.uuid4()}/response", b"x"),
                          400, "InvalidRequestID")
        self.assert_error(api(self.rt, "GET", NEXT), 403, "InvalidStateTransition")  # /next before a result
        code, _, body = api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{rid}/response", b"not json")
        self.assertEqual((code, body), (202, {"status": "OK"}))
        self.assertEqual(res.wait_response(5), b"not json")
        self.assert_error(api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{rid}/response", b"x"),
                          403, "InvalidStateTransition")
        self.assert_error(api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{rid}/error", b"x"),
                          403, "InvalidStateTransition")

        fut = self.pool.submit(api, self.rt, "GET", NEXT)  # runtime done for invoke 1
        self.assertEqual(res.wait(5).status, "success")
        self.assertEqual(res.runtime_done["metrics"]["producedBytes"], 8)

        res2 = self.sim.invoke_async(b"{}", trace_header=None)
        code, headers, _ = fut.result(5)
        self.assertNotIn("lambda-runtime-trace-id", headers)
        big = b"x" * (6 * 1024 * 1024 + 1)
        self.assert_error(api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{res2.request_id}/response", big),
                          413, "RequestEntityTooLarge")
        fut = self.pool.submit(api, self.rt, "GET", NEXT)
        self.assertEqual((res2.wait(5).status, res2.error_type), ("error", "Function.ResponseSizeTooLarge"))
        self.assertNotIn("tracing", res2.report)

        for header, expected in (("Function.MyError", "Function.MyError"), ("weird", "Runtime.Unknown"),
                                 ("Function.not_ok", "Function.Unknown"), ("Runtime.ImportModuleError",
                                                                           "Runtime.ImportModuleError")):
            res3 = self.sim.invoke_async(b"{}")
            fut.result(5)
            code, _, _ = api(self.rt, "POST", f"/2018-06-01/runtime/invocation/{res3.request_id}/error",
                             b'{"errorMessage":"boom","errorType":"MyError"}',
                             {"Lambda-Runtime-Function-Error-Type": header})
            self.assertEqual(code, 202)
            fut = self.pool.submit(api, self.rt, "GET", NEXT)
            res3.wait(5)
            self.assertEqual((res3.status, res3.error_type), ("error", expected))
            self.assertEqual((res3.runtime_done["status"], res3.runtime_done["errorType"]), ("error", expected))
            self.assertEqual((res3.report["status"], res3.report["errorType"]), ("error", expected))
            self.assertIsNone(res3.reset)  # a function error does not reset the environment
        self.sim.stop()

    def test_runtime_init_error(self):
        code, _, body = api(self.rt, "POST", "/2018-06-01/runtime/init/error",
                            b'{"errorMessage":"bad","errorType":"Runtime.ImportModuleError"}',
                            {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
        self.assertEqual((code, body), (202, {"status": "OK"}))
        init = self.sim.wait_init(5)
        self.assertEqual((init.status, init.error_type), ("error", "Runtime.ImportModuleError"))
        rt_done = self.sim.telemetry_events("platform.initRuntimeDone")[-1]["record"]
        self.assertEqual((rt_done["status"], rt_done["errorType"]), ("error", "Runtime.ImportModuleError"))


class SubscriptionRules(ApiTestCase):
    def setUp(self):
        super().setUp()
        self.collector = Collector()
        self.addCleanup(self.collector.close)
        _, headers, _ = self.register("sub")
        self.ext_id = headers["lambda-extension-identifier"]

    def subscribe(self, body, ext_id=None):
        hdrs = {"Content-Type": "application/json"}
        if ext_id is not False:
            hdrs["Lambda-Extension-Identifier"] = ext_id or self.ext_id
        return api(self.rt, "PUT", TELEMETRY, body, hdrs)

    def test_validation_and_success(self):
        """Check 4: out-of-range buffering and bad bodies -> 400; valid -> 200 "OK" + telemetrySubscription."""
        port = self.collector.port
        bad = [
            subscription(port, maxItems=999), subscription(port, maxItems=10001),
            subscription(port, maxBytes=262143), subscription(port, maxBytes=1048577),
            subscription(port, timeoutMs=24), subscription(port, timeoutMs=30001),
            subscription(port, types=()), subscription(port, types=("platform", "bogus")),
            {**subscription(port), "schemaVersion": "2021-01-01"},
            {**subscription(port), "destination": {"protocol": "HTTP", "URI": f"http://127.0.0.1:{port}/"}},
            {**subscription(port), "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain/"}},
            {**subscription(port), "destination": {"protocol": "TCP", "port": port}},
            {**subscription(port), "buffering": {"maxItems": "many"}},
            b"{oops",
        ]
        for body in bad:
            with self.subTest(body=body):
                self.assert_error(self.subscribe(body), 400, "ValidationError")
        self.assert_error(self.subscribe(subscription(port), ext_id=False), 403, "Extension.MissingExtensionIdentifier")
        self.assert_error(self.subscribe(subscription(port), ext_id=str(uuid.uuid4())),
                          403, "Extension.UnknownExtensionIdentifier")
        code, _, body = self.subscribe(subscription(port, maxItems=1000, maxBytes=262144, timeoutMs=25))
        self.assertEqual((code, body), (200, "OK"))
        code, _, body = api(self.rt, "PUT", TELEMETRY + "/", subscription(port),
                            {"Lambda-Extension-Identifier": self.ext_id})
        self.assertEqual((code, body), (200, "OK"))  # trailing slash accepted; re-subscribing replaces
        subs = self.sim.telemetry_events("platform.telemetrySubscription")
        self.assertEqual(subs[-1]["record"], {"name": "sub", "state": "Subscribed",
                                              "types": ["platform", "function", "extension"]})
        # the replayed initStart reaches the listener (subscriber not frozen during init)
        with self.collector.cv:
            self.collector.cv.wait_for(lambda: any(e["type"] == "platform.initStart"
                                                   for e in self.collector.events()), 5)
        self.assertEqual(self.collector.posts[0][1], "/telemetry")

    def test_closed_after_init(self):
        """Check 4: subscription closes when init ends -> 403."""
        self.runtime_ready()
        self.pool.submit(api, self.rt, "GET", EXT_NEXT, None, {"Lambda-Extension-Identifier": self.ext_id})
        self.assertTrue(self.sim.wait_init(5).ok)
        self.assert_error(self.subscribe(subscription(self.collector.port)), 403, "Telemetry.SubscriptionClosed")
        self.sim.stop()


class LenientSubscription(ApiTestCase):
    lenient = True

    def test_late_subscription_and_local_hosts(self):
        _, headers, _ = self.register("late")
        ext_id = headers["lambda-extension-identifier"]
        fut = self.runtime_ready()
        self.pool.submit(api, self.rt, "GET", EXT_NEXT, None, {"Lambda-Extension-Identifier": ext_id})
        self.assertTrue(self.sim.wait_init(5).ok)
        collector = Collector()
        self.addCleanup(collector.close)
        body = subscription(collector.port, maxItems=5, timeoutMs=25)
        body["destination"]["URI"] = f"http://127.0.0.1:{collector.port}/"
        code, _, resp = api(self.rt, "PUT", TELEMETRY, body, {"Lambda-Extension-Identifier": ext_id})
        self.assertEqual((code, resp), (200, "OK"))
        res = self.sim.invoke_async(b"{}")  # thaws the sandbox: the replayed init events are delivered
        fut.result(5)
        with collector.cv:
            collector.cv.wait_for(lambda: {"platform.initStart", "platform.initReport"}
                                  <= {e["type"] for e in collector.events()}, 5)
        self.assertIn("platform.initReport", [e["type"] for e in collector.events()])
        self.assertIsNotNone(res)
        self.sim.stop()


if __name__ == "__main__":
    unittest.main()
