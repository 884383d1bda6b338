"""Emulate SnapStart restores: ``python -m lambda_otel.local.restore_fork [launcher path]``.

A SnapStart snapshot is the memory of an environment that finished init; every restore starts a
copy of it. ``os.fork()`` of a process that finished init makes exactly such copies, so this
launcher runs the real extension (``lambda_otel.app.main``) and, at its snapshot point (under
``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``, right before the first ``/next``, with no thread of
ours running), forks one copy per restore. Each copy then calls ``/next`` with the snapshot's
extension id, subscription and sockets, sees the restore, and lives until its SHUTDOWN.

The protocol with the simulator (its snapstart mode):

* copy 1 is forked at once; copy k+1 only when the simulator sends SIGUSR1 to this process (the
  parent, "P"), after restore k's SHUTDOWN is over; so P never races the simulator;
* P reaps copy k only at that SIGUSR1 (or at SIGTERM): until then copy k stays a zombie, so the
  simulator can read its exit code and instant; the current copy is P's only child;
* SIGTERM: P reaps every copy and exits 0 if and only if every copy exited 0.

Test-only: it never ships in the layer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import List, Optional

from lambda_otel import app

_SIGNALS = {signal.SIGUSR1, signal.SIGTERM}


class RestoreForker:
    """The ``at_snapshot`` hook: forks the copies; in P it never returns."""

    def __init__(self) -> None:
        self.copies: List[int] = []
        self.failed: List[int] = []

    def __call__(self, extension: "app.Extension") -> None:
        if threading.active_count() != 1:
            # A thread of ours at the snapshot point would be missing from every copy.
            raise RuntimeError(f"restore_fork: {threading.active_count()} threads at the snapshot point (want 1)")
        if self._fork(extension):
            return  # a copy: go on to /next, i.e. be restored
        while True:
            received = signal.sigwait(_SIGNALS)
            self._reap()
            if received == signal.SIGTERM:
                os._exit(1 if self.failed else 0)
            if self._fork(extension):
                return

    def _fork(self, extension: "app.Extension") -> bool:
        """Fork the next copy; True in the copy."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            # The copy opens its own connection to the Runtime API: the snapshot's keep-alive
            # socket is shared with P and every other copy.
            extension.client.close()
            return True
        self.copies.append(pid)
        return False

    def _reap(self) -> None:
        for pid in list(self.copies):
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            self.copies.remove(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                self.failed.append(pid)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Blocked from the start (and in every thread, which inherit the mask): an early SIGUSR1 waits
    # for sigwait instead of killing P with its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    return app.main([argv[0] if argv else "lambda-otel"], at_snapshot=RestoreForker())


if __name__ == "__main__":
    code = main()
    import logging

    logging.shutdown()
    os._exit(code)
