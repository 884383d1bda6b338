"""What OTLP says about each signal, in one place.

Every module that touches OTLP messages (the receiver, the aggregator, the exporter, the
converter, the metrics collector, the local sink) asks this module rather than knowing it
itself: the URL path of a signal, its ``Export*Service{Request,Response}`` classes, the field
that carries its resource items and the ``partial_success`` field that counts what the
backend refused, how to count its records, how to put a Python value into an ``AnyValue``,
and how a batch of items becomes the bytes of one request, in protobuf or in OTLP/JSON.

The protobuf classes are imported on first use: importing this module costs nothing at
start-up. OTLP/JSON follows the OTLP specification rather than protobuf's JSON mapping where
they differ: trace and span ids are hex strings, enums are integers.
"""

from __future__ import annotations

from collections import abc
from urllib.parse import urlsplit, urlunsplit

from lambda_otel.loss import LOGS, METRICS, TRACES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms) before the first /next
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

AttrValue = str | bool | int | float  # a runtime union (3.10+): no typing import

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)

# OTLP/JSON carries these bytes fields as hex, not base64 (snake_case accepted too, leniently).
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_JSON_MAX_DEPTH = 64  # OTLP nests ~10 deep; AnyValue adds a few levels per user nesting

# AnyValue bounds for values built from untrusted JSON (log bodies, attributes).
MAX_ANY_DEPTH = 6
MAX_ANY_ITEMS = 128
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class SignalSpec:
    """The OTLP facts about one signal (a plain class: this module is imported at start-up)."""

    __slots__ = ("signal", "path", "module", "request_name", "response_name", "items_field", "rejected_field")

    def __init__(self, signal: str, path: str, module: str, request_name: str, response_name: str,
                 items_field: str, rejected_field: str) -> None:
        self.signal = signal  # "traces" | "metrics" | "logs"
        self.path = path  # OTLP/HTTP path, e.g. "/v1/traces"
        self.module = module  # the collector service's generated protobuf module
        self.request_name = request_name  # e.g. "ExportTraceServiceRequest"
        self.response_name = response_name
        self.items_field = items_field  # the request's repeated Resource* field, e.g. "resource_spans"
        self.rejected_field = rejected_field  # partial_success counter, e.g. "rejected_spans"

    @property
    def request_class(self):
        return getattr(_module(self.module), self.request_name)

    @property
    def response_class(self):
        return getattr(_module(self.module), self.response_name)


SPECS: Dict[str, SignalSpec] = {
    TRACES: SignalSpec(TRACES, "/v1/traces", "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
                       "ExportTraceServiceRequest", "ExportTraceServiceResponse", "resource_spans", "rejected_spans"),
    METRICS: SignalSpec(METRICS, "/v1/metrics", "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
                        "ExportMetricsServiceRequest", "ExportMetricsServiceResponse", "resource_metrics",
                        "rejected_data_points"),
    LOGS: SignalSpec(LOGS, "/v1/logs", "opentelemetry.proto.collector.logs.v1.logs_service_pb2",
                     "ExportLogsServiceRequest", "ExportLogsServiceResponse", "resource_logs", "rejected_log_records"),
}
PATHS: Dict[str, str] = {s.path: s.signal for s in SPECS.values()}

_modules: Dict[str, Any] = {}


def _module(name: str):
    module = _modules.get(name)
    if module is None:
        module = _modules[name] = __import__(name, fromlist=("_",))
    return module


def spec(signal: str) -> SignalSpec:
    try:
        return SPECS[signal]
    except KeyError:
        raise ValueError(f"unknown signal {signal!r}") from None


def signal_url(base: str, signal: str) -> str:
    """The per-signal URL for a base endpoint: ``/v1/<signal>`` appended to its path.

    The query string (some backends take a token there) stays a query string, after the path.
    """
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + spec(signal).path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# --- records -----------------------------------------------------------------------------

_METRIC_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def count_records(signal: str, item: Any) -> int:
    """Spans, metric data points (of every kind) or log records in one Resource* item."""
    if signal == TRACES:
        return sum(len(ss.spans) for ss in item.scope_spans)
    if signal == LOGS:
        return sum(len(sl.log_records) for sl in item.scope_logs)
    if signal == METRICS:
        n = 0
        for sm in item.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind in _METRIC_KINDS:
                    n += len(getattr(metric, kind).data_points)
        return n
    raise ValueError(f"unknown signal {signal!r}")


# --- requests and responses ----------------------------------------------------------------


