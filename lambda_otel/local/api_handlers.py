"""The simulator's answers to Runtime, Extensions and Telemetry API requests.

A mixin of `Simulator`: the HTTP layer (`runtime_api.py`) calls these methods; the state they read
and change is the simulator's (guarded by `self._cv`). Long polls wait on that condition.
"""

from __future__ import annotations

import json
import uuid
from typing import Optional

from .results import ExtensionInfo, Instant
from .runtime_api import ACCEPTED, Body, Reply, error
from .sandbox import (
    LMI_LOG_DRAIN_S,
    LOG_DRAIN_S,
    MAX_REGISTERED_EXTENSIONS,
    Mode,
    _error_message,
    _Ext,
    _Inv,
    normalise_error_type,
    status_for,
)
from .telemetry_delivery import Subscriber, Subscription, ValidationError, parse_subscription


def _reported_message(data: bytes) -> str:
    """The errorMessage of an init/exit error body (what the extension says went wrong), bounded."""
    try:
        doc = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError):
        return data[:500].decode("utf-8", "replace").strip()
    message = doc.get("errorMessage") if isinstance(doc, dict) else None
    return str(message)[:500] if message else ""


class ApiHandlers:
    """Request handling (mixin; see simulator.Simulator for the state)."""

    def _lookup_ext(self, headers) -> tuple[Optional[_Ext], Optional[Reply]]:
        ext_id = headers.get("Lambda-Extension-Identifier")
        if not ext_id:
            return None, error(403, "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier header")
        try:
            uuid.UUID(ext_id)
        except ValueError:
            return None, error(403, "Extension.InvalidExtensionIdentifier", f"Invalid extension identifier {ext_id}")
        env = self._env
        ext = env.exts.get(ext_id) if env is not None else None
        if ext is None:
            return None, error(403, "Extension.UnknownExtensionIdentifier", f"Unknown extension {ext_id}")
        return ext, None

    def runtime_next(self, headers) -> Optional[Reply]:
        if self.mode is Mode.MANAGED_INSTANCES:
            return self._runtime_next_concurrent()
        env = self._env
        if env is not None and env.runtime is not None and env.current is not None:
            env.runtime.drain(LOG_DRAIN_S)  # lines printed before /next precede platform.runtimeDone
        with self._cv:
            env = self._env
            if env is None or env.phase == "down":
                return error(403, "InvalidStateTransition", "no execution environment is running")
            if env.runtime_ready_at is None:
                if env.init_failure is not None and env.init_failure[1].startswith("Runtime."):
                    return error(403, "InvalidStateTransition", "init already failed")
                env.runtime_ready_at = Instant.now()
                env.registration_open = False
                self._cv.notify_all()
            else:
                inv = env.current
                if inv is not None and inv.r.runtime_received_at is not None and inv.r.runtime_done_at is None:
                    if not inv.outcome_set and not inv.finished:
                        return error(403, "InvalidStateTransition", "/next before /response or /error")
                    if not inv.finished:
                        inv.r.runtime_done_at = Instant.now()
                        self._emit_runtime_done(env, inv, inv.r.status, inv.r.error_type)
                        self._cv.notify_all()
            if env.restore is not None and env.restore.runtime_ready_at is None:
                env.restore.runtime_ready_at = Instant.now()  # after-restore hooks done
                self._cv.notify_all()
            gen = env.gen
            env.runtime_in_next = True
            try:
                while True:
                    if env.runtime_queue and env.phase == "invoking":
                        inv = env.runtime_queue.popleft()
                        inv.r.runtime_received_at = Instant.now()
                        return self._invocation_reply(inv)
                    if self._stopping or env.phase == "down" or self._gen != gen:
                        return None
                    if env.runtime is not None and not env.runtime.alive:
                        return None
                    self._cv.wait(0.5)
            finally:
                env.runtime_in_next = False

    def _invocation_reply(self, inv: _Inv) -> Reply:
        hdrs = {
            "Lambda-Runtime-Aws-Request-Id": inv.r.request_id,
            "Lambda-Runtime-Deadline-Ms": str(inv.r.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
        }
        if inv.r.trace_header:
            hdrs["Lambda-Runtime-Trace-Id"] = inv.r.trace_header
        hdrs.update(inv.extra_headers)
        return Reply(200, inv.r.payload, hdrs, content_type=inv.content_type)

    def _runtime_next_concurrent(self) -> Optional[Reply]:
        """Managed Instances: any worker's /next takes the oldest queued invocation, which starts then.

        The workers' first /next calls during init (one per worker) end the runtime's init; a later
        /next says nothing about which invocation that worker finished (workers are not told apart),
        so each invocation ends at its own /response or /error instead.
        """
        with self._cv:
            env = self._env
            if env is None or env.phase == "down":
                return error(403, "InvalidStateTransition", "no execution environment is running")
            if env.phase == "init" and env.runtime_ready_at is None:
                if env.init_failure is not None and env.init_failure[1].startswith("Runtime."):
                    return error(403, "InvalidStateTransition", "init already failed")
                env.runtime_next_calls += 1
                env.registration_open = False
                if env.runtime_next_calls >= self.runtime_workers:
                    env.runtime_ready_at = Instant.now()
                self._cv.notify_all()
            gen = env.gen
            while True:
                if env.runtime_queue and env.phase == "ready":
                    inv = env.runtime_queue.popleft()
                    self._start_concurrent(env, inv)
                    return self._invocation_reply(inv)
                if self._stopping or env.phase == "down" or self._gen != gen:
                    return None
                if env.runtime is not None and not env.runtime.alive:
                    return None
                self._cv.wait(0.5)

    def runtime_result(self, request_id: str, kind: str, headers, body: Body, started: Instant) -> Reply:
        env = self._env
        if self.mode is Mode.MANAGED_INSTANCES and env is not None and env.runtime is not None:
            env.runtime.drain(LMI_LOG_DRAIN_S)  # the worker's lines before its answer precede runtimeDone
        with self._cv:
            env = self._env
            if env is None:
                inv = None
            elif self.mode is Mode.MANAGED_INSTANCES:
                inv = env.active.get(request_id)
            else:
                inv = env.current
            if inv is None or inv.r.request_id != request_id or inv.r.runtime_received_at is None:
                return error(400, "InvalidRequestID", "Invalid request ID")
            if inv.outcome_set or inv.finished or inv.r.runtime_done_at is not None:
                return error(403, "InvalidStateTransition", f"invocation {request_id} already has a result")
            if body.truncated:
                return error(400, "TruncatedHTTPRequest", "the request body is shorter than declared")
            mode = headers.get("Lambda-Runtime-Function-Response-Mode")
            if kind == "response" and mode and mode.lower() != "buffered":
                return error(400, "InvalidFunctionResponseMode", f"response mode {mode!r} is not supported")
            inv.outcome_set = True
            inv.r.response_started_at = started
            inv.r.response_ended_at = Instant.now()
            reply = ACCEPTED
            if kind == "response" and body.too_large:
                inv.r.status, inv.r.error_type = "error", "Function.ResponseSizeTooLarge"
                inv.r.response_bytes = body.declared
                reply = error(413, "RequestEntityTooLarge", f"response of {body.declared} bytes exceeds 6291456")
            elif kind == "response":
                inv.r.status, inv.r.response, inv.r.response_bytes = "success", body.data, len(body.data)
            else:
                inv.r.error_type = normalise_error_type(headers.get("Lambda-Runtime-Function-Error-Type"))
                inv.r.status = status_for(inv.r.error_type)
                inv.r.error_body = body.data
            inv.r._responded.set()
            if self.mode is Mode.MANAGED_INSTANCES:
                inv.r.runtime_done_at = Instant.now()
                if self.lmi_runtime_done:
                    self._emit_runtime_done(env, inv, inv.r.status, inv.r.error_type)
            self._cv.notify_all()
            return reply

    def runtime_init_error(self, headers, body: Body) -> Reply:
        with self._cv:
            env = self._env
            if env is None or env.phase != "init" or env.runtime_ready_at is not None:
                return error(403, "InvalidStateTransition", "init error is only accepted during init, before /next")
            if env.init_failure is not None and env.init_failure[1].startswith("Runtime."):
                return error(403, "InvalidStateTransition", "init error already reported")
            error_type = normalise_error_type(headers.get("Lambda-Runtime-Function-Error-Type"))
            message = _error_message(body.data)
            env.init_failure = (status_for(error_type), error_type, f"runtime init error: {message}")
            self._cv.notify_all()
            return ACCEPTED

    def extension_register(self, headers, body: Body) -> Reply:
        name = (headers.get("Lambda-Extension-Name") or "").strip()
        if not name:
            return error(403, "Extension.InvalidExtensionName", "Empty extension name")
        try:
            doc = json.loads(body.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            return error(403, "InvalidRequestFormat", "register body is not valid JSON")
        if not isinstance(doc, dict) or "configurationKeys" in doc:
            return error(403, "InvalidRequestFormat", "register body must be {\"events\": [...]}")
        events = doc.get("events", [])
        if not isinstance(events, list) or any(e not in ("INVOKE", "SHUTDOWN") for e in events):
            return error(403, "Extension.InvalidEventType", f"unknown event type in {events!r}")
        features = [f.strip() for f in (headers.get("Lambda-Extension-Accept-Feature") or "").split(",")]
        with self._cv:
            env = self._env
            if env is None or not env.registration_open:
                return error(403, "Extension.RegistrationClosed", "Extension registration is closed")
            if env.ext_by_name(name) is not None:
                return error(403, "Extension.InvalidExtensionState", f"extension {name} is already registered")
            if len(env.exts) >= MAX_REGISTERED_EXTENSIONS:
                return error(403, "Extension.TooManyExtensions", "at most 10 extensions can register")
            process = env.launched.get(name)
            if self.mode is Mode.MANAGED_INSTANCES:
                # Invocations overlap there, so there is no per-invocation event to deliver.
                if process is None and events:
                    return error(403, "Extension.InvalidEventType", "No events allowed for internal extensions")
                if "INVOKE" in events:
                    return error(403, "Extension.InvalidEventType",
                                 "INVOKE: event type not supported on Lambda Managed Instances (register SHUTDOWN only)")
            if process is None and "SHUTDOWN" in events:
                return error(403, "Extension.InvalidEventType", "internal extensions cannot register for SHUTDOWN")
            ext_id = str(uuid.uuid4())
            info = ExtensionInfo(
                name=name,
                id=ext_id,
                events=list(dict.fromkeys(events)),
                external=process is not None,
                registered_at=Instant.now(),
                pid=process.pid if process else None,
                spawned_at=process.started_at if process else None,
            )
            env.exts[ext_id] = _Ext(info=info, env=env, process=process)
            self._cv.notify_all()
        reply_body = {"functionName": self.function_name, "functionVersion": self.function_version,
                      "handler": self.handler or ""}
        if "accountId" in features:
            reply_body["accountId"] = self.account_id
        return Reply(200, reply_body, {"Lambda-Extension-Identifier": ext_id})

    def extension_next(self, headers) -> Optional[Reply]:
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            if ext.info.state in ("InitError", "ExitError"):
                return error(403, "Extension.InvalidExtensionState", f"extension {ext.info.name} reported an error")
            now = Instant.now()
            ext.next_calls.append(now)
            if ext.info.first_next_at is None:
                ext.info.first_next_at = now
                ext.info.state = "Ready"
            inv = ext.env.current
            if (inv is not None and not inv.finished and ext.consumed_invoke == inv.r.request_id
                    and ext.info.name not in inv.r.extension_next_at):
                inv.r.extension_next_at[ext.info.name] = now
            self._cv.notify_all()
            while True:
                if ext.queue:
                    event_id, event = ext.queue.popleft()
                    if event["eventType"] == "INVOKE":
                        ext.consumed_invoke = event["requestId"]
                    else:
                        ext.received_shutdown = True
                    return Reply(200, event, {"Lambda-Extension-Event-Identifier": event_id})
                if ext.gone or self._stopping:
                    return None
                self._cv.wait(0.5)

    def extension_error(self, kind: str, headers, body: Body) -> Reply:
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            error_type = headers.get("Lambda-Extension-Function-Error-Type")
            if not error_type:
                return error(403, "Extension.MissingHeader", "Missing Lambda-Extension-Function-Error-Type header")
            if ext.info.state in ("InitError", "ExitError"):
                return error(403, "Extension.InvalidExtensionState", f"extension {ext.info.name} already reported")
            env = ext.env
            cause = _reported_message(body.data)
            ext.info.error_message = cause
            cause = f": {cause}" if cause else ""
            if kind == "init":
                if env.phase != "init":
                    return error(403, "Extension.InvalidExtensionState", "init error after init")
                ext.info.state, ext.info.error_type = "InitError", error_type
                self._fatal(env, "Extension.InitError", f"extension {ext.info.name} init error {error_type}{cause}")
            else:
                ext.info.state, ext.info.error_type = "ExitError", error_type
                self._fatal(env, "Extension.ExitError", f"extension {ext.info.name} exit error {error_type}{cause}")
            self._cv.notify_all()
            return ACCEPTED

    def telemetry_subscribe(self, headers, body: Body) -> Reply:
        try:
            sub_cfg = parse_subscription(body.data, self.lenient, self.telemetry_schemas)
        except ValidationError as exc:
            bad = exc
        else:
            bad = None
        replaced = None
        with self._cv:
            ext, err = self._lookup_ext(headers)
            if err is not None:
                return err
            if bad is not None:
                return error(400, "ValidationError", str(bad))
            env = ext.env
            if not (env.subscription_open or (self.lenient and env.phase not in ("shutting_down", "down"))):
                return error(403, "Telemetry.SubscriptionClosed", "Telemetry API subscription is closed")
            replaced = ext.subscriber
            sub = self._new_subscriber(ext, sub_cfg)
            for event in env.init_events:  # the platform replays what it buffered during init
                if sub.wants(event["type"]):
                    sub.offer(event)
            if env.frozen or (self.mode is Mode.SNAPSTART and env.phase == "init"):
                sub.set_paused(True)  # SnapStart: nothing reaches the extension before a restore
            sub.start()
            self._emit(env, "platform.telemetrySubscription",
                       {"name": ext.info.name, "state": "Subscribed", "types": list(sub_cfg.types)})
        if replaced is not None:
            replaced.stop()
        return Reply(200, "OK")

    def _new_subscriber(self, ext: _Ext, sub_cfg: Subscription) -> Subscriber:
        ext.subscription = sub_cfg
        sub = Subscriber(
            ext.info.name,
            ext.info.id,
            sub_cfg,
            on_batch=self._record_batch,
            on_generated=self._record_event,
            capacity_items=self.subscriber_buffer_items,
            post_timeout=self.telemetry_post_timeout_s,
            max_attempts=self.telemetry_max_attempts,
            sequence_ids=self.mode is Mode.MANAGED_INSTANCES,
        )
        ext.subscriber = sub
        return sub

    def runtime_restore_next(self, headers) -> Optional[Reply]:
        """SnapStart: the runtime is done with init (and its before-snapshot hooks); returns at a restore."""
        with self._cv:
            env = self._env
            if self.mode is not Mode.SNAPSTART:
                return error(403, "InvalidStateTransition", "restore/next is only available under SnapStart")
            if env is None or env.phase == "down":
                return error(403, "InvalidStateTransition", "no execution environment is running")
            if env.phase == "init" and env.runtime_ready_at is None:
                env.runtime_ready_at = Instant.now()
                env.registration_open = False
                self._cv.notify_all()
            gen = env.gen
            while env.restore is None:
                if self._stopping or env.phase == "down" or self._gen != gen:
                    return None
                if env.runtime is not None and not env.runtime.alive:
                    return None
                self._cv.wait(0.5)
            return Reply(200, b"", {})

    def runtime_restore_error(self, headers, body: Body) -> Reply:
        """SnapStart: the runtime's after-restore hooks failed: the restore fails."""
        with self._cv:
            env = self._env
            restore = env.restore if env is not None else None
            if restore is None or env.phase != "restoring" or restore.runtime_ready_at is not None:
                return error(403, "InvalidStateTransition", "restore error is only accepted during a restore")
            error_type = normalise_error_type(headers.get("Lambda-Runtime-Function-Error-Type"))
            if restore.failure is None:
                restore.failure = (status_for(error_type), error_type, f"runtime restore error: {_error_message(body.data)}")
            self._cv.notify_all()
            return ACCEPTED

    # --- internals: lifecycle ---------------------------------------------------------------------
