"""The Extensions API client's own HTTP/1.1 (a plain socket) against a scripted peer on 127.0.0.1,
and the Telemetry API subscription's schema fallback.

The peer answers with raw bytes, so each answer is exactly the shape under test: a
Content-Length body, a chunked body, a body ended by closing the connection, a keep-alive
connection the peer closed while idle, a refusal with an error body, no answer at all.
"""

import json
import socket
import threading
import unittest
from unittest import mock

from lambda_otel import extensions_api
from lambda_otel.config import TelemetryConfig
from lambda_otel.extensions_api import ExtensionsApiClient, ExtensionsApiError, InvokeEvent, ShutdownEvent
from lambda_otel.subscription import SCHEMA_VERSIONS, subscribe

EXT_ID = "6f8c2d1e-0000-4000-8000-000000000001"


def answer(status=200, body=b"", headers=None, reason="OK"):
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if not any(h.lower() in ("content-length", "transfer-encoding") for h in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ScriptedPeer:
    """Accepts connections; for each request calls script(request) -> (raw answer bytes | None, close)."""

    def __init__(self, script):
        self.script = script
        self.requests = []  # (connection number, method, path, headers, body)
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.sock.getsockname()[1]

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn, self.connections), daemon=True).start()

    def _connection(self, conn, number):
        conn.settimeout(5)
        buffer = b""
        with conn:
            for _ in range(100):
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                request = (number, method, path, headers, body)
                self.requests.append(request)
                raw, close = self.script(request)
                if raw is None:  # never answer
                    self.stopping.wait(10)
                    return
                conn.sendall(raw)
                if close:
                    return


def registered(script_rest):
    """A script that answers register, then hands every other request to script_rest."""
    def script(request):
        _, method, path, _, _ = request
        if path.endswith("/extension/register"):
            body = json.dumps({"functionName": "fn", "functionVersion": "$LATEST", "handler": "app.handler",
                               "accountId": "123456789012"}).encode()
            return answer(200, body, {"Lambda-Extension-Identifier": EXT_ID, "Content-Type": "application/json"}), False
        return script_rest(request)
    return script


INVOKE = json.dumps({"eventType": "INVOKE", "deadlineMs": 1700000003000, "requestId": "req-1",
                     "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
                     "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-5759e988-bd862e3fe1be46a994272793"}}).encode()
SHUTDOWN = json.dumps({"eventType": "SHUTDOWN", "shutdownReason": "SPINDOWN", "deadlineMs": 1700000005000}).encode()


