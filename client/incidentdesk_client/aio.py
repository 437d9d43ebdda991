"""The async client: the same surface as Desk, Session and Proposal, on one event loop.

HTTP and the kill switch socket run on asyncio streams (standard library only): a long-poll for
a decision holds a connection, not a thread, and the kill switch watcher is a task on the
caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import ssl
import struct
import time
import urllib.parse
import uuid
from typing import Any, Callable, TypeVar

from incidentdesk_client.errors import (
    ActionExpired,
    DeskError,
    DeskUnavailable,
    ReportFailed,
    Unauthorized,
)
from incidentdesk_client.guarding import Hooks, ToolShape
from incidentdesk_client.killswitch import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SwitchBoard,
    frame,
    handshake,
    upgraded,
)
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


async def _exchange(
    method: str, url: str, headers: dict[str, str], data: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if secure else None
    )
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"Content-Length: {len(data or b'')}", "Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b""))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        answer: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                answer[name.strip().lower()] = value.strip()
        if answer.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in answer:
            body = await reader.readexactly(int(answer["content-length"]))
        else:
            body = await reader.read()
        return status, answer, body
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


class AsyncKillSwitches(SwitchBoard):
    """The board kept by a task on the caller's event loop."""

    def __init__(
        self,
        url: str,
        token: str,
        poll: Callable[[], Any],
        *,
        max_state_age: float = 60.0,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__(url, token, max_state_age=max_state_age)
        self._poll = poll
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def check(self) -> None:
        """As KillSwitches.check: engaged raises, a stale state the desk cannot confirm fails
        closed."""
        if self.stale:
            try:
                self._apply(await self._poll(), "poll")
            except DeskUnavailable as exc:
                raise self.unconfirmed(exc) from exc
        self.raise_if_engaged()

    def start(self) -> None:
        # Again after a watch that ended (a revoked token): a new token may have come since.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_until_known(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.confirmed_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.confirmed_at is not None

    async def pushed_verdict(self, action_id: str, timeout: float) -> dict[str, Any] | None:
        """As KillSwitches.pushed_verdict, awaited (the socket's task fills it in)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                decided = self._decided(action_id)
                listening = self._listening()
            if decided is not None:
                return decided
            if time.monotonic() >= deadline or not listening:
                return None
            await asyncio.sleep(0.05)

    async def _listen(self) -> None:
        host, port, secure, request = handshake(
            self.ws_url, {"Authorization": f"Bearer {self.token}"}
        )
        context = ssl.create_default_context() if secure else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if secure else None
            ),
            10,
        )
        self._writer = writer
        try:
            writer.write(request)
            await writer.drain()
            upgraded(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
            self.connected = True
            message = b""
            while True:
                first, second = await reader.readexactly(2)
                opcode, final = first & 0x0F, bool(first & 0x80)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await reader.readexactly(8))[0]
                mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
                data = await reader.readexactly(length)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                if opcode == OP_PING:
                    writer.write(frame(OP_PONG, payload))
                    self._confirm()
                elif opcode == OP_CLOSE:
                    with contextlib.suppress(OSError):
                        writer.write(frame(OP_CLOSE, payload[:2]))
                    return
                elif opcode in (OP_TEXT, 0x0):
                    message += payload
                    if final:
                        state = json.loads(message)
                        message = b""
                        if state.get("type") == "killswitch.state":
                            self._apply(state, "push")
                            writer.write(frame(OP_TEXT, self.acknowledgement(state).encode()))
                        elif state.get("type") == "action.verdict":
                            self._take_verdict(state)
        finally:
            self.connected = False
            self._writer = None
            writer.close()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._listen()
                delay = 0.5
            except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
                log.warning("kill switch socket down (%s); polling until it is back", exc)
            except asyncio.TimeoutError as exc:
                log.warning("kill switch socket timed out (%s); polling until it is back", exc)
            until = time.monotonic() + delay
            while time.monotonic() < until:
                try:
                    self._apply(await self._poll(), "poll")
                except Unauthorized as exc:
                    log.error("kill switch watch stopped: %s", exc)
                    return
                except DeskUnavailable:
                    pass
                except DeskError as exc:
                    log.warning("kill switch poll failed: %s", exc)
                await asyncio.sleep(min(self.poll_interval, max(0.0, until - time.monotonic())))
            delay = min(delay * 2, 5.0)


class AsyncDesk:
    """Desk for asyncio code: the same arguments and methods, awaited.

    Use it as `async with AsyncDesk(url, token) as desk:`, or call `start()` inside the running
    loop and `await desk.aclose()` at the end: the kill switch watcher is a task of that loop.
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
        self.kill_switches: AsyncKillSwitches | None = None
        if watch_kill_switches:
            self.kill_switches = AsyncKillSwitches(
                self.url, token, self.kill_switch_state, max_state_age=max_state_age
            )

    def start(self) -> None:
        """Start watching the kill switches (inside the running loop)."""
        if self.kill_switches is not None:
            self.kill_switches.start()

    async def aclose(self) -> None:
        if self.kill_switches is not None:
            await self.kill_switches.stop()

    async def __aenter__(self) -> AsyncDesk:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def check_kill_switches(self) -> None:
        if self.kill_switches is not None:
            self.kill_switches.start()
            await self.kill_switches.check()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """As Desk.request: retried with backoff under the same key, failing closed."""
        data = None if body is None else dumps(body)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        retries = self.retries if retries is None else retries
        while True:
            try:
                status, answer, raw = await asyncio.wait_for(
                    _exchange(method, self.url + path, headers, data), timeout or self.timeout
                )
            except (
                OSError,
                ConnectionError,
                asyncio.TimeoutError,
                asyncio.IncompleteReadError,  # the desk closed the connection mid-answer
                asyncio.LimitOverrunError,
                ValueError,
            ) as error:
                if attempt >= retries:
                    raise DeskUnavailable(
                        f"IncidentDesk at {self.url} is unreachable: {error!r}"
                    ) from error
                attempt += 1
                log.warning("desk unreachable (%r); retry %d of %d", error, attempt, retries)
                await self._sleep(attempt, None)
                continue
            payload = json_or_text(raw)
            again = status >= 400 and retry_again(status, payload, idempotency_key)
            if again and attempt < retries:
                attempt += 1
                await self._sleep(attempt, answer.get("retry-after"))
                continue
            return status, payload

    async def _sleep(self, attempt: int, retry_after: str | None) -> None:
        if retry_after and retry_after.isdigit():
            delay = float(retry_after)
        else:
            delay = self.backoff * (2 ** (attempt - 1))
            delay = delay / 2 + random.random() * delay / 2
        await asyncio.sleep(delay)

    async def propose(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        status, body = await self.request(
            "POST", "/api/v1/actions", action, idempotency_key=idempotency_key
        )
        return verdict_or_raise(status, body)

    async def verdict(self, action_id: str, *, wait: int = 0) -> dict[str, Any]:
        status, body = await self.request(
            "GET", f"/api/v1/actions/{action_id}?wait={wait}", timeout=self.timeout + wait
        )
        return verdict_or_raise(status, body)

    async def kill_switch_state(self) -> dict[str, Any]:
        status, body = await self.request("GET", "/api/v1/killswitches", retries=0, timeout=5)
        if status != 200:
            raise_for(status, body)
        return body

    async def wait_for_decision(self, verdict: dict[str, Any]) -> dict[str, Any]:
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
                pushed = await switches.pushed_verdict(verdict["id"], self.poll_wait)
                verdict = pushed or await self.verdict(verdict["id"])
            else:
                verdict = await self.verdict(verdict["id"], wait=self.poll_wait)
        return verdict

    async def mark_executing(self, action_id: str, params: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.request(
            "POST", f"/api/v1/actions/{action_id}/executing", {"params": params}
        )
        return started_or_pending(status, body)

    async def report(
        self,
        action_id: str,
        *,
        ok: bool,
        result: Any = None,
        post_state: Any = None,
        error: str = "",
    ) -> dict[str, Any]:
        body = {"ok": ok, "result": result, "post_state": post_state, "error": error}
        status, answer = await self.request("POST", f"/api/v1/actions/{action_id}/result", body)
        return verdict_or_raise(status, answer)

    async def record_steps(
        self, session_id: str, steps: list[dict[str, Any]]
    ) -> tuple[int, dict[str, Any]]:
        return await self.request("POST", f"/api/v1/sessions/{session_id}/steps", {"steps": steps})

    async def proposal(self, action_id: str, *, label: str = "") -> AsyncProposal:
        return AsyncProposal(self, label or action_id, "", await self.verdict(action_id))

    def session(self, session_id: str | None = None) -> AsyncSession:
        return AsyncSession(self, session_id or f"session-{uuid.uuid4().hex[:12]}")


class AsyncProposal:
    """Proposal, awaited."""

    def __init__(self, desk: AsyncDesk, label: str, key: str, verdict: dict[str, Any]) -> None:
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

    async def wait(self) -> dict[str, Any]:
        if self.verdict["status"] == "executing":  # started already: by an earlier wait
            if self.verdict.get("kill_switch"):
                raise_killed(self.verdict)
            await self.desk.check_kill_switches()
        while self.verdict["status"] != "executing":
            self.verdict = runnable(await self.desk.wait_for_decision(self.verdict), self.label)
            await self.desk.check_kill_switches()
            self.verdict = await self.desk.mark_executing(self.id, self.params)
            if self.verdict["status"] == "pending":
                log.warning(
                    "%s: its targets changed since it was approved; waits again", self.label
                )
        return self.params

    async def report(
        self, ok: bool, result: Any = None, post_state: Any = None, error: str = ""
    ) -> dict[str, Any]:
        return await self.desk.report(
            self.id, ok=ok, result=jsonable(result), post_state=post_state, error=error
        )

    async def succeeded(self, result: Any, post_state: Any) -> None:
        try:
            await self.report(True, result, post_state)
        except DeskError as report_error:
            raise ReportFailed(
                f"{self.label} ran, but its result was not reported: {report_error}",
                verdict=self.verdict,
                result=result,
                post_state=post_state,
            ) from report_error

    async def failed(self, error: BaseException, post_state: Any) -> None:
        try:
            await self.report(False, post_state=post_state, error=error_text(error))
        except DeskError as report_error:
            log.error("could not report %s failing: %s", self.label, report_error)


class AsyncSession:
    """Session, awaited."""

    def __init__(self, desk: AsyncDesk, session_id: str) -> None:
        self.desk = desk
        self.id = session_id
        self.next_index = 0
        self._steps: asyncio.Lock | None = None

    async def step(self, kind: str, content: str, **data: Any) -> int:
        # Steps are numbered in order: calls of one run made at once take turns here.
        if self._steps is None:
            self._steps = asyncio.Lock()
        async with self._steps:
            return await self._step(kind, content, data)

    async def _step(self, kind: str, content: str, data: dict[str, Any]) -> int:
        for _ in range(2):
            step = {"index": self.next_index, "kind": kind, "content": content, "data": data}
            status, body = await self.desk.record_steps(self.id, [step])
            if status == 201:
                self.next_index += 1
                return int(step["index"])
            index = next_step_index(status, body)
            if index is None or index == self.next_index:
                raise_for(status, body)
            self.next_index = index
        raise_for(status, body)
        raise AssertionError("unreachable")

    async def thought(self, content: str, **data: Any) -> int:
        return await self.step("thought", content, **data)

    async def observation(self, content: str, **data: Any) -> int:
        return await self.step("observation", content, **data)

    async def propose(
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
    ) -> AsyncProposal:
        """As Session.propose."""
        label = f"{tool}:{verb}" if verb else tool
        await self.desk.check_kill_switches()
        chosen = key is not None
        key = key or uuid.uuid4().hex
        index = None
        if step and not chosen:
            index = await self.step("tool_call", label, params=params)
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
        verdict = await self.desk.propose(body, idempotency_key=key)
        proposal = AsyncProposal(self.desk, label, key, verdict)
        if step and chosen:
            await self.step("tool_call", label, params=params, action_id=proposal.id)
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
        """As Session.guard; the guarded tool is always a coroutine function (a plain tool
        runs in a worker thread, off the loop)."""
        if callable(tool):
            return self.guard()(tool)
        hooks = Hooks(snapshot, targets, amount, blast_radius, compensation, post_state)

        def decorate(function: F) -> F:
            shape = ToolShape(function)
            name = tool or function.__name__
            is_async = inspect.iscoroutinefunction(function)

            async def run(*args: Any, **kwargs: Any) -> Any:
                if is_async:
                    return await function(*args, **kwargs)
                return await asyncio.to_thread(function, *args, **kwargs)

            async def guarded(*args: Any, **kwargs: Any) -> Any:
                params = shape.params(args, kwargs)
                try:
                    proposal = await self.propose(name, params, verb=verb, **hooks.proposal(params))
                except DeskUnavailable:
                    if verb == "read" and self.desk.fail_open_reads:
                        log.warning("desk unreachable; running read-only %s unchecked", name)
                        return await run(*args, **kwargs)
                    raise
                params_run = await proposal.wait()
                call_args, call_kwargs = shape.call(params_run, proposal.key)
                try:
                    result = await run(*call_args, **call_kwargs)
                except Exception as error:
                    await proposal.failed(error, hooks.after_failure(params_run))
                    raise
                await proposal.succeeded(result, hooks.after(result, params_run))
                return result

            return shape.dress(guarded, function)  # type: ignore[no-any-return]

        return decorate
