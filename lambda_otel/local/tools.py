"""Small stdlib helpers shared by ``lambda-otel-local``, the tests and the benchmarks.

One definition each, so the CLI, a test and a benchmark pick ports and unpack layers the same way.
"""

from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path
from typing import Union


def free_port() -> int:
    """An unused 127.0.0.1 port (bound, then released); the extension's ports must be >= 1024,
    which ephemeral ports always are."""
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
