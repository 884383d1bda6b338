"""Regression tests from an adversarial pass over the running extension (issues 12 and 13).

Each test is one way a hostile client, backend or platform broke a promise, kept so it never
comes back. Real servers on 127.0.0.1, real sockets.
"""

import socket
import unittest

from lambda_otel.aggregator import Aggregator
from lambda_otel.config import TelemetryConfig
from lambda_otel.loss import LossCounter
from lambda_otel.receiver import OtlpReceiver
from lambda_otel.subscription import bind_socket
from lambda_otel.telemetry_api import TelemetryListener

MiB = 1 << 20


def answer_to(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        return s.recv(200)


class ContentLengthWithThousandsOfDigitsTest(unittest.TestCase):
    """A Content-Length of 5,000 digits: int() refuses it (ValueError past 4,300 digits), which
    escaped as an unhandled error: a traceback on stderr and the connection dropped unanswered."""

    def setUp(self):
        loss = LossCounter()
        self.receiver = OtlpReceiver(Aggregator(max_bytes=64 * MiB, max_records=100_000, loss=loss), loss,
                                     port=0, poll_interval_s=0.02)
        self.receiver.start()
        self.addCleanup(self.receiver.stop)
        self.listener = TelemetryListener(bind_socket("127.0.0.1", 0), lambda batch: None, TelemetryConfig())
        self.listener.start()
        self.addCleanup(self.listener.stop)

    def test_both_listeners_answer_413(self):
        for name, port, path in (("receiver", self.receiver.port, "/v1/traces"), ("listener", self.listener.port, "/")):
            for digits in ("9" * 5000, "0" * 5000 + "1" * 19):
                with self.subTest(listener=name, digits=len(digits)):
                    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                            f"Content-Length: {digits}\r\n\r\n").encode()
                    self.assertTrue(answer_to(port, head).startswith(b"HTTP/1.1 413 "))
            with self.subTest(listener=name, digits="leading zeros of a small length"):
                head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        f"Content-Length: {'0' * 30}0\r\n\r\n").encode()
                answer = answer_to(port, head)  # an empty body: read as length 0, not refused as too long
                self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer)
                self.assertFalse(answer.startswith(b"HTTP/1.1 413 "), answer)


if __name__ == "__main__":
    unittest.main()
