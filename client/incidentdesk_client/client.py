"""The desk connection, sessions, proposals, and the guard that wraps a tool function."""

from __future__ import annotations

import asyncio
import http.client
import inspect
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, TypeVar

from incidentdesk_client.errors import (
    ActionExpired,
    DeskError,
    DeskUnavailable,
    ReportFailed,
)
from incidentdesk_client.guarding import Hooks, ToolShape
from incidentdesk_client.killswitch import KillSwitches
from incidentdesk_client.verdicts import (
    dumps,
    error_text,
    json_or_text,
    jsonable,
    next_step_index,
    proposal_body,
    raise_for,
    raise_killed,
    retry_again,
    runnable,
    started_or_pending,
    verdict_or_raise,
)

log = logging.getLogger("incidentdesk_client")
F = TypeVar("F", bound=Callable[..., Any])


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
        data = None if body is None else dumps(body)
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
                status, payload = error.code, json_or_text(error.read())
                if retry_again(status, payload, idempotency_key) and attempt < retries:
                    attempt += 1
                    self._sleep(attempt, error.headers.get("Retry-After"))
                    continue
                return status, payload
            except (
                urllib.error.URLError,
                ConnectionError,
                TimeoutError,
                OSError,
                http.client.HTTPException,  # a cut-short answer
                ValueError,  # an answer that is not JSON (a proxy's error page)
            ) as error:
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
        return verdict_or_raise(status, body)

    def verdict(self, action_id: str, *, wait: int = 0) -> dict[str, Any]:
        status, body = self.request(
            "GET", f"/api/v1/actions/{action_id}?wait={wait}", timeout=self.timeout + wait
        )
        return verdict_or_raise(status, body)

    def kill_switch_state(self) -> dict[str, Any]:
        """The switches over this token's domain, asked of the desk now (one try, no retries)."""
        status, body = self.request("GET", "/api/v1/killswitches", retries=0, timeout=5)
        if status != 200:
            raise_for(status, body)
        return body

    def wait_for_decision(self, verdict: dict[str, Any]) -> dict[str, Any]:
        """Long-poll a pending verdict until a person (or the clock) decides it."""
        started = time.monotonic()
        while verdict["status"] == "pending":
            if verdict.get("kill_switch"):
                raise_killed(verdict)
            if self.max_wait is not None and time.monotonic() - started > self.max_wait:
                raise ActionExpired(
                    f"no decision on {verdict['id']} within {self.max_wait} s", verdict
                )
            # Pushed over the kill switch socket when it is up; asked for (long poll) when
            # it is down or nothing came.
            switches = self.kill_switches
            if switches is not None and switches.connected:
                pushed = switches.pushed_verdict(verdict["id"], self.poll_wait)
                verdict = pushed or self.verdict(verdict["id"])
            else:
                verdict = self.verdict(verdict["id"], wait=self.poll_wait)
        return verdict

    def mark_executing(self, action_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Tell the desk the call runs now, with `params`; its verdict, status "executing", or
        "pending" again if its targets changed since it was approved."""
        status, body = self.request(
            "POST", f"/api/v1/actions/{action_id}/executing", {"params": params}
        )
        return started_or_pending(status, body)

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
        return verdict_or_raise(status, answer)

    def record_steps(self, session_id: str, steps: list[dict[str, Any]]) -> tuple[int, dict]:
        """Record reasoning steps; (status, body) of the desk's answer, 201 when recorded."""
        return self.request("POST", f"/api/v1/sessions/{session_id}/steps", {"steps": steps})

    def proposal(self, action_id: str, *, label: str = "") -> Proposal:
        """A proposal made earlier, perhaps by another process, back in hand by its id."""
        return Proposal(self, label or action_id, "", self.verdict(action_id))

    def session(self, session_id: str | None = None) -> Session:
        return Session(self, session_id or f"session-{uuid.uuid4().hex[:12]}")


class Proposal:
    """One proposed tool call: the desk's verdict, and what the caller does with it.

    `wait()` blocks until the call may run and returns the params to run it with (an
    operator's, if they modified them), or raises why it may not. `report()` tells the desk
    how it went. A proposal made again with the same key is the same action, so a process
    that resumes a step can pick it up where another left it.
    """

    def __init__(self, desk: Desk, label: str, key: str, verdict: dict[str, Any]) -> None:
        self.desk, self.label, self.key, self.verdict = desk, label, key, verdict

    @property
    def id(self) -> str:
        return str(self.verdict["id"])

    @property
    def status(self) -> str:
        return str(self.verdict["status"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.verdict["params"])

    def wait(self) -> dict[str, Any]:
        if self.verdict["status"] == "executing":  # started already: by an earlier wait
            if self.verdict.get("kill_switch"):
                raise_killed(self.verdict)
            self.desk.check_kill_switches()
        while self.verdict["status"] != "executing":
            self.verdict = runnable(self.desk.wait_for_decision(self.verdict), self.label)
            # The verdict may be a while old: a switch engaged since then stops the call
            # here, the last moment before it runs.
            self.desk.check_kill_switches()
            self.verdict = self.desk.mark_executing(self.id, self.params)
            if self.verdict["status"] == "pending":
                log.warning(
                    "%s: its targets changed since it was approved; waits again", self.label
                )
        return self.params

    def report(
        self, ok: bool, result: Any = None, post_state: Any = None, error: str = ""
    ) -> dict[str, Any]:
        return self.desk.report(
            self.id, ok=ok, result=jsonable(result), post_state=post_state, error=error
        )

    def succeeded(self, result: Any, post_state: Any) -> None:
        """Report a run that worked; ReportFailed (carrying the result) if the desk did not
        take the report."""
        try:
            self.report(True, result, post_state)
        except DeskError as report_error:
            raise ReportFailed(
                f"{self.label} ran, but its result was not reported: {report_error}",
                verdict=self.verdict,
                result=result,
                post_state=post_state,
            ) from report_error

    def failed(self, error: BaseException, post_state: Any) -> None:
        """Report a run that raised; the caller re-raises the tool's error either way."""
        try:
            self.report(False, post_state=post_state, error=error_text(error))
        except DeskError as report_error:
            log.error("could not report %s failing: %s", self.label, report_error)


class Session:
    """One reasoning run: its steps, and the tool calls proposed in it."""

    def __init__(self, desk: Desk, session_id: str) -> None:
        self.desk = desk
        self.id = session_id
        self.next_index = 0
        self._steps = threading.Lock()  # steps are numbered in order, one at a time

    def step(self, kind: str, content: str, **data: Any) -> int:
        """Record a reasoning step. Where another process (or an earlier run of this one)
        recorded steps of this session meanwhile, this one goes after them."""
        with self._steps:
            return self._step(kind, content, data)

    def _step(self, kind: str, content: str, data: dict[str, Any]) -> int:
        for _ in range(2):
            step = {"index": self.next_index, "kind": kind, "content": content, "data": data}
            status, body = self.desk.record_steps(self.id, [step])
            if status == 201:
                self.next_index += 1
                return int(step["index"])
            index = next_step_index(status, body)
            if index is None or index == self.next_index:
                raise_for(status, body)
            self.next_index = index
        raise_for(status, body)
        raise AssertionError("unreachable")

    def thought(self, content: str, **data: Any) -> int:
        return self.step("thought", content, **data)

    def observation(self, content: str, **data: Any) -> int:
        return self.step("observation", content, **data)

    def propose(
        self,
        tool: str,
        params: dict[str, Any],
        *,
        verb: str | None = None,
        key: str | None = None,
        target_ids: Any = None,
        pre_action_state: Any = None,
        amount: Any = None,
        blast_radius: Any = None,
        compensation: Any = None,
        step: bool = True,
    ) -> Proposal:
        """Propose a tool call and return its Proposal (the verdict may still be pending).

        `verb` may be left out for a tool in the domain's registry. `key` is the
        Idempotency-Key: choose one that is the same each time a durable flow re-runs this
        step, and a re-proposal returns the same action. `amount` is (value, currency),
        `blast_radius` (records, population). With `step`, the call is also recorded as a
        reasoning step of the session: before the proposal, which then names it, or, for a
        caller-chosen key, after it, naming the action, so that the proposal's body is the
        same in any process that makes it again.
        """
        label = f"{tool}:{verb}" if verb else tool
        # At no network cost while the pushed state is fresh.
        self.desk.check_kill_switches()
        chosen = key is not None
        key = key or uuid.uuid4().hex
        index = None
        if step and not chosen:
            index = self.step("tool_call", label, params=params)
        body = proposal_body(
            session_id=self.id,
            step_index=index,
            tool=tool,
            verb=verb,
            params=params,
            target_ids=target_ids,
            pre_action_state=pre_action_state,
            amount=amount,
            blast_radius=blast_radius,
            compensation=compensation,
        )
        proposal = Proposal(self.desk, label, key, self.desk.propose(body, idempotency_key=key))
        if step and chosen:
            self.step("tool_call", label, params=params, action_id=proposal.id)
        return proposal

    def guard(
        self,
        tool: Any = None,
        verb: str | None = None,
        *,
        snapshot: Callable[..., Any] | None = None,
        targets: Callable[..., Any] | None = None,
        amount: Callable[..., Any] | None = None,
        blast_radius: Callable[..., Any] | None = None,
        compensation: Callable[..., Any] | None = None,
        post_state: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Wrap a tool: propose it, wait for the verdict, run it, report what it did.

        Used as `@session.guard`, `@session.guard("create_order", "create")` or with hooks.
        The tool's name is the function's unless given; the verb may be left to the domain's
        tool registry. Calls may pass arguments by position or by name; the params the desk
        sees are the arguments by name. Each of snapshot, targets, amount, blast_radius and
        compensation is a function of those params. The state reported after the call is the
        snapshot taken again, or `post_state(result)` for a tool whose result is what it
        changed. The tool runs with the params the desk returns (an operator's, if they
        modified them), and with the proposal's idempotency key if it takes an
        `idempotency_key` argument, which callers then no longer see in its signature.
        Works on plain and async functions.
        """
        if callable(tool):
            return self.guard()(tool)
        hooks = Hooks(snapshot, targets, amount, blast_radius, compensation, post_state)

        def decorate(function: F) -> F:
            shape = ToolShape(function)
            name = tool or function.__name__

            def open_call(params: dict[str, Any]) -> Proposal | None:
                try:
                    proposal = self.propose(name, params, verb=verb, **hooks.proposal(params))
                except DeskUnavailable:
                    if verb == "read" and self.desk.fail_open_reads:
                        log.warning("desk unreachable; running read-only %s unchecked", name)
                        return None
                    raise
                proposal.wait()
                return proposal

            if inspect.iscoroutinefunction(function):

                async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                    params = shape.params(args, kwargs)
                    proposal = await asyncio.to_thread(open_call, params)
                    if proposal is None:
                        return await function(*args, **kwargs)
                    run = proposal.params
                    call_args, call_kwargs = shape.call(run, proposal.key)
                    try:
                        result = await function(*call_args, **call_kwargs)
                    except Exception as error:
                        await asyncio.to_thread(proposal.failed, error, hooks.after_failure(run))
                        raise
                    await asyncio.to_thread(proposal.succeeded, result, hooks.after(result, run))
                    return result

                return shape.dress(guarded_async, function)  # type: ignore[no-any-return]

            def guarded(*args: Any, **kwargs: Any) -> Any:
                params = shape.params(args, kwargs)
                proposal = open_call(params)
                if proposal is None:
                    return function(*args, **kwargs)
                run = proposal.params
                call_args, call_kwargs = shape.call(run, proposal.key)
                try:
                    result = function(*call_args, **call_kwargs)
                except Exception as error:
                    proposal.failed(error, hooks.after_failure(run))
                    raise
                proposal.succeeded(result, hooks.after(result, run))
                return result

            return shape.dress(guarded, function)  # type: ignore[no-any-return]

        return decorate
