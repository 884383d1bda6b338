"""The function's own virtual environment, for end-to-end tests with software we did not write.

A real Lambda function ships its packages with the function, not with the extension, and they
need not match ours (``opentelemetry-instrumentation-aws-lambda`` may pin an API a patch behind
our SDK). So the instrumented test functions run in their own venv, with their own interpreter,
under the simulator (``Simulator(runtime_cmd=[venv_python, "-m", "awslambdaric", handler])``).

The venv is created once per set of pins and cached in ``<repo>/.cache/fn-venv-<hash>`` (gitignored);
creation is bounded in time and done under a file lock (parallel test processes share it); a
marker written last tells a complete venv from one whose build died half-way.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
CREATE_TIMEOUT_S = 600  # pip, from a cold cache, for a dozen small wheels

# Versions that work with each other (the instrumentation pins its API/semconv release line).
OTEL_FUNCTION_PINS = (
    "awslambdaric==4.2.2",
    "opentelemetry-api==1.45.1",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-instrumentation==0.66b1",
    "opentelemetry-instrumentation-aws-lambda==0.66b1",
    "opentelemetry-semantic-conventions==0.66b1",
    "opentelemetry-propagator-aws-xray==1.0.2",
    "opentelemetry-sdk-extension-aws==2.1.0",
)
POWERTOOLS_FUNCTION_PINS = (
    "awslambdaric==4.2.2",
    "aws-lambda-powertools==3.37.0",
)


class FunctionVenvError(RuntimeError):
    pass


def function_python(pins: tuple) -> str:
    """The interpreter of a venv with exactly ``pins`` installed (created on first use)."""
    key = hashlib.sha256("\n".join((sys.version, *pins)).encode()).hexdigest()[:16]
    target = CACHE / f"fn-venv-{key}"
    python, complete = target / "bin" / "python", target / ".complete"
    if complete.exists():
        return str(python)
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / f"fn-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it right now
        if complete.exists():
            return str(python)
        shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
        try:
            try:
                _run([sys.executable, "-m", "venv", str(target)])
                pip = [str(python), "-m", "pip"]
            except FunctionVenvError:  # no ensurepip (a distribution's python without its venv package)
                shutil.rmtree(target, ignore_errors=True)
                _run([sys.executable, "-m", "venv", "--without-pip", str(target)])
                pip = [sys.executable, "-m", "pip", "--python", str(python)]  # our pip, installing there
            _run([*pip, "install", "--disable-pip-version-check", "--no-input", "-q", *pins])
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        complete.write_text("\n".join(pins) + "\n")
    return str(python)


def _run(argv) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except subprocess.TimeoutExpired:
        raise FunctionVenvError(f"{argv[:4]} took more than {CREATE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise FunctionVenvError(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
