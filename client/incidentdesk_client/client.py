"""The desk connection, sessions, and the guard that wraps a tool function."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import random
import time
import urllib.error
import urllib.request
import uuid
from decimal import Decimal
from typing import Any, Callable, TypeVar

from incidentdesk_client.errors import (
    ActionCancelled,
    ActionDenied,
    ActionExpired,
    ActionRejected,
    DeskError,
    DeskUnavailable,
    InvalidRequest,
    KillSwitchEngaged,
    OutOfScope,
    ReportFailed,
    Unauthorized,
)
from incidentdesk_client.killswitch import KillSwitches

log = logging.getLogger("incidentdesk_client")
F = TypeVar("F", bound=Callable[..., Any])
RETRYABLE_STATUS = {429, 502, 503, 504}
IN_FLIGHT_PROBLEM = "urn:incidentdesk:problem:request-in-progress"
FINAL_STOPS = {
    "denied": ActionDenied,
    "rejected": ActionRejected,
    "expired": ActionExpired,
    "cancelled": ActionCancelled,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class Desk:
    """A connection to IncidentDesk with one agent token.

    Network failures are retried with backoff under the same Idempotency-Key, so a retried
    proposal never creates a second action. When the desk stays unreachable the call fails
    closed (DeskUnavailable), except for read-only tools if `fail_open_reads` is set.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        poll_wait: int = 25,
        max_wait: float | None = None,
        fail_open_reads: bool = False,
        watch_kill_switches: bool = True,
        max_state_age: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.poll_wait = poll_wait
        self.max_wait = max_wait
        self.fail_open_reads = fail_open_reads
        # The kill switches over this token's domain, pushed by the desk and kept in memory:
        # every guarded call checks them before proposing and again right before it runs.
        self.kill_switches: KillSwitches | None = None
        if watch_kill_switches:
            self.kill_switches = KillSwitches(
                self.url, token, self.kill_switch_state, max_state_age=max_state_age
            )
            self.kill_switches.start()

    def close(self) -> None:
        """Stop watching the kill switches."""
        if self.kill_switches is not None:
            self.kill_switches.stop()

    def check_kill_switches(self) -> None:
        if self.kill_switches is not None:
            self.kill_switches.check()

    # HTTP

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One API call with retries; returns (status, JSON body) for any answer the desk gave."""
        data = None if body is None else json.dumps(body, default=_json_default).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        retries = self.retries if retries is None else retries
        while True:
            request = urllib.request.Request(
                self.url + path, data=data, method=method, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                    return response.status, json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as error:
                status, payload = error.code, _json_or_text(error.read())
                retry_after = error.headers.get("Retry-After")
                # Our own earlier attempt with this key is still running; ask again. (A key
                # reused with another body is also 409, but asking again cannot help that.)
                in_flight = (
                    status == 409
                    and idempotency_key is not None
                    and isinstance(payload, dict)
                    and payload.get("type") == IN_FLIGHT_PROBLEM
                )
                if (status in RETRYABLE_STATUS or in_flight) and attempt < retries:
                    attempt += 1
                    self._sleep(attempt, retry_after)
                    continue
                return status, payload
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                if attempt >= retries:
                    raise DeskUnavailable(
                        f"IncidentDesk at {self.url} is unreachable: {error}"
                    ) from error
                attempt += 1
                log.warning("desk unreachable (%s); retry %d of %d", error, attempt, retries)
                self._sleep(attempt, None)

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        if retry_after and retry_after.isdigit():
            delay = float(retry_after)
        else:
            delay = self.backoff * (2 ** (attempt - 1))
            delay = delay / 2 + random.random() * delay / 2
        time.sleep(delay)

    # The API

    def propose(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        status, body = self.request(
            "POST", "/api/v1/actions", action, idempotency_key=idempotency_key
        )
        return _verdict_or_raise(status, body)

    def verdict(self, action_id: str, *, wait: int = 0) -> dict[str, Any]:
        status, body = self.request(
            "GET", f"/api/v1/actions/{action_id}?wait={wait}", timeout=self.timeout + wait
        )
        return _verdict_or_raise(status, body)

    def kill_switch_state(self) -> dict[str, Any]:
        """The switches over this token's domain, asked of the desk now (one try, no retries)."""
        status, body = self.request("GET", "/api/v1/killswitches", retries=0, timeout=5)
        if status != 200:
            _raise_for(status, body)
        return body

    def wait_for_decision(self, verdict: dict[str, Any]) -> dict[str, Any]:
        """Long-poll a pending verdict until a person (or the clock) decides it."""
        started = time.monotonic()
        while verdict["status"] == "pending":
            if verdict.get("kill_switch"):
                _raise_killed(verdict)
            if self.max_wait is not None and time.monotonic() - started > self.max_wait:
                raise ActionExpired(
                    f"no decision on {verdict['id']} within {self.max_wait} s", verdict
                )
            verdict = self.verdict(verdict["id"], wait=self.poll_wait)
        return verdict

    def report(
        self,
        action_id: str,
        *,
        ok: bool,
        result: Any = None,
        post_state: Any = None,
        error: str = "",
    ) -> dict[str, Any]:
        body = {"ok": ok, "result": result, "post_state": post_state, "error": error}
        status, answer = self.request("POST", f"/api/v1/actions/{action_id}/result", body)
        return _verdict_or_raise(status, answer)

    def record_steps(self, session_id: str, steps: list[dict[str, Any]]) -> None:
        status, body = self.request(
            "POST", f"/api/v1/sessions/{session_id}/steps", {"steps": steps}
        )
        if status != 201:
            _raise_for(status, body)

    def session(self, session_id: str | None = None) -> Session:
        return Session(self, session_id or f"session-{uuid.uuid4().hex[:12]}")