def build_request(signal: str, items: Iterable[Any]):
    """The ``Export*ServiceRequest`` carrying ``items`` (Resource* messages of ``signal``)."""
    s = spec(signal)
    request = s.request_class()
    getattr(request, s.items_field).extend(items)
    return request


def encode_request(signal: str, items: Iterable[Any], content_type: str = PROTOBUF) -> bytes:
    """The wire bytes of one export request (uncompressed)."""
    return encode_message(build_request(signal, items), content_type)


def build_response(signal: str, rejected: int = 0, message: str = ""):
    """An ``Export*ServiceResponse``; with ``partial_success`` set when something was refused."""
    s = spec(signal)
    response = s.response_class()
    if rejected or message:
        setattr(response.partial_success, s.rejected_field, rejected)
        response.partial_success.error_message = message
    return response


def partial_success(signal: str, content: bytes, content_type: str = PROTOBUF) -> Tuple[int, str]:
    """(rejected records, message) from an export response body; a non-OTLP body counts as none.

    A negative count is read as none; the caller caps it at what it sent.
    """
    if not content:
        return 0, ""
    s = spec(signal)
    try:
        response = decode_message(s.response_class, content, content_type)
    except ValueError:  # e.g. an HTML page from a proxy: success without details
        return 0, ""
    ps = response.partial_success
    rejected = getattr(ps, s.rejected_field)
    return (rejected if rejected > 0 else 0), ps.error_message


def decode_request(signal: str, body: bytes, content_type: str = PROTOBUF):
    """Body (uncompressed) -> ``Export*ServiceRequest``. Raises ValueError with a short reason."""
    return decode_message(spec(signal).request_class, body, content_type)


def encode_message(message, content_type: str = PROTOBUF) -> bytes:
    if content_type == JSON:
        import json

        from google.protobuf import json_format

        obj = json_format.MessageToDict(message, use_integers_for_enums=True)
        obj = _to_otlp_json(obj, _int64_keys(type(message)))
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return message.SerializeToString()


def decode_message(cls, body: bytes, content_type: str = PROTOBUF):
    """One message of ``cls`` from protobuf or OTLP/JSON bytes. Raises ValueError."""
    if content_type != JSON:
        from google.protobuf.message import DecodeError

        try:
            return cls.FromString(body)
        except DecodeError as exc:
            raise ValueError(f"invalid protobuf {cls.__name__}: {exc}") from None
    import json

    from google.protobuf import json_format

    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"OTLP/JSON body must be an object, got {type(obj).__name__}")
    obj = _rewrite(obj, _hex_to_b64)
    try:
        return json_format.ParseDict(obj, cls(), ignore_unknown_fields=True)
    except Exception as exc:  # ParseError mostly; any parser surprise is still the body's fault
        raise ValueError(f"not an OTLP/JSON {cls.__name__}: {exc}") from None


def _b64_to_hex(value: str) -> str:
    import binascii

    return binascii.a2b_base64(value).hex()


def _hex_to_b64(value: str) -> str:
    import binascii

    try:
        return binascii.b2a_base64(bytes.fromhex(value), newline=False).decode("ascii")
    except ValueError:
        raise ValueError(f"id {value[:64]!r} is not hex") from None


_MAX_EXACT_INT = 2**53  # doubles (JavaScript numbers) hold integers up to this exactly
_int64_keys_cache: Dict[type, frozenset] = {}


def _int64_keys(cls) -> frozenset:
    """JSON names of the 64-bit integer fields anywhere under ``cls`` (and of no other field)."""
    keys = _int64_keys_cache.get(cls)
    if keys is None:
        from google.protobuf.descriptor import FieldDescriptor

        wide = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
        ints, others, seen, todo = set(), set(), set(), [cls.DESCRIPTOR]
        while todo:
            descriptor = todo.pop()
            if descriptor.full_name in seen:
                continue
            seen.add(descriptor.full_name)
            for f in descriptor.fields:
                (ints if f.cpp_type in wide else others).add(f.json_name)
                if f.message_type is not None:
                    todo.append(f.message_type)
        keys = _int64_keys_cache[cls] = frozenset(ints - others)
    return keys


def _to_otlp_json(node: Any, int_keys: frozenset) -> Any:
    """protobuf's JSON mapping -> OTLP/JSON, in place: ids as hex; 64-bit integers as numbers
    when a double holds them exactly (timestamps stay decimal strings). Receivers accept both
    forms; some accept only numbers for values such as ``asInt``."""
    return _rewrite(node, _b64_to_hex, int_keys)