class ClientTest(unittest.TestCase):
    def peer(self, script):
        peer = ScriptedPeer(script)
        self.addCleanup(peer.stop)
        return peer

    def test_register_then_events_on_one_keep_alive_connection(self):
        events = iter([INVOKE, SHUTDOWN])
        peer = self.peer(registered(lambda r: (answer(200, next(events)), False)))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        reg = client.register("lambda-otel", ("SHUTDOWN",))
        self.assertEqual(reg.extension_id, EXT_ID)
        self.assertEqual((reg.function_name, reg.account_id), ("fn", "123456789012"))
        invoke = client.next_event()
        self.assertIsInstance(invoke, InvokeEvent)
        self.assertEqual(invoke.request_id, "req-1")
        self.assertEqual(invoke.tracing_value, "Root=1-5759e988-bd862e3fe1be46a994272793")
        shutdown = client.next_event()
        self.assertEqual(shutdown, ShutdownEvent("spindown", 1700000005000))

        self.assertEqual(peer.connections, 1)
        _, method, path, headers, body = peer.requests[0]
        self.assertEqual((method, path), ("POST", "/2020-01-01/extension/register"))
        self.assertEqual(headers["lambda-extension-name"], "lambda-otel")
        self.assertEqual(headers["lambda-extension-accept-feature"], "accountId")
        self.assertEqual(json.loads(body), {"events": ["SHUTDOWN"]})
        _, method, path, headers, _ = peer.requests[1]
        self.assertEqual((method, path), ("GET", "/2020-01-01/extension/event/next"))
        self.assertEqual(headers["lambda-extension-identifier"], EXT_ID)

    def test_chunked_and_close_delimited_bodies(self):
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (INVOKE[:10], INVOKE[10:])) + b"0\r\n\r\n"
        answers = iter([
            (answer(200, chunked, {"Transfer-Encoding": "chunked"}), False),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SHUTDOWN, True),
        ])
        peer = self.peer(registered(lambda r: next(answers)))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        client.register("lambda-otel")
        self.assertEqual(client.next_event().request_id, "req-1")
        self.assertEqual(client.next_event().reason, "spindown")

    def test_a_keep_alive_connection_closed_by_the_peer_is_reopened_once(self):
        def script(request):
            return answer(200, INVOKE, {"Connection": "keep-alive"}), True  # says keep-alive, then closes
        peer = self.peer(registered(script))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        client.register("lambda-otel")
        # The register connection is still open on our side; the peer closed the event connection.
        for _ in range(3):
            self.assertEqual(client.next_event().request_id, "req-1")
        self.assertGreaterEqual(peer.connections, 3)

    def test_on_sent_runs_once_before_the_answer_is_awaited(self):
        hooks = []
        waited_for_hook = []
        hook_ran = threading.Event()

        def script(request):
            waited_for_hook.append(hook_ran.wait(5))  # answer only once the client's hook ran
            hook_ran.clear()
            return answer(200, INVOKE, {"Connection": "keep-alive"}), True  # then close: the next call resends
        peer = self.peer(registered(script))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        client.register("lambda-otel")

        def hook(name):
            hooks.append(name)
            hook_ran.set()
        for name in ("first", "second", "third"):
            self.assertEqual(client.next_event(on_sent=lambda n=name: hook(n)).request_id, "req-1")
        self.assertEqual(hooks, ["first", "second", "third"])  # once each, resends included
        self.assertEqual(waited_for_hook, [True, True, True])

    def test_refusal_carries_status_and_error_type(self):
        def script(request):
            body = json.dumps({"errorType": "Extension.InvalidEventType", "errorMessage": "INVOKE: not allowed"}).encode()
            return answer(403, body, reason="Forbidden"), False
        client = ExtensionsApiClient(self.peer(script).address)
        self.addCleanup(client.close)
        with self.assertRaises(ExtensionsApiError) as ctx:
            client.register("lambda-otel")
        self.assertEqual(ctx.exception.status, 403)
        self.assertEqual(ctx.exception.error_type, "Extension.InvalidEventType")
        self.assertIn("INVOKE: not allowed", str(ctx.exception))

    def test_register_is_bounded_when_the_api_never_answers(self):
        peer = self.peer(lambda r: (None, False))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        with mock.patch.object(extensions_api, "REQUEST_TIMEOUT_S", 0.2):
            with self.assertRaises(ExtensionsApiError):
                client.call("POST", "/2020-01-01/extension/register", b"{}", {}, timeout=0.2)

    def test_error_reports_use_a_connection_of_their_own(self):
        def script(request):
            return answer(202, b'{"status":"OK"}'), False
        peer = self.peer(registered(script))
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        client.register("lambda-otel")
        client.exit_error("Extension.ThreadDied", "thread x died")
        self.assertEqual(peer.connections, 2)
        number, method, path, headers, body = peer.requests[-1]
        self.assertEqual(path, "/2020-01-01/extension/exit/error")
        self.assertEqual(headers["lambda-extension-function-error-type"], "Extension.ThreadDied")
        self.assertEqual(json.loads(body)["errorMessage"], "thread x died")

    def test_unreachable_api_is_an_extensions_api_error(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = "127.0.0.1:%d" % s.getsockname()[1]
        with self.assertRaises(ExtensionsApiError):
            ExtensionsApiClient(address).register("lambda-otel")


class SubscriptionTest(unittest.TestCase):
    def subscribe_against(self, refuse_status):
        seen = []

        def script(request):
            body = json.loads(request[4])
            seen.append(body["schemaVersion"])
            if body["schemaVersion"] == "2025-01-29" and refuse_status:
                return answer(refuse_status, b'{"errorType":"ValidationError"}'), False
            return answer(200, b"OK"), False

        peer = ScriptedPeer(registered(script))
        self.addCleanup(peer.stop)
        client = ExtensionsApiClient(peer.address)
        self.addCleanup(client.close)
        client.register("lambda-otel")
        return client, seen, peer

    def test_newest_schema_first(self):
        client, seen, peer = self.subscribe_against(None)
        self.assertEqual(subscribe(client, TelemetryConfig(), 4243), "2025-01-29")
        self.assertEqual(seen, ["2025-01-29"])
        _, method, path, headers, _ = peer.requests[-1]
        self.assertEqual((method, path), ("PUT", "/2022-07-01/telemetry"))
        self.assertEqual(headers["lambda-extension-identifier"], EXT_ID)

    def test_falls_back_on_400_and_404(self):
        for status in (400, 404):
            with self.subTest(status=status):
                client, seen, _ = self.subscribe_against(status)
                self.assertEqual(subscribe(client, TelemetryConfig(), 4243), "2022-12-13")
                self.assertEqual(seen, list(SCHEMA_VERSIONS))

    def test_other_refusals_do_not_fall_back(self):
        client, seen, _ = self.subscribe_against(403)
        with self.assertRaises(ExtensionsApiError) as ctx:
            subscribe(client, TelemetryConfig(), 4243)
        self.assertEqual(seen, ["2025-01-29"])
        self.assertEqual(ctx.exception.status, 403)


if __name__ == "__main__":
    unittest.main()
