"""The OpenTelemetry resource that describes this function, for the telemetry we generate.

Only what an extension can actually see is used: the function name, version, memory size and
region are in our environment (read once, in config.py); ``faas.instance`` is the log stream
name when Lambda gives it to us, else an id of our own process (one extension process lives
exactly as long as one execution environment). ``cloud.account.id`` comes from the register
response (``Lambda-Extension-Accept-Feature: accountId``). Data the function sends to our
receiver keeps its own resource.

Two events change the resource after start, in place (the one ``Resource`` proto is shared by
the converter and the metrics, so every item built afterwards carries the change):
- ``platform.initStart`` of schema 2025-01-29 on Managed Instances names the instance
  (``instanceId`` -> ``faas.instance``) and its memory (``instanceMaxMemory`` -> ``faas.max_memory``);
- a SnapStart restore: every copy restored from one snapshot would otherwise share one
  ``faas.instance`` (``renew_after_restore``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, MutableMapping, Optional

from . import __version__
from .config import Config
from .otlp import AttrValue, set_any_value


def build_resource(env: Mapping[str, str], config: Config, account_id: Optional[str] = None) -> Dict[str, AttrValue]:
    """``env`` is kept for callers; every value comes from ``config`` (read once, in config.py)."""
    fn = config.function
    function_name = fn.name or "unknown_function"
    attrs: Dict[str, AttrValue] = {
        "cloud.provider": "aws",
        "cloud.platform": "aws_lambda",
        "faas.name": function_name,
        "telemetry.distro.name": "lambda-otel",
        "telemetry.distro.version": __version__,
    }
    if fn.region:
        attrs["cloud.region"] = fn.region
    if account_id:
        attrs["cloud.account.id"] = account_id
    if fn.version:
        attrs["faas.version"] = fn.version
    if config.queue.memory_mb is not None:
        attrs["faas.max_memory"] = config.queue.memory_mb * 1024 * 1024
    attrs["faas.instance"] = fn.log_stream_name or new_instance_id()

    # User attributes win over detected ones; OTEL_SERVICE_NAME wins over both (OTel spec).
    attrs.update(config.resource_attributes)
    attrs["service.name"] = config.service_name or config.resource_attributes.get("service.name") or function_name
    return attrs


def to_proto(attrs: Mapping[str, AttrValue]):
    """Protobuf ``Resource``; imported lazily so start-up does not pay for protobuf."""
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    resource = Resource()
    for key, value in attrs.items():
        kv = resource.attributes.add()
        kv.key = key
        set_any_value(kv.value, value)
    return resource


MIB = 1024 * 1024
MANAGED_INSTANCES = "lambda-managed-instances"  # initializationType (config.InitType.MANAGED_INSTANCES)


def instance_attributes(record: Mapping[str, Any]) -> Dict[str, AttrValue]:
    """What a ``platform.initStart`` record says about the instance (schema 2025-01-29, Managed
    Instances): ``instanceId`` -> ``faas.instance``, ``instanceMaxMemory`` -> ``faas.max_memory``.

    Only on Managed Instances (``initializationType``): elsewhere ``faas.instance`` stays the log
    stream name, which the function's own resource detector reports too, and the per-function
    memory setting is the memory. ``instanceMaxMemory`` is taken as bytes, which is what live systems
    send; a value below 1 MiB can only be megabytes (the documentation's example reads that way) and
    is converted. Anything malformed is left out. A ``faas.instance`` set in
    ``OTEL_RESOURCE_ATTRIBUTES`` is replaced too: one environment variable is shared by every
    instance, so it cannot name one.
    """
    attrs: Dict[str, AttrValue] = {}
    if record.get("initializationType") != MANAGED_INSTANCES:
        return attrs
    instance_id = record.get("instanceId")
    if isinstance(instance_id, str) and instance_id.strip() and len(instance_id) <= 256:
        attrs["faas.instance"] = instance_id.strip()
    memory = record.get("instanceMaxMemory")
    if isinstance(memory, int) and not isinstance(memory, bool) and 0 < memory < 2**63:
        attrs["faas.max_memory"] = memory if memory >= MIB else memory * MIB
    return attrs


def update_resource(resource, changes: Mapping[str, AttrValue],
                    attrs: Optional[MutableMapping[str, AttrValue]] = None) -> None:
    """Set ``changes`` on the shared ``Resource`` proto in place (and in ``attrs``, its dict form).

    Each assignment is one C call under the GIL, so a thread copying the resource meanwhile sees
    the old or the new value, never a torn one.
    """
    if attrs is not None:
        attrs.update(changes)
    existing = {kv.key: kv for kv in resource.attributes}
    for key, value in changes.items():
        kv = existing.get(key)
        if kv is None:
            kv = resource.attributes.add()
            kv.key = key
        else:
            kv.value.Clear()
        set_any_value(kv.value, value)


def new_instance_id() -> str:
    """128 random bits as 32 hex digits (what ``uuid4().hex`` gave, without importing ``uuid``,
    which pulls in ``platform``: ~0.25 MiB and ~2 ms of CPU of every cold start)."""
    return os.urandom(16).hex()


def renew_after_restore(attrs: MutableMapping[str, AttrValue], resource) -> str:
    """A SnapStart restore: a new ``faas.instance`` for this copy of the environment.

    The log stream name in our environment is the snapshot's, shared by every copy, so the new
    id is random (from ``os.urandom``, which a restored copy does not share).
    Returns the new id.
    """
    instance = new_instance_id()
    update_resource(resource, {"faas.instance": instance}, attrs)
    return instance
