"""Real processes of the simulated sandbox: the function runtime and the external extensions.

Each process runs in its own process group (so SIGSTOP/SIGCONT/SIGKILL reach its children too), with
stdout/stderr read line by line by reader threads (lines become `function`/`extension` telemetry
records) and a watcher thread that records the exit instant the moment `waitpid` returns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import struct
import sys
import termios
import threading
import time
from typing import Any, Callable, Optional

from .results import Instant

log = logging.getLogger(__name__)

MAX_EXTENSIONS = 10
MAX_LINE_BYTES = 256 * 1024  # longer lines are split into several records


def discover_extensions(folder: Optional[str]) -> list[str]:
    """Executables in an /opt/extensions-like folder, sorted by name (Lambda launches them in that order)."""
    if not folder:
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            found.append(path)
    if len(found) > MAX_EXTENSIONS:
        log.warning("simulator: %d extensions in %s, launching the first %d", len(found), folder, MAX_EXTENSIONS)
    return found[:MAX_EXTENSIONS]


class ManagedProcess:
    """One child process: spawn, line readers, exit watcher, group signals."""

    def __init__(
        self,
        name: str,
        role: str,  # "runtime" | "extension"
        argv: list[str],
        env: dict[str, str],
        cwd: Optional[str],
        on_line: Callable[["ManagedProcess", str, str], None],
        on_exit: Callable[["ManagedProcess"], None],
    ):
        self.name = name
        self.role = role
        self.argv = argv
        self._environ = env
        self.env: Any = None  # the simulator's environment generation this process belongs to
        self._cwd = cwd
        self._on_line = on_line
        self._on_exit = on_exit
        self.popen: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None
        self.started_at: Optional[Instant] = None  # just before the fork
        self.exit_code: Optional[int] = None
        self.exited_at: Optional[Instant] = None
        self.exited = threading.Event()
        self.killed = False
        self.expected_exit = False  # set by the simulator before it signals the process to end
        self.output: list[tuple[str, str]] = []  # (stream, line), bounded, for error messages
        self._threads: list[threading.Thread] = []
        self._io_cv = threading.Condition()
        self._busy: dict[str, bool] = {}
        self._closed: set[str] = set()
        self._streams: dict = {}

    def start(self) -> None:
        # Taken before the fork, so "spawn -> first /next" includes fork+exec (benchmarks use it).
        spawned_at = Instant.now()
        self.popen = subprocess.Popen(
            self.argv,
            env=self._environ,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own session => own process group, pgid == pid
            close_fds=True,
        )
        self.pid = self.popen.pid
        self.started_at = spawned_at
        self._streams = {"stdout": self.popen.stdout, "stderr": self.popen.stderr}
        for stream_name, stream in self._streams.items():
            self._busy[stream_name] = True
            t = threading.Thread(
                target=self._read, args=(stream_name, stream), name=f"sim-{self.name}-{stream_name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._watch, name=f"sim-{self.name}-wait", daemon=True)
        t.start()
        self._threads.append(t)

    def add_stream(self, stream_name: str, stream) -> None:
        """Read one more output stream of this process (a worker's socket), exactly like its pipes."""
        with self._io_cv:
            self._busy[stream_name] = True
            self._streams[stream_name] = stream
        t = threading.Thread(target=self._read, args=(stream_name, stream), name=f"sim-{self.name}-{stream_name}",
                             daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def alive(self) -> bool:
        return self.popen is not None and not self.exited.is_set()

    def _read(self, stream_name: str, stream) -> None:
        """Split the pipe into lines ourselves so `drain` can tell when everything written was emitted.

        The stream is marked busy BEFORE the bytes leave the pipe: a reader that marked it after
        `os.read` let `drain` see an empty pipe and an idle reader while a chunk was in its hands
        (lines printed during an invocation then came after its platform.runtimeDone)."""
        fd = stream.fileno()
        ready = select.poll()
        ready.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        pending = b""
        try:
            while True:
                with self._io_cv:
                    self._busy[stream_name] = False
                    self._io_cv.notify_all()
                ready.poll()  # until there are bytes (or EOF); unread bytes keep `drain` waiting meanwhile
                with self._io_cv:
                    self._busy[stream_name] = True
                chunk = os.read(fd, 65536)
                if not chunk:
                    if pending:
                        self._emit_line(stream_name, pending)
                    return
                pending += chunk
                while True:
                    cut = pending.find(b"\n")
                    if cut < 0 or cut > MAX_LINE_BYTES:
                        break
                    self._emit_line(stream_name, pending[:cut])
                    pending = pending[cut + 1:]
                while len(pending) >= MAX_LINE_BYTES:  # an over-long line becomes several records
                    self._emit_line(stream_name, pending[:MAX_LINE_BYTES])
                    pending = pending[MAX_LINE_BYTES:]
        except (OSError, ValueError):
            return
        finally:
            with self._io_cv:
                self._busy[stream_name] = False
                self._closed.add(stream_name)
                self._io_cv.notify_all()
            stream.close()

    def _emit_line(self, stream_name: str, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if len(self.output) < 2000:
            self.output.append((stream_name, line))
        self._on_line(self, stream_name, line)

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until every complete line already written to stdout/stderr has been emitted."""
        deadline = time.monotonic() + timeout
        with self._io_cv:
            while True:
                idle = True
                for name, stream in list(self._streams.items()):
                    if name in self._closed:
                        continue
                    if self._busy.get(name) or _unread_bytes(stream) > 0:
                        idle = False
                if idle:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._io_cv.wait(min(left, 0.002))

    def wait_output(self, timeout: float) -> bool:
        """After the exit: wait (bounded) until its readers have emitted everything it wrote (EOF on every stream)."""
        deadline = time.monotonic() + timeout
        with self._io_cv:
            while set(self._streams) - self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self.exited.is_set():
                    return False
                self._io_cv.wait(min(left, 0.05))
        return True

    def _watch(self) -> None:
        code = self.popen.wait()  # blocks in waitpid(); returns the moment the process exits
        self.exit_code = code
        self.exited_at = Instant.now()
        self.exited.set()
        try:
            self._on_exit(self)
        except Exception:  # noqa: BLE001 - a bug in the callback must not lose the exit record
            log.exception("simulator: exit callback failed for %s", self.name)

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the whole process group; False if it is already gone."""
        if self.pid is None:
            return False
        if sig == signal.SIGKILL:
            self.killed = self.killed or self.alive
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill(self, wait: float = 2.0) -> bool:
        """SIGCONT+SIGKILL the group and wait (bounded) for the exit to be recorded."""
        self.expected_exit = True
        if self.alive:
            self.signal_group(signal.SIGKILL)
            self.signal_group(signal.SIGCONT)
        else:
            self.signal_group(signal.SIGKILL)  # leftover children in the group
        return self.exited.wait(wait)

    def wait_stopped(self, timeout: float) -> bool:
        """After SIGSTOP: wait (bounded) until the kernel reports the leader as stopped (state T)."""
        deadline = time.monotonic() + timeout
        while True:
            state = proc_state(self.pid)
            if state in (None, "T", "t", "Z", "X") or not self.alive:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.exited.wait(min(left, 0.001))

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(f"[{self.name} {s}] {line}" for s, line in self.output[-lines:])

    def max_memory_kb(self) -> int:
        """Peak resident set (VmHWM) of the process, 0 if unknown."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0


class WorkerLogSocket:
    """The Unix socket Lambda Managed Instances give a runtime's worker processes for their output.

    The runtime finds its path in `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`; each worker connects once
    per stream (stdout, then stderr) and makes the connection its file descriptor, so every worker has
    streams of its own and lines of two workers never run into each other, as they would on a shared
    pipe. Each connection is read as one more stream of the runtime's process.
    """

    def __init__(self, path: str):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._cv = threading.Condition()
        self._owner: Optional[ManagedProcess] = None
        self._waiting: list = []
        self._count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="sim-worker-logs", daemon=True)
        self._thread.start()

    def attach(self, proc: ManagedProcess) -> None:
        """The runtime process the connections belong to (connections that came first are handed over now)."""
        with self._cv:
            self._owner = proc
            waiting, self._waiting = self._waiting, []
        for conn in waiting:
            self._hand_over(conn)

    def _hand_over(self, conn) -> None:
        with self._cv:
            self._count += 1
            name = f"worker-stream-{self._count}"
        self._owner.add_stream(name, conn)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._cv:
                if self._owner is None:
                    self._waiting.append(conn)
                    continue
            self._hand_over(conn)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(1.0)
        for remove in (os.unlink, os.rmdir):
            try:
                remove(self.path if remove is os.unlink else os.path.dirname(self.path))
            except OSError:
                pass


class ForkedCopy:
    """One copy of a fork-server extension: a SnapStart restore of its snapshot, emulated by `os.fork()`.

    The copy is a child of the extension process the simulator launched (the server), so the simulator
    cannot wait for it: a watcher thread follows it in /proc instead. The server leaves a finished copy
    unreaped until it is asked for the next one, so its exit status is read from the zombie. The copy
    shares the server's stdout/stderr (and so its line readers) and its process group, so signals go
    to the copy's pid alone.
    """

    role = "extension"
    POLL_S = 0.005

    def __init__(self, server: ManagedProcess, pid: int, on_exit: Callable[["ForkedCopy"], None]):
        self.server = server
        self.name = server.name
        self.pid = pid
        self.env: Any = None
        self.started_at: Optional[Instant] = Instant.now()  # when the simulator found it
        self.exit_code: Optional[int] = None
        self.exited_at: Optional[Instant] = None
        self.exited = threading.Event()
        self.killed = False
        self.expected_exit = False
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._watch, name=f"sim-{self.name}-copy-{pid}", daemon=True)
        self._thread.start()

    @property
    def output(self) -> list[tuple[str, str]]:
        return self.server.output

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def _watch(self) -> None:
        _wait_for_exit(self.pid, self.POLL_S)
        fields = _stat_fields(self.pid)
        self.exited_at = Instant.now()
        if fields is not None and len(fields) > 49:  # field 52, exit_code: the wait status of the zombie
            status = int(fields[49])
            self.exit_code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
        self.exited.set()
        try:
            self._on_exit(self)
        except Exception:  # noqa: BLE001 - a bug in the callback must not lose the exit record
            log.exception("simulator: exit callback failed for %s copy %s", self.name, self.pid)

    def signal_group(self, sig: int) -> bool:
        """The copy alone (its group is the server's)."""
        if sig == signal.SIGKILL:
            self.killed = self.killed or self.alive
        try:
            os.kill(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill(self, wait: float = 2.0) -> bool:
        self.expected_exit = True
        if self.alive:
            self.signal_group(signal.SIGKILL)
            self.signal_group(signal.SIGCONT)
        return self.exited.wait(wait)

    def wait_stopped(self, timeout: float) -> bool:
        return ManagedProcess.wait_stopped(self, timeout)  # type: ignore[arg-type]

    def drain(self, timeout: float) -> bool:
        return self.server.drain(timeout)

    def stderr_tail(self, lines: int = 20) -> str:
        return self.server.stderr_tail(lines)

    def max_memory_kb(self) -> int:
        return ManagedProcess.max_memory_kb(self)  # type: ignore[arg-type]


def _wait_for_exit(pid: int, poll_s: float) -> None:
    """Block until `pid` (not our child) has exited: on its pidfd where the kernel has them, else polling /proc."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here (or the process is already gone): poll
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])  # readable once the process has exited
        finally:
            os.close(fd)
        return
    while True:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return
        time.sleep(poll_s)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (live or zombie), from /proc (its children list where the kernel has one)."""
    try:
        kids: set[int] = set()
        for task in os.listdir(f"/proc/{pid}/task"):  # each thread has its own list
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                kids.update(int(p) for p in fh.read().split())
        return sorted(kids)
    except (OSError, ValueError):
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and len(fields) > 1 and fields[1] == str(pid):
                found.append(int(name))
    return sorted(found)


def _stat_fields(pid: Optional[int]) -> Optional[list[str]]:
    """/proc/<pid>/stat from the state field (field 3) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_state(pid: Optional[int]) -> Optional[str]:
    """Single-letter state from /proc/<pid>/stat, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _unread_bytes(stream) -> int:
    try:
        return struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def base_environment(inherit: bool) -> dict[str, str]:
    """A Lambda-like clean environment (or the caller's, minus anything Lambda would set itself)."""
    if inherit:
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("AWS_") or k.startswith("LAMBDA_") or k.startswith("_"))
        }
    else:
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "en_US.UTF-8"}
        for key in ("PYTHONDONTWRITEBYTECODE", "HOME"):
            if key in os.environ:
                env[key] = os.environ[key]
    env["TZ"] = ":UTC"
    return env


def default_runtime_argv(handler: str) -> list[str]:
    """The real AWS Runtime Interface Client, as a Python managed runtime runs it."""
    return [sys.executable, "-m", "awslambdaric", handler]


def python_execution_env() -> str:
    return f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}"
