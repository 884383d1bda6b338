"""A backend that is not on this host: the real extension under the simulator, strategy ``end``,
exporting through a proxy that delays every request by ``DELAY_S`` to Rotel (a collector we did
not write), which forwards what it decoded to the sink.

Each request then takes longer than ``flush.SEND_TOGETHER_MIN_S``, so after the first flushes the
extension sends a flush's signals at once; the proxy sees them in flight together. Whatever the
order, every function line must come out of Rotel exactly once, and every invocation's span.
"""

import socket
import threading
import time
import unittest

from tests.reliability_support import expected_lines, function_lines
from tests.support import ExtensionTestCase
from tests import test_export_json_e2e

DELAY_S = 0.02  # added to every request: a backend a few ms away, with margin for a loaded runner
LINES = 5
INVOCATIONS = 12


class DelayingProxy:
    """TCP on 127.0.0.1: each chunk from a client is forwarded upstream ``delay`` s after it came;
    answers go back at once. Counts how many connections had a request in flight at once (from
    its first bytes to the first bytes of its answer)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        for t in list(self.threads):
            t.join(5)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            with self.lock:
                self.connections += 1
            state = {"waiting": False}
            for target in (self._requests, self._answers):
                t = threading.Thread(target=target, args=(client, upstream, state), daemon=True)
                self.threads.append(t)
                t.start()

    def _requests(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        def request_bytes() -> None:
            with self.lock:
                if not state["waiting"]:
                    state["waiting"] = True
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
            time.sleep(self.delay)

        self._pump(client, upstream, request_bytes)
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _answers(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        def answer_bytes() -> None:
            with self.lock:
                if state["waiting"]:
                    state["waiting"] = False
                    self.in_flight -= 1

        self._pump(upstream, client, answer_bytes)
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, target: socket.socket, on_data) -> None:
        """Copy ``source`` to ``target`` until either closes or the proxy stops; ``on_data`` runs
        before each chunk is forwarded."""
        source.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            on_data()
            try:
                target.sendall(data)
            except OSError:
                return


class DistantBackendTest(ExtensionTestCase):
    start_rotel = test_export_json_e2e.JsonThroughRotelTest.start_rotel

    def test_a_flush_to_a_distant_backend_sends_its_signals_at_once_and_loses_nothing(self):
        sink = self.make_sink()
        rotel_port = self.start_rotel(sink)
        proxy = DelayingProxy(rotel_port, DELAY_S)
        self.addCleanup(proxy.stop)
        env = self.make_env(None, LAMBDA_OTEL_EXPORTER_ENDPOINT=f"http://127.0.0.1:{proxy.port}",
                            LAMBDA_OTEL_FLUSH_STRATEGY="end")
        sim = self.make_sim(env)
        sim.start(timeout=30)
        started = self.invoke_until_started(sim)
        results = [sim.invoke({"logs": LINES}, timeout=30) for _ in range(INVOCATIONS)]
        sim.shutdown("spindown", timeout=30)
        output = self.extension_output(sim)
        self.assertTrue(all(r.status == "success" for r in started + results), output)
        expected = expected_lines(results, LINES)
        self.assertTrue(sink.wait_for(lambda: set(function_lines(sink)) >= expected, timeout=20), output)
        self.assertEqual(set(function_lines(sink).values()), {1}, "a line arrived twice")
        invocation_ids = {attr.value.string_value for s in sink.spans() for attr in s.attributes
                          if attr.key == "faas.invocation_id"}
        self.assertGreaterEqual(invocation_ids, {r.request_id for r in results})
        self.assertEqual(proxy.connections, 3, "one kept-alive connection per signal")
        self.assertGreaterEqual(proxy.max_in_flight, 2, "no two signals were ever in flight together")
        self.assertFalse([line for line in output.splitlines() if "WARNING" in line or "ERROR" in line], output)


if __name__ == "__main__":
    unittest.main()
