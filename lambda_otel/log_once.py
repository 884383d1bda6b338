"""One log line per kind of problem.

The extension's own log lines come back to it through the Telemetry API and are billed to the
function's logs, so a problem that repeats (a dead backend, a bad client, a broken event) is
logged the first time and counted afterwards. Each kind of problem has its own key: one kind
never silences another.

Stdlib only, cheap to import from any module.
"""

from __future__ import annotations

import logging
import threading
from typing import Hashable

MAX_KEYS = 1024  # bounded memory: past this, nothing new is logged (and the set stops growing)


class LogOnce:
    """Remembers which keys were logged. Thread-safe.

    Owners that need their own memory (one per exporter, say) hold an instance; the module-level
    ``warn_once`` shares one for everything else.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._seen: set = set()
        self._max = max_keys
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen (then remembered)."""
        with self._lock:
            if key in self._seen or len(self._seen) >= self._max:
                return False
            self._seen.add(key)
            return True

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` the first time ``key`` is seen; True if it was logged."""
        if not self.first(key):
            return False
        logger.log(level, msg, *args)
        return True

    def warning(self, logger: logging.Logger, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logger, logging.WARNING, key, msg, *args)


_shared = LogOnce()


def warn_once(logger: logging.Logger, key: Hashable, msg: str, *args: object) -> bool:
    """Log a warning once per (logger, key) for the life of the process; True if it was logged."""
    return _shared.warning(logger, (logger.name, key), msg, *args)
