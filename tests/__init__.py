"""lambda-otel's tests.

Log records of the ``lambda_otel`` loggers in the test process (the extension's one warning per kind
of problem when a test provokes a dead backend or bad input on purpose, the simulator's notes) are kept
in memory, bounded, instead of being printed: the run shows what unittest reports and nothing else.
A test that checks a log line uses ``assertLogs`` / ``assertNoLogs``, which see every record as before.
``LAMBDA_OTEL_TEST_LOGS=1`` prints them again. Extension processes under the simulator are not
concerned: the simulator captures their output.
"""

import collections
import logging
import os


class KeptRecords(logging.Handler):
    """Keeps the last ``capacity`` records instead of printing them (``records``, oldest first)."""

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__(level=logging.DEBUG)
        self.records = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


KEPT = KeptRecords()
if os.environ.get("LAMBDA_OTEL_TEST_LOGS") != "1":
    logging.getLogger("lambda_otel").addHandler(KEPT)
