"""Connectors: how the desk reaches a target system without the agent.

Three operations, each optional: `read` a target's current state, `restore` a target to a
snapshot, `compensate` (call the action that undoes another: cancel_order for create_order).

HTTP connectors describe each operation as a method, a URL template and a JSON body template.
Templates are filled from the step: `{target}`, `{action_id}`, `{tool}`, `{params[name]}`,
`{result[name]}` (each URL-quoted as one path segment in URLs); in a body, the string "{state}"
alone stands for the state to restore, as JSON. Requests carry `Idempotency-Key` and are
signed: `X-IncidentDesk-Signature` is hex HMAC-SHA256 with the connector's secret over the
timestamp, method, path, key and body (see `sign`), the timestamp (Unix seconds) in
`X-IncidentDesk-Timestamp`. A read answers the state as JSON (404: the target does not exist,
read as null). Connection errors, answers not complete within the connector's timeout (the
whole exchange, however the server paces it), 429 and 5xx answers are retried with backoff;
other answers fail, and so do redirects (never followed) and answers over
CONNECTOR_MAX_RESPONSE_BYTES. Connector calls run with no transaction open: rollbacks claim
their steps first and record the outcomes after.

Python connectors name a function `f(operation, *, target, state, action, key)`; it returns
the current state for a read.

When an agent proposes a tool call, the desk takes its own snapshot of the targets where the
connector reads them (`desk_snapshot_take`), so a rollback need not restore the agent's word:
reads side by side, one attempt each, all within DESK_SNAPSHOT_SECONDS, for at most
DESK_SNAPSHOT_MAX_TARGETS targets; otherwise no snapshot, and the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import string
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from approvals.audit import Actor, audit_record
from approvals.core import Refused
from approvals.models import Action, Connector, Domain
from incidentdesk import outbound

Operation = Literal["read", "restore", "compensate"]


OPERATIONS: tuple[Operation, ...] = ("read", "restore", "compensate")


class ConnectorError(Exception):
    """The target could not be reached, or refused; the message says which and why."""


class Call(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(min_length=1)
    body: Any = None
    # Compensation only: fields the target must read afterwards (a template too), such as
    # {"status": "cancelled"}; without it, the target must read its pre-action snapshot.
    expect: Any = None
    # Compensation only: which target it undoes when the action named none (a template).
    target: str | None = None


class HttpSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read: Call | None = None
    restore: Call | None = None
    compensate: Call | None = None


class PythonSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    function: str = Field(min_length=3)


def connector_check(*, kind: str, spec: dict[str, Any], secret: str = "unchecked") -> None:
    """Refuse (422) a spec that cannot work, naming the field."""
    if kind == Connector.Kind.HTTP and not secret.strip():
        raise Refused(
            422,
            "Secret required",
            "an HTTP connector signs its requests: give it a secret the target system also knows",
            field="secret",
        )
    try:
        if kind == Connector.Kind.PYTHON:
            checked = PythonSpec.model_validate(spec)
            try:
                import_string(checked.function)
            except ImportError as exc:
                raise Refused(
                    422,
                    "Unknown function",
                    f"cannot import {checked.function}: {exc}",
                    field="spec.function",
                ) from exc
            return
        http_spec = HttpSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}"
        raise Refused(422, "Invalid connector", detail, field=f"spec.{where}") from exc
    if http_spec.read is None:
        detail = "an HTTP connector needs a read operation: drift checks and verification read"
        raise Refused(422, "Invalid connector", detail + " the target", field="spec.read")
    for name in OPERATIONS:
        call = getattr(http_spec, name)
        if call is not None:
            parts = urllib.parse.urlsplit(call.url.replace("{", "").replace("}", ""))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                detail = f"{name}.url must be an absolute http(s) URL, not {call.url!r}"
                raise Refused(422, "Invalid connector", detail, field=f"spec.{name}.url")


@dataclass(frozen=True)
class Context:
    """What templates and Python connectors know of the step."""

    action: Action
    target: str
    key: str

    def values(self, *, quote: bool) -> dict[str, Any]:
        params = self.action.params or {}
        result = self.action.result if isinstance(self.action.result, dict) else {}
        if quote:  # in a URL, what the agent sent is one path segment, never more
            return {
                "target": urllib.parse.quote(self.target, safe=""),
                "action_id": str(self.action.pk),
                "tool": urllib.parse.quote(self.action.tool, safe=""),
                "params": _Quoted(params),
                "result": _Quoted(result),
            }
        return {
            "target": self.target,
            "action_id": str(self.action.pk),
            "tool": self.action.tool,
            "params": params,
            "result": result,
        }

    def action_info(self) -> dict[str, Any]:
        a = self.action
        return {
            "id": str(a.pk),
            "tool": a.tool,
            "verb": a.verb,
            "params": a.params,
            "target_ids": a.target_ids,
            "result": a.result,
        }


class _Quoted(dict[str, Any]):
    """A mapping whose values come out URL-quoted, for templates filled into URLs."""

    def __getitem__(self, key: str) -> str:
        return urllib.parse.quote(str(super().__getitem__(key)), safe="")


_formatter = string.Formatter()


def fill(template: Any, values: dict[str, Any], state: Any = None) -> Any:
    """A template with its placeholders filled in; "{state}" alone is the state itself."""
    if isinstance(template, str):
        if template == "{state}":
            return state
        try:
            return _formatter.vformat(template, (), values)
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise ConnectorError(f"template {template!r} cannot be filled: {exc!r}") from exc
    if isinstance(template, list):
        return [fill(item, values, state) for item in template]
    if isinstance(template, dict):
        return {key: fill(value, values, state) for key, value in template.items()}
    return template


class _Connections(threading.local):
    def __init__(self) -> None:
        self.open: dict[tuple[str, str], http.client.HTTPConnection] = {}


_connections = _Connections()


def _connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    key = (scheme, netloc)
    conn = _connections.open.get(key)
    if conn is None:
        conn = _connections.open[key] = outbound.connection(scheme, netloc)
    return conn


def _drop(scheme: str, netloc: str) -> None:
    conn = _connections.open.pop((scheme, netloc), None)
    if conn is not None:
        conn.close()


def sign(secret: str, *, timestamp: str, method: str, path: str, key: str, body: bytes) -> str:
    """HMAC-SHA256 over the timestamp, method, path (with query), idempotency key and body,
    one per line: a captured request cannot be replayed to another path or under another key."""
    message = f"{timestamp}\n{method}\n{path}\n{key}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class _Retry(Exception):
    pass


def _http_once(connector: Connector, method: str, url: str, body: bytes, key: str) -> Any:
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Idempotency-Key": key,
        "X-IncidentDesk-Timestamp": timestamp,
        "X-IncidentDesk-Signature": sign(
            connector.secret, timestamp=timestamp, method=method, path=path, key=key, body=body
        ),
    }
    conn = _connection(parts.scheme, parts.netloc)
    try:
        answer = outbound.exchange(
            conn,
            method,
            path,
            body=body if body or method != "GET" else None,
            headers=headers,
            seconds=connector.timeout_seconds,
            max_bytes=settings.CONNECTOR_MAX_RESPONSE_BYTES,
        )
    except outbound.Unanswered as exc:
        _drop(parts.scheme, parts.netloc)
        raise _Retry(f"{method} {url}: {exc}") from exc
    except outbound.OutboundError as exc:
        _drop(parts.scheme, parts.netloc)
        raise ConnectorError(f"{method} {url} {exc}") from exc
    if answer.will_close:
        _drop(parts.scheme, parts.netloc)
    status, payload = answer.status, answer.body
    if status >= 500 or status == 429:
        raise _Retry(f"{method} {url} answered {status}: {payload[:200]!r}")
    if status == 404 and method == "GET":
        return None
    if status >= 400:
        raise ConnectorError(f"{method} {url} answered {status}: {payload[:300]!r}")
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise ConnectorError(
            f"{method} {url} answered something that is not JSON: {payload[:200]!r}"
        ) from exc


def _filled(call: Call, context: Context, state: Any) -> tuple[str, Any]:
    """The call's URL and JSON body, their templates filled in for this step."""
    return fill(call.url, context.values(quote=True)), fill(
        call.body, context.values(quote=False), state
    )