class Session:
    """One reasoning run: its steps, and the guarded tool calls made in it."""

    def __init__(self, desk: Desk, session_id: str) -> None:
        self.desk = desk
        self.id = session_id
        self.next_index = 0

    def step(self, kind: str, content: str, **data: Any) -> int:
        index = self.next_index
        self.desk.record_steps(
            self.id, [{"index": index, "kind": kind, "content": content, "data": data}]
        )
        self.next_index += 1
        return index

    def thought(self, content: str, **data: Any) -> int:
        return self.step("thought", content, **data)

    def observation(self, content: str, **data: Any) -> int:
        return self.step("observation", content, **data)

    def guard(
        self,
        tool: str,
        verb: str,
        *,
        snapshot: Callable[..., Any] | None = None,
        targets: Callable[..., list[str]] | None = None,
        amount: Callable[..., tuple[Any, str]] | None = None,
        blast_radius: Callable[..., tuple[int, int]] | None = None,
        compensation: Callable[..., dict[str, Any]] | None = None,
        post_state: Callable[[Any], Any] | None = None,
    ) -> Callable[[F], F]:
        """Wrap a tool: propose it, wait for the verdict, run it, report what it did.

        Each of snapshot, targets, amount, blast_radius and compensation is a function of
        the tool's keyword arguments. The state reported after the call is the snapshot taken
        again, or `post_state(result)` for a tool whose result is what it changed (an order it
        created). The tool runs with the params the desk returns (an
        operator's, if they modified them), and with the proposal's idempotency key if it
        takes an `idempotency_key` argument.
        """

        def decorate(function: F) -> F:
            takes_key = "idempotency_key" in inspect.signature(function).parameters

            @functools.wraps(function)
            def guarded(**params: Any) -> Any:
                key = uuid.uuid4().hex
                try:
                    # At no network cost while the pushed state is fresh.
                    self.desk.check_kill_switches()
                    verdict = self._propose(
                        tool,
                        verb,
                        params,
                        key,
                        snapshot,
                        targets,
                        amount,
                        blast_radius,
                        compensation,
                    )
                except DeskUnavailable:
                    if verb == "read" and self.desk.fail_open_reads:
                        log.warning("desk unreachable; running read-only %s unchecked", tool)
                        return function(**params)
                    raise
                verdict = self.desk.wait_for_decision(verdict)
                stop = FINAL_STOPS.get(verdict["status"])
                if stop is not None:
                    why = verdict.get("decision_reason") or verdict["reason"]
                    by = f" by {verdict['decided_by']}" if verdict.get("decided_by") else ""
                    raise stop(f"{tool}:{verb} {verdict['status']}{by}: {why}", verdict)
                if verdict.get("kill_switch"):
                    _raise_killed(verdict)
                if not verdict.get("may_execute"):
                    raise DeskError(f"{tool}:{verb} may not run: {verdict['status']}", verdict)
                # The verdict may be a while old: a switch engaged since then stops the call
                # here, the last moment before the tool runs.
                self.desk.check_kill_switches()
                run_params = dict(verdict["params"])
                if takes_key:
                    run_params["idempotency_key"] = key
                try:
                    result = function(**run_params)
                except Exception as error:
                    post = snapshot(**verdict["params"]) if snapshot else None
                    try:
                        self.desk.report(
                            verdict["id"], ok=False, post_state=post, error=repr(error)
                        )
                    except DeskError as report_error:
                        log.error("could not report %s failing: %s", tool, report_error)
                    raise
                if post_state is not None:
                    post = post_state(result)
                else:
                    post = snapshot(**verdict["params"]) if snapshot else None
                try:
                    self.desk.report(
                        verdict["id"], ok=True, result=_jsonable(result), post_state=post
                    )
                except DeskError as report_error:
                    raise ReportFailed(
                        f"{tool}:{verb} ran, but its result was not reported: {report_error}",
                        verdict=verdict,
                        result=result,
                        post_state=post,
                    ) from report_error
                return result

            return guarded  # type: ignore[return-value]

        return decorate

    def _propose(
        self,
        tool: str,
        verb: str,
        params: dict[str, Any],
        key: str,
        snapshot: Callable[..., Any] | None,
        targets: Callable[..., list[str]] | None,
        amount: Callable[..., tuple[Any, str]] | None,
        blast_radius: Callable[..., tuple[int, int]] | None,
        compensation: Callable[..., dict[str, Any]] | None,
    ) -> dict[str, Any]:
        index = self.step("tool_call", f"{tool}:{verb}", params=params)
        proposal: dict[str, Any] = {
            "session_id": self.id,
            "step_index": index,
            "tool": tool,
            "verb": verb,
            "params": params,
            "target_ids": list(targets(**params)) if targets else [],
            "pre_action_state": snapshot(**params) if snapshot else None,
        }
        if amount:
            value, currency = amount(**params)
            proposal["amount"] = {"value": str(value), "currency": currency}
        if blast_radius:
            records, population = blast_radius(**params)
            proposal["blast_radius"] = {"records": records, "population": population}
        if compensation:
            proposal["compensation"] = compensation(**params)
        return self.desk.propose(proposal, idempotency_key=key)


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
        return value if isinstance(value, dict) else {"detail": value}
    except ValueError:
        return {"detail": raw.decode(errors="replace")}


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError):
        return repr(value)


def _verdict_or_raise(status: int, body: dict[str, Any]) -> dict[str, Any]:
    if status in (200, 201):
        return body
    _raise_for(status, body)
    raise AssertionError("unreachable")


def _raise_killed(verdict: dict[str, Any]) -> None:
    switch = verdict["kill_switch"]
    raise KillSwitchEngaged(
        f"kill switch {switch['scope']} engaged by {switch.get('changed_by')}: "
        f"{switch.get('reason')}",
        {**verdict, "reason": switch.get("reason", "")},
    )


def _raise_for(status: int, body: dict[str, Any]) -> None:
    detail = body.get("detail") or body.get("title") or f"HTTP {status}"
    if status == 401:
        raise Unauthorized(detail)
    if status == 403:
        raise OutOfScope(detail)
    if status == 423:
        raise KillSwitchEngaged(detail, body)
    if status in (400, 413, 422):
        raise InvalidRequest(detail, body)
    if status >= 500 or status in RETRYABLE_STATUS:
        raise DeskUnavailable(f"IncidentDesk answered {status}: {detail}")
    raise DeskError(f"IncidentDesk answered {status}: {detail}", body)
