"""The OpenTelemetry resource that describes this function, for the telemetry we generate.

Only what an extension can actually see is used (reference §1.5): the function name,
version, memory size and region are in our environment; the log stream name and
``_HANDLER`` are not, so ``faas.instance`` falls back to an id of our own process
(one extension process lives exactly as long as one execution environment).
``cloud.account.id`` comes from the register response (``Lambda-Extension-Accept-Feature:
accountId``). Data the function sends to our receiver keeps its own resource.
"""

from __future__ import annotations

import uuid
from typing import Dict, Mapping, Optional

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
    attrs["faas.max_memory"] = config.queue.memory_mb * 1024 * 1024
    attrs["faas.instance"] = fn.log_stream_name or uuid.uuid4().hex

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