def _json_int(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_int(v) for v in value]
    if isinstance(value, str):
        n = int(value)
        return n if -_MAX_EXACT_INT <= n <= _MAX_EXACT_INT else value
    return value


def _rewrite(node: Any, convert_id, int_keys: frozenset = frozenset(), depth: int = 0) -> Any:
    """Rewrite an OTLP/JSON tree in place: id fields with ``convert_id`` (hex <-> base64) and,
    for ``int_keys``, 64-bit integers with ``_json_int``."""
    if depth > _JSON_MAX_DEPTH:
        raise ValueError("JSON nested too deeply")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_KEYS and isinstance(value, str):
                node[key] = convert_id(value)
            elif key in int_keys:
                node[key] = _json_int(value)
            elif isinstance(value, (dict, list)):
                _rewrite(value, convert_id, int_keys, depth + 1)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _rewrite(value, convert_id, int_keys, depth + 1)
    return node


# --- AnyValue and attributes -------------------------------------------------------------------


def set_str(target, text: str) -> None:
    """``target.string_value = text``, surviving lone surrogates (from JSON ``\\ud800``)."""
    try:
        target.string_value = text
    except ValueError:
        target.string_value = text.encode("utf-8", "replace").decode("utf-8")


def set_key(kv, key: object) -> None:
    key = key if isinstance(key, str) else str(key)
    try:
        kv.key = key[:256]
    except ValueError:
        kv.key = key[:256].encode("utf-8", "replace").decode("utf-8")


def set_any_value(target, value: object, depth: int = 0) -> None:
    """Fill an ``AnyValue`` from a Python (JSON) value, bounded in depth and width.

    bool before int (a bool is an int); an int outside int64 and any other type become a
    string; None leaves the value empty.
    """
    if isinstance(value, str):
        set_str(target, value)
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif value is None:
        return
    elif depth >= MAX_ANY_DEPTH:
        target.string_value = "[truncated: nested too deep]"
    elif isinstance(value, dict):
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        for i, (key, item) in enumerate(value.items()):
            if i >= MAX_ANY_ITEMS:
                break
            kv = kvlist.values.add()
            set_key(kv, key)
            set_any_value(kv.value, item, depth + 1)
    elif isinstance(value, list):
        array = target.array_value
        array.SetInParent()
        for item in value[:MAX_ANY_ITEMS]:
            set_any_value(array.values.add(), item, depth + 1)
    else:
        target.string_value = type(value).__name__


def set_attributes(repeated, attributes: Union[Mapping[str, AttrValue], Sequence[Tuple[str, AttrValue]]]) -> None:
    """Append (key, value) pairs to a repeated ``KeyValue`` field."""
    # dict first: typing.Mapping's isinstance check is slow, and this runs once per log record.
    items = attributes.items() if isinstance(attributes, (dict, abc.Mapping)) else attributes
    for key, value in items:
        kv = repeated.add()
        kv.key = key
        # The common scalar cases inline (this is on the per-record path); the rest, checked.
        kind = type(value)
        if kind is str:
            set_str(kv.value, value)
        elif kind is bool:
            kv.value.bool_value = value
        elif kind is float:
            kv.value.double_value = value
        else:
            set_any_value(kv.value, value)


_ENCODED_MAX = 1024  # cached attributes (few repeat per environment; a flood of distinct values just clears it)
_encoded: Dict[Tuple[type, str, type, Any], bytes] = {}


def encoded_attribute(message_class: type, key: str, value: AttrValue) -> bytes:
    """``key = value`` serialised by protobuf as the ``attributes`` field of ``message_class``,
    cached. Protobuf parses concatenated messages as one merged message, and a merge appends to a
    repeated field, so ``merge_attributes`` can add several cached attributes with one
    ``MergeFromString``, where building each ``KeyValue`` field by field costs ~0.8 µs."""
    cache_key = (message_class, key, type(value), value)  # the type too: True == 1 == 1.0
    data = _encoded.get(cache_key)
    if data is None:
        message = message_class()
        set_attributes(message.attributes, ((key, value),))
        data = message.SerializeToString()
        if len(_encoded) >= _ENCODED_MAX:
            _encoded.clear()
        _encoded[cache_key] = data
    return data


def merge_attributes(message, attributes: Mapping[str, AttrValue]) -> None:
    """Append attributes to ``message.attributes``, as ``set_attributes`` does, for values that
    repeat from message to message (see ``encoded_attribute``); not for unique ones (an id), which
    would only churn the cache."""
    cls = type(message)
    message.MergeFromString(b"".join([encoded_attribute(cls, key, value) for key, value in attributes.items()]))


