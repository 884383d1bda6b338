"""Which invocation traces get spans: the same decision the function's OpenTelemetry SDK makes.

The extension and the function share one environment, so ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` configure both. The function's SDK samples its SERVER span with the
X-Ray header's ``Sampled`` flag as the remote parent (``xray`` / ``xray-lambda`` propagators);
when our platform spans decide the same way, a trace is either whole (platform and function
spans) or absent, never half. Logs and metrics are not sampled: they always go out, carrying
the trace id, as the SDK's do.

The decisions follow the OpenTelemetry SDK exactly (``opentelemetry.sdk.trace.sampling``):
``traceidratio`` samples when the trace id's low 64 bits are below ``round(rate * 2**64)``; the
``parentbased_*`` samplers follow a valid remote parent's sampled flag and use their root sampler
otherwise. An unknown sampler name or a bad ratio never fails start-up (config warns once and
keeps the SDK's own fallback: ``parentbased_always_on``, rate 1.0). This module is imported by
config, before the first ``/next``: stdlib only, nothing at import.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the first /next
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Optional

ALWAYS_ON = "always_on"
ALWAYS_OFF = "always_off"
TRACE_ID_RATIO = "traceidratio"
PARENT_BASED_ALWAYS_ON = "parentbased_always_on"
PARENT_BASED_ALWAYS_OFF = "parentbased_always_off"
PARENT_BASED_TRACE_ID_RATIO = "parentbased_traceidratio"
SAMPLERS = (ALWAYS_ON, ALWAYS_OFF, TRACE_ID_RATIO, PARENT_BASED_ALWAYS_ON, PARENT_BASED_ALWAYS_OFF,
            PARENT_BASED_TRACE_ID_RATIO)
DEFAULT_SAMPLER = PARENT_BASED_ALWAYS_ON

_LOW_64 = (1 << 64) - 1


class TraceSampler:
    """One of the SDK's built-in samplers. ``rate`` is used by the ratio samplers only."""

    __slots__ = ("name", "rate")

    def __init__(self, name: str = DEFAULT_SAMPLER, rate: float = 1.0) -> None:
        self.name = name if name in SAMPLERS else DEFAULT_SAMPLER
        self.rate = rate if name in (TRACE_ID_RATIO, PARENT_BASED_TRACE_ID_RATIO) else 1.0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceSampler) and (self.name, self.rate) == (other.name, other.rate)

    def __repr__(self) -> str:
        return f"TraceSampler({self.name!r}, {self.rate})"

    @property
    def bound(self) -> int:
        return round(self.rate * (_LOW_64 + 1))

    def should_sample(self, trace_id: bytes, remote_parent: Optional[bool]) -> bool:
        """``remote_parent``: None = no valid parent (a root span), else the parent's sampled flag."""
        name = self.name
        if name.startswith("parentbased_"):
            if remote_parent is not None:
                return remote_parent
            name = name[len("parentbased_"):]
        if name == ALWAYS_ON:
            return True
        if name == ALWAYS_OFF:
            return False
        return int.from_bytes(trace_id[-8:], "big") < self.bound  # traceidratio


def sampler_from_config(config) -> TraceSampler:
    """The sampler of ``config.traces_sampler`` / ``traces_sampler_arg`` (read and checked by config's
    table: an unusable shared value is a warning there and the SDK's default here)."""
    return TraceSampler(config.traces_sampler, config.traces_sampler_arg)
