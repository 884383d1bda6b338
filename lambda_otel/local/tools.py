"""Small stdlib helpers shared by ``lambda-otel-local``, the tests and the benchmarks.

One definition each, so the CLI, a test and a benchmark pick ports and unpack layers the same way.
"""

from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path
from typing import Union


# Ports handed out for a process to bind later come from below the kernel's ephemeral range
# (Linux: 32768-60999): a port the kernel gave us and we released can be given again, meanwhile,
# as the local port of any new connection (and then the extension's bind fails "address in use").
PORT_RANGE = (20000, 32767)
PORT_TRIES = 200
# Ports this process handed out recently: nothing listens on them yet when the next is asked for
# (e.g. the receiver's and the telemetry listener's, picked one after the other), so a bind test
# alone could give the same port twice.
_GIVEN: "set[int]" = set()
_GIVEN_MAX = 2048


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on now and not handed out recently by this process, chosen
    at random outside the ephemeral range (the extension's ports must be >= 1024 and not 9001,
    which this range guarantees)."""
    import random

    for _ in range(PORT_TRIES):  # bounded: a busy range falls back to the kernel's choice
        port = random.randint(*PORT_RANGE)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            if len(_GIVEN) >= _GIVEN_MAX:
                _GIVEN.clear()
            _GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unzip_layer(zip_path: Union[str, Path], dest: Union[str, Path]) -> None:
    """Extract like Lambda does, keeping the Unix modes stored in the zip (zipfile drops them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(os.path.join(dest, info.filename), mode)
