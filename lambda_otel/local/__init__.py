"""Local tooling (never shipped in the layer): the Lambda simulator, an OTLP sink and `lambda-otel-local`.

The simulator's API lives in `lambda_otel.local.simulator` (see its module docstring); the most used
names are re-exported here lazily so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

_SIMULATOR_NAMES = (
    "Simulator",
    "SimulatorError",
    "InvocationResult",
    "InitResult",
    "ShutdownResult",
    "BatchRecord",
    "FreezeRecord",
    "ProcessExit",
    "ExtensionInfo",
    "Instant",
    "Mode",
    "RestoreResult",
)

__all__ = list(_SIMULATOR_NAMES)


def __getattr__(name: str) -> Any:
    if name in _SIMULATOR_NAMES:
        from . import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
