"""Parsing the AWS X-Ray trace header (``X-Amzn-Trace-Id``) that Lambda hands out.

Lambda passes the header in ``platform.start.tracing.value`` and in the INVOKE event:
``Root=1-<8 hex epoch>-<24 hex>;Parent=<16 hex>;Sampled=0|1`` (plus keys such as ``Lineage``).
The header travels from the caller, so it is untrusted input: the parser caps the length
before doing any work, accepts only ASCII hex, and never raises.

Rules (each one is a test in ``tests/test_xray.py``):
- keys may come in any order, with whitespace around keys and values; unknown keys are ignored;
- a part without ``=`` is ignored; for a duplicated key the first occurrence wins;
- ``Root`` is required and must be ``1-<8 hex>-<24 hex>``, not all zeros, else the result is None;
- a malformed or all-zero ``Parent`` is dropped and the Root kept;
- ``Sampled=1`` -> True, ``Sampled=0`` -> False, anything else (``?``, missing) -> None.

``XRayContext.remote_parent`` is the parent the function's own SDK sees through the standard
X-Ray propagators (``xray`` / ``xray-lambda``), which are stricter: they need a valid Root *and*
Parent, reject the whole header if any part is not ``key=value`` or ``Sampled`` is not 0/1, and
read a missing ``Sampled`` as "not sampled". Sampling decisions must agree with the function's
SDK, so they use this view, not the lenient one above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# A real header is < 200 characters; Lineage entries add a few dozen. Anything longer is
# rejected before splitting so that hostile input costs O(1).
MAX_HEADER_LENGTH = 1024
# At most this many ';'-separated parts are looked at.
MAX_PARTS = 16

_ROOT_RE = re.compile(r"1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})", re.ASCII)
_PARENT_RE = re.compile(r"[0-9a-fA-F]{16}", re.ASCII)
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


@dataclass(frozen=True)
class XRayContext:
    """The parts of an X-Ray header an OTLP span needs."""

    trace_id: bytes  # 16 bytes: the 32 hex digits of Root (epoch + random part)
    parent_id: Optional[bytes]  # 8 bytes, or None when absent/malformed
    sampled: Optional[bool]  # None = no decision in the header
    # What the X-Ray propagator of the function's SDK extracts: None = no valid parent (its
    # sampler then decides as for a root span), else whether that remote parent is sampled.
    remote_parent: Optional[bool] = None


def parse_span_id(value: object) -> Optional[bytes]:
    """16 hex digits -> 8 bytes; None for anything else (including all zeros)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    value = value.strip()
    if _PARENT_RE.fullmatch(value) is None:
        return None
    span_id = bytes.fromhex(value)
    return None if span_id == _ZERO_SPAN else span_id


def parse_xray_header(value: object) -> Optional[XRayContext]:
    """Parse an X-Ray trace header; None when it has no valid Root. Never raises."""
    if not isinstance(value, str) or not value or len(value) > MAX_HEADER_LENGTH:
        return None
    root = parent = sampled = None
    strict = True  # every part is exactly one key=value (what the SDK's propagator requires)
    parts = value.split(";", MAX_PARTS)
    if len(parts) > MAX_PARTS:
        strict = False
        parts = parts[:MAX_PARTS]
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep or "=" in val:
            strict = False
        if not sep:
            continue
        key = key.strip()
        if key == "Root":
            if root is None:
                root = val.strip()
        elif key == "Parent":
            if parent is None:
                parent = val.strip()
        elif key == "Sampled":
            if sampled is None:
                sampled = val.strip()
    if root is None:
        return None
    match = _ROOT_RE.fullmatch(root)
    if match is None:
        return None
    trace_id = bytes.fromhex(match.group(1) + match.group(2))
    if trace_id == _ZERO_TRACE:
        return None
    parent_id = parse_span_id(parent) if parent is not None else None
    if sampled == "1":
        sampled_flag: Optional[bool] = True
    elif sampled == "0":
        sampled_flag = False
    else:
        sampled_flag = None
    remote_parent = None
    if strict and parent_id is not None and (sampled is None or sampled_flag is not None):
        remote_parent = sampled_flag is True
    if parent is not None and parent_id is None:
        remote_parent = None  # a present but malformed Parent invalidates the whole header
    return XRayContext(trace_id=trace_id, parent_id=parent_id, sampled=sampled_flag, remote_parent=remote_parent)
