"""Subscribing to the Telemetry API: the last step of our init before the first ``/next``.

Also where the listener's address comes from (``listener_host``) and its socket (``bind_socket``,
bound before subscribing so that Lambda's first POST waits in the backlog while the listener
starts). Kept apart from the listener itself (``telemetry_api``) so that init imports no HTTP
server: everything here runs before the first ``/next``, which is billed and shares the CPU
with the function's own init.

Schema: we ask for the newest, ``2025-01-29`` (the only one Managed Instances accept), and fall
back to ``2022-12-13`` where it is refused with 400 or 404 (some on-demand runtimes still do);
the path stays ``/2022-07-01/telemetry`` either way.
"""

from __future__ import annotations

import json
import socket

from .extensions_api import ExtensionsApiError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the first /next
if TYPE_CHECKING:  # pragma: no cover - typing only
    from typing import Sequence

    from .config import TelemetryConfig
    from .extensions_api import ExtensionsApiClient

API_VERSION = "2022-07-01"
SANDBOX_HOST = "sandbox.localdomain"
SCHEMA_VERSIONS = ("2025-01-29", "2022-12-13")  # newest first; each refusal moves to the next
_FALLBACK_STATUSES = (400, 404)


def subscription_body(config: "TelemetryConfig", port: int, schema_version: str = SCHEMA_VERSIONS[0]) -> dict:
    return {
        "schemaVersion": schema_version,
        "types": list(config.types),
        "buffering": {"maxItems": config.max_items, "maxBytes": config.max_bytes, "timeoutMs": config.timeout_ms},
        "destination": {"protocol": "HTTP", "URI": f"http://{SANDBOX_HOST}:{port}/"},
    }


def subscribe(client: "ExtensionsApiClient", config: "TelemetryConfig", port: int,
              schema_versions: Sequence[str] = SCHEMA_VERSIONS) -> str:
    """PUT /2022-07-01/telemetry with the newest schema Lambda accepts; the schema in use.

    Raise ExtensionsApiError when every schema was refused (or on another answer than 200).
    """
    headers = {"Lambda-Extension-Identifier": client.extension_id or "", "Content-Type": "application/json"}
    refusals = []
    for schema in schema_versions:
        body = json.dumps(subscription_body(config, port, schema)).encode()
        response = client.call("PUT", f"/{API_VERSION}/telemetry", body, headers)
        if response.status == 200:
            return schema
        detail = response.body[:300].decode("utf-8", "replace")
        refusals.append(f"{schema}: HTTP {response.status} {detail}".strip())
        if response.status not in _FALLBACK_STATUSES:
            break  # 202 is what emulators without a Telemetry API answer; 403/500: no other schema helps
    raise ExtensionsApiError("telemetry subscribe refused (" + "; ".join(refusals) + ")",
                             response.status)


def listener_host(hosts_file: str = "/etc/hosts") -> str:
    """Where ``sandbox.localdomain`` points, read from the hosts file (no DNS at start-up).

    Inside Lambda the name is in /etc/hosts; elsewhere (the local simulator) it is not,
    and the simulator delivers to 127.0.0.1.
    """
    try:
        with open(hosts_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and SANDBOX_HOST in (name.lower() for name in fields[1:]):
                    return fields[0]
    except OSError:
        pass
    return "127.0.0.1"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; done early and cheaply so Lambda's first POST waits in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