def _http(connector: Connector, call: Call, context: Context, state: Any, key: str) -> Any:
    url, body_value = _filled(call, context, state)
    body = b"" if body_value is None else json.dumps(body_value, sort_keys=True).encode()
    attempts = max(1, connector.max_attempts)
    for attempt in range(attempts):
        try:
            return _http_once(connector, call.method, url, body, key)
        except _Retry as exc:
            if attempt + 1 == attempts:
                raise ConnectorError(f"{exc} (gave up after {attempts} attempts)") from exc
            time.sleep(min(0.1 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def _http_spec(connector: Connector) -> HttpSpec:
    """The connector's spec, parsed once per loaded connector (every step calls it thrice)."""
    parsed = connector.__dict__.get("_http_spec")
    if parsed is None:
        parsed = connector.__dict__["_http_spec"] = HttpSpec.model_validate(connector.spec)
    return parsed  # type: ignore[no-any-return]


def _python_function(connector: Connector) -> Callable[..., Any]:
    function = connector.__dict__.get("_function")
    if function is None:
        path = PythonSpec.model_validate(connector.spec).function
        function = connector.__dict__["_function"] = import_string(path)
    return function  # type: ignore[no-any-return]


def connectors_for(domain_ids: set[int]) -> dict[tuple[int, str], Connector]:
    """The connectors of these domains, by (domain id, tool)."""
    return {(c.domain_id, c.tool): c for c in Connector.objects.filter(domain_id__in=domain_ids)}


def compensation_connected(domain: Domain, tool: str) -> bool:
    """Whether the domain has a connector that can compensate the tool's actions."""
    return connector_supports(
        Connector.objects.filter(domain=domain, tool=tool).first(), "compensate"
    )


def connector_supports(connector: Connector | None, operation: Operation) -> bool:
    if connector is None:
        return False
    if connector.kind == Connector.Kind.PYTHON:
        return True
    return getattr(_http_spec(connector), operation) is not None


def connector_call(
    connector: Connector, operation: Operation, context: Context, state: Any = None
) -> Any:
    """Run one operation against the target. Raises ConnectorError with the reason."""
    if connector.kind == Connector.Kind.PYTHON:
        try:
            return _python_function(connector)(
                operation,
                target=context.target,
                state=state,
                action=context.action_info(),
                key=context.key,
            )
        except ConnectorError:
            raise
        except Exception as exc:
            raise ConnectorError(
                f"{connector.spec.get('function')} failed on {operation}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
    call = _http_call(connector, operation)
    # Reads carry a key of their own: only writes must be applied once.
    key = context.key if operation != "read" else f"{context.key}:read"
    return _http(connector, call, context, state, key)


def connector_request(
    connector: Connector, operation: Operation, context: Context, state: Any = None
) -> dict[str, Any]:
    """The request `connector_call` would send, without sending it: for an HTTP connector
    its method, URL, headers (the signature's value left out) and JSON body; for a Python
    connector the function and its arguments. Raises ConnectorError if it cannot be built."""
    if connector.kind == Connector.Kind.PYTHON:
        return {
            "function": connector.spec.get("function"),
            "arguments": {"operation": operation, "target": context.target, "state": state},
        }
    call = _http_call(connector, operation)
    url, body = _filled(call, context, state)
    return {
        "method": call.method,
        "url": url,
        "headers": [
            f"Idempotency-Key: {context.key}",
            "X-IncidentDesk-Timestamp: (when sent)",
            "X-IncidentDesk-Signature: (HMAC-SHA256 with the connector's secret)",
        ],
        "body": body,
    }


def _http_call(connector: Connector, operation: Operation) -> Call:
    call = getattr(_http_spec(connector), operation)
    if call is None:
        raise ConnectorError(f"the {connector.tool} connector has no {operation} operation")
    return call  # type: ignore[no-any-return]


def compensation_target(connector: Connector, action: Action) -> str:
    """The target a compensation undoes when the action named none (an order it created)."""
    if connector.kind != Connector.Kind.HTTP:
        return ""
    call = _http_spec(connector).compensate
    if call is None or not call.target:
        return ""
    context = Context(action=action, target="", key="")
    try:
        return str(fill(call.target, context.values(quote=False)))
    except ConnectorError:
        return ""


def compensation_expected(connector: Connector, context: Context) -> Any:
    """What a compensated target must read afterwards, if the connector says."""
    if connector.kind != Connector.Kind.HTTP:
        return None
    call = _http_spec(connector).compensate
    if call is None or call.expect is None:
        return None
    return fill(call.expect, context.values(quote=False))


CONNECTOR_FIELDS = ("domain", "tool", "kind", "spec", "secret", "timeout_seconds", "max_attempts")


def _connector_values(connector: Connector) -> dict[str, Any]:
    values = {name: getattr(connector, name) for name in CONNECTOR_FIELDS if name != "domain"}
    return {"domain": connector.domain_id, **values}


def _connector_shown(connector: Connector) -> dict[str, Any]:
    """What the audit trail may say of a connector: everything but its secret."""
    return {
        "domain": connector.domain.slug,
        "tool": connector.tool,
        "kind": connector.kind,
        "spec": connector.spec,
        "timeout_seconds": connector.timeout_seconds,
        "max_attempts": connector.max_attempts,
    }


def connector_save(
    *,
    domain: Domain,
    tool: str,
    kind: str,
    spec: dict[str, Any],
    actor: Actor,
    secret: str = "",
    timeout_seconds: float = 5.0,
    max_attempts: int = 3,
    connector: Connector | None = None,
) -> Connector:
    """Create or replace the connector of a domain's tool, checked and audited (never with
    its secret). Given a `connector`, that row is saved (inserted if new) with these values,
    whatever tool it had: a renamed tool leaves no row behind. A change of nothing is not
    saved."""
    connector_check(kind=kind, spec=spec, secret=secret)
    values: dict[str, Any] = {
        "domain": domain,
        "tool": tool,
        "kind": kind,
        "spec": spec,
        "secret": secret,
        "timeout_seconds": timeout_seconds,
        "max_attempts": max_attempts,
    }
    with transaction.atomic():
        if connector is None:
            connector = (
                Connector.objects.select_for_update().filter(domain=domain, tool=tool).first()
                or Connector()
            )
        created = connector.pk is None
        stored: dict[str, Any] = {}
        if not created:
            row = Connector.objects.select_for_update().filter(pk=connector.pk).first()
            if row is None:
                detail = f"the connector for {tool} in {domain.slug} was deleted meanwhile"
                raise Refused(404, "No such connector", detail)
            stored = _connector_values(row)
        for name, value in values.items():
            setattr(connector, name, value)
        # The parsed spec and imported function belong to the spec it had.
        connector.__dict__.pop("_http_spec", None)
        connector.__dict__.pop("_function", None)
        after = _connector_values(connector)
        changed = [name for name in CONNECTOR_FIELDS if stored.get(name) != after[name]]
        if not created and not changed:
            return connector
        connector.save(update_fields=None if created else changed)
        what = "created" if created else f"changed: {', '.join(changed)}"
        audit_record(
            actor=actor,
            action="connector.created" if created else "connector.changed",
            domain=domain.slug,
            object_type="connector",
            object_id=connector.pk,
            summary=f"Connector for {tool} in {domain.slug} {what} ({kind})",
            data=_connector_shown(connector),
        )
    return connector


def connector_delete(*, connector: Connector, actor: Actor) -> None:
    """Delete a connector, audited with what it was (never its secret). A connector deleted
    meanwhile is left alone."""
    pk, shown = connector.pk, _connector_shown(connector)
    with transaction.atomic():
        deleted, _ = Connector.objects.filter(pk=pk).delete()
        if not deleted:
            return
        audit_record(
            actor=actor,
            action="connector.deleted",
            domain=shown["domain"],
            object_type="connector",
            object_id=pk,
            summary=f"Connector for {shown['tool']} in {shown['domain']} deleted ({shown['kind']})",
            data=shown,
        )