# --- request size caps ---------------------------------------------------------------------------

# Bytes a piece's envelope may add per record and per scope (field tags and length varints).
_RECORD_OVERHEAD = 16
_SCOPE_OVERHEAD = 64
_CONTAINERS = {TRACES: ("scope_spans", "spans"), LOGS: ("scope_logs", "log_records"), METRICS: ("scope_metrics", "metrics")}


def split_items(signal: str, items: Sequence[Any], max_bytes: Optional[int] = None,
                max_records: Optional[int] = None) -> List[List[Any]]:
    """``items`` regrouped into requests of at most ``max_bytes`` (serialised) and ``max_records``.

    Order is kept. An item that alone exceeds a limit is cut into several items with the same
    resource and scopes (a metric with too many data points into copies of the metric). A single
    record larger than ``max_bytes`` cannot be cut and travels alone.
    """
    if max_bytes is None and max_records is None:
        return [list(items)]
    byte_cap = max_bytes if max_bytes is not None else float("inf")
    record_cap = max_records if max_records is not None else float("inf")
    groups: List[List[Any]] = []
    current: List[Any] = []
    size = records = 0
    for item in items:
        for piece, piece_size, piece_records in _pieces(signal, item, byte_cap, record_cap):
            if current and (size + piece_size > byte_cap or records + piece_records > record_cap):
                groups.append(current)
                current, size, records = [], 0, 0
            current.append(piece)
            size += piece_size
            records += piece_records
    if current:
        groups.append(current)
    return groups


def _pieces(signal: str, item: Any, byte_cap: float, record_cap: float):
    """(piece, estimated request bytes, records) covering ``item``."""
    size, records = item.ByteSize() + _SCOPE_OVERHEAD, count_records(signal, item)
    if size <= byte_cap and records <= record_cap:
        yield item, size, records
        return
    scopes_field, records_field = _CONTAINERS[signal]
    piece = scope = None
    size = records = 0

    def new_piece():
        p = type(item)()
        p.resource.CopyFrom(item.resource)
        p.schema_url = item.schema_url
        return p, p.resource.ByteSize() + _SCOPE_OVERHEAD

    for container in getattr(item, scopes_field):
        scope = None
        for record in _records(signal, container, records_field, byte_cap, record_cap):
            r_size = record.ByteSize() + _RECORD_OVERHEAD
            r_count = _count_one(signal, record)
            if piece is not None and (size + r_size > byte_cap or records + r_count > record_cap):
                yield piece, size, records
                piece = None
            if piece is None:
                piece, size = new_piece()
                records = 0
                scope = None
            if scope is None:
                scope = getattr(piece, scopes_field).add()
                scope.scope.CopyFrom(container.scope)
                scope.schema_url = container.schema_url
                size += scope.scope.ByteSize() + _SCOPE_OVERHEAD
            getattr(scope, records_field).append(record)
            size += r_size
            records += r_count
    if piece is not None:
        yield piece, size, records


def _count_one(signal: str, record: Any) -> int:
    if signal != METRICS:
        return 1
    kind = record.WhichOneof("data")
    return len(getattr(record, kind).data_points) if kind in _METRIC_KINDS else 0


def _records(signal: str, container: Any, records_field: str, byte_cap: float, record_cap: float):
    """The records of one scope; for metrics, a metric too large for one request is cut by data points."""
    for record in getattr(container, records_field):
        if signal != METRICS:
            yield record
            continue
        kind = record.WhichOneof("data")
        points = getattr(record, kind).data_points if kind in _METRIC_KINDS else ()
        if (len(points) <= record_cap and record.ByteSize() + _RECORD_OVERHEAD <= byte_cap) or len(points) < 2:
            yield record
            continue
        chunk = None
        for point in points:
            if chunk is None:
                chunk = type(record)()
                chunk.CopyFrom(record)
                getattr(chunk, kind).ClearField("data_points")
                chunk_size = chunk.ByteSize() + _RECORD_OVERHEAD
            p_size = point.ByteSize() + _RECORD_OVERHEAD
            data = getattr(chunk, kind).data_points
            if len(data) and (len(data) + 1 > record_cap or chunk_size + p_size > byte_cap):
                yield chunk
                chunk = type(record)()
                chunk.CopyFrom(record)
                getattr(chunk, kind).ClearField("data_points")
                chunk_size = chunk.ByteSize() + _RECORD_OVERHEAD
                data = getattr(chunk, kind).data_points
            data.append(point)
            chunk_size += p_size
        if chunk is not None:
            yield chunk
