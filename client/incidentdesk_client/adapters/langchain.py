"""IncidentDesk for LangChain agents: a middleware for `create_agent` that asks the desk before
each guarded tool call runs.

    from incidentdesk_client import Desk
    from incidentdesk_client.adapters.langchain import IncidentDeskMiddleware

    desk = Desk(url, token)
    agent = create_agent(model, tools, middleware=[IncidentDeskMiddleware(desk, session_id="r-1")])

For each guarded tool call the middleware proposes the call (the tool's name, the model's
arguments as params, an Idempotency-Key made of the session id and the tool call's id, so a
retried call is the same action), waits for the verdict, runs the tool with the params the desk
returns (an operator's, when they modified them) and reports the tool's answer or its failure.
A call the desk refuses never runs: the model gets an error ToolMessage that names the reason
and the rule, and the run goes on. Give it a `Desk` for `invoke` / `stream` and an `AsyncDesk`
for `ainvoke` / `astream`.

`IncidentDeskInterruptMiddleware` does the same without holding the run open while a person
decides: it pauses the graph with LangGraph's `interrupt()` and picks the call up again when the
graph is resumed (it needs a checkpointer and a thread id).

Requires langchain 1.5 and langgraph 1.2 or later (`pip install "incidentdesk-client[langchain]"`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union, cast

from langchain.agents.middleware import AgentMiddleware, ToolCallRequest
from langchain_core.messages import ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.types import Command, interrupt

from incidentdesk_client.aio import AsyncDesk, AsyncProposal, AsyncSession
from incidentdesk_client.client import Desk, Proposal, Session
from incidentdesk_client.errors import (
    REFUSALS,
    DeskError,
)
from incidentdesk_client.verdicts import proposal_body

__all__ = ["REFUSALS", "IncidentDeskInterruptMiddleware", "IncidentDeskMiddleware"]

log = logging.getLogger("incidentdesk_client")


SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")

Outcome = Union[ToolMessage, Command]
Handler = Callable[[ToolCallRequest], Outcome]
AsyncHandler = Callable[[ToolCallRequest], Awaitable[Outcome]]


@dataclass(frozen=True)
class GuardedCall:
    """One tool call of the model, as the desk sees it."""

    tool: str
    params: dict[str, Any]
    verb: str | None
    session_id: str
    key: str
    tool_call_id: str

    @property
    def label(self) -> str:
        return f"{self.tool}:{self.verb}" if self.verb else self.tool

    def body(self, step_index: int | None) -> dict[str, Any]:
        return proposal_body(
            session_id=self.session_id,
            step_index=step_index,
            tool=self.tool,
            verb=self.verb,
            params=self.params,
        )


def call_key(session_id: str, tool_call_id: str) -> str:
    """The Idempotency-Key of a tool call: the same for the same call of the same session, in
    any process."""
    digest = hashlib.sha256(f"{session_id}\0{tool_call_id}".encode()).hexdigest()
    return f"langchain-{digest[:40]}"


def session_name(name: Any) -> str:
    """A desk session id for a thread id, which may be any string."""
    name = str(name)
    if SESSION_ID.fullmatch(name):
        return name
    return f"thread-{hashlib.sha256(name.encode()).hexdigest()[:24]}"


def refused(error: DeskError) -> bool:
    """Whether the desk said no to the call (the model should hear why), rather than could not
    be asked or could not take the request (the run should stop)."""
    if isinstance(error, REFUSALS):
        return True
    # A decided action that may not run (any more): it already ran, or its approval lapsed.
    return type(error) is DeskError and error.action_id is not None


def refusal(request: ToolCallRequest, call: GuardedCall, error: DeskError) -> ToolMessage:
    """The error the model sees in place of the tool's answer."""
    why = [f"rule {error.rule}"] if error.rule else []
    if error.action_id:
        why.append(f"action {error.action_id}")
    detail = f" ({', '.join(why)})" if why else ""
    return ToolMessage(
        content=f"IncidentDesk stopped this call; {call.tool} did not run. {error}{detail}",
        name=call.tool,
        tool_call_id=request.tool_call["id"] or "",
        status="error",
        artifact={"incidentdesk": error.verdict},
    )


def tool_message(outcome: Outcome, tool_call_id: str | None) -> ToolMessage | None:
    """The ToolMessage a tool answered with, also when it answered with a Command."""
    if isinstance(outcome, ToolMessage):
        return outcome
    update = outcome.update if isinstance(outcome.update, dict) else {}
    for message in update.get("messages", []):
        if isinstance(message, ToolMessage) and message.tool_call_id == tool_call_id:
            return message
    return None


def result_of(message: ToolMessage | None) -> Any:
    """What to report as the tool's result: its content, parsed when the tool returned JSON."""
    if message is None:
        return None
    content = message.content
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content


def pending_action(call: GuardedCall, verdict: dict[str, Any]) -> dict[str, Any]:
    """What an interrupt shows while the desk holds the call for a person."""
    return {
        "action_id": verdict["id"],
        "tool": call.tool,
        "params": verdict.get("params", call.params),
        "rule": verdict.get("rule"),
        "reason": verdict.get("reason"),
        "tier": verdict.get("tier"),
        "expires_at": verdict.get("expires_at"),
        "session_id": call.session_id,
        "tool_call_id": call.tool_call_id,
    }


def awaiting_person(verdict: dict[str, Any]) -> bool:
    return verdict["status"] == "pending" and not verdict.get("kill_switch")


class IncidentDeskMiddleware(AgentMiddleware):
    """Proposes each guarded tool call to IncidentDesk; runs it only when allowed or approved.

    `desk` is a `Desk` (blocking: `invoke`, `stream`) or an `AsyncDesk` (`ainvoke`, `astream`;
    use it on its own event loop). `session_id` names the desk session the calls are recorded
    in; by default it is the graph's thread id, or one id per middleware when there is none.
    `tools` limits the guard to those tools (names or tools; the others run unguarded), and
    `verbs` gives the verb of tools the domain's registry does not know.

    Put it before retry middleware in `create_agent(middleware=[...])`, so that retries of the
    tool happen inside one approved action. A run that must survive a restart while a person
    decides wants IncidentDeskInterruptMiddleware: this one waits in the process, and records
    each call as a reasoning step that only this process knows the place of.
    """

    # Each tool call is recorded as a reasoning step that led to its action. A proposal made
    # again carries the same step, so a retry in this process is the same action.
    record_steps = True

    def __init__(
        self,
        desk: Desk | AsyncDesk,
        *,
        session_id: str | None = None,
        tools: Iterable[Any] | None = None,
        verbs: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.desk = desk
        self.session_id = session_id
        # Not `self.tools`: create_agent reads that as tools the middleware adds.
        self.guarded = None if tools is None else {getattr(t, "name", t) for t in tools}
        self.verbs = dict(verbs or {})
        self.fallback_session = f"langchain-{uuid.uuid4().hex[:12]}"
        self._sessions: dict[str, Any] = {}
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()

    # What a call is

    def guarded_call(self, request: ToolCallRequest) -> GuardedCall | None:
        tool_call = request.tool_call
        tool = tool_call["name"]
        if self.guarded is not None and tool not in self.guarded:
            return None
        session_id = self.session_id or self.thread_session(request)
        tool_call_id = tool_call.get("id") or ""
        key = call_key(session_id, tool_call_id) if tool_call_id else uuid.uuid4().hex
        return GuardedCall(
            tool=tool,
            params=dict(tool_call["args"]),
            verb=self.verbs.get(tool),
            session_id=session_id,
            key=key,
            tool_call_id=tool_call_id,
        )

    def thread_session(self, request: ToolCallRequest) -> str:
        runtime = request.runtime
        config = getattr(runtime, "config", None) or {}
        thread_id = config.get("configurable", {}).get("thread_id")
        return self.fallback_session if thread_id is None else session_name(thread_id)

    def session(self, session_id: str) -> Any:
        with self._lock:
            if session_id not in self._sessions:
                self._sessions[session_id] = self.desk.session(session_id)
            return self._sessions[session_id]

    # The blocking desk

    def wrap_tool_call(self, request: ToolCallRequest, handler: Handler) -> Outcome:
        call = self.guarded_call(request)
        if call is None:
            return handler(request)
        if not isinstance(self.desk, Desk):
            raise TypeError("an AsyncDesk guards ainvoke/astream runs; give a Desk for invoke")
        try:
            proposal = self.open(call)
        except DeskError as error:
            if refused(error):
                return refusal(request, call, error)
            raise
        try:
            outcome = handler(with_params(request, proposal.params))
        except GraphBubbleUp:
            raise
        except Exception as error:
            proposal.failed(error, None)
            raise
        report(proposal, outcome, call)
        return outcome

    def open(self, call: GuardedCall) -> Proposal:
        """Propose the call and come back when it may run, or raise why it may not."""
        desk = cast(Desk, self.desk)
        desk.check_kill_switches()
        index = self.step(call)
        verdict = desk.propose(call.body(index), idempotency_key=call.key)
        proposal = Proposal(desk, call.label, call.key, verdict)
        self.decide(call, proposal)
        return proposal

    def step(self, call: GuardedCall) -> int | None:
        if not self.record_steps:
            return None
        if call.key not in self._steps:
            session: Session = self.session(call.session_id)
            self._steps[call.key] = session.step("tool_call", call.label, params=call.params)
        return self._steps[call.key]

    def decide(self, call: GuardedCall, proposal: Proposal) -> None:
        proposal.wait()

    # The async desk

    async def awrap_tool_call(self, request: ToolCallRequest, handler: AsyncHandler) -> Outcome:
        call = self.guarded_call(request)
        if call is None:
            return await handler(request)
        blocking = isinstance(self.desk, Desk)
        try:
            if blocking:
                proposal: Any = await asyncio.to_thread(self.open, call)
            else:
                proposal = await self.aopen(call)
        except DeskError as error:
            if refused(error):
                return refusal(request, call, error)
            raise
        try:
            outcome = await handler(with_params(request, proposal.params))
        except GraphBubbleUp:
            raise
        except Exception as error:
            if blocking:
                await asyncio.to_thread(proposal.failed, error, None)
            else:
                await proposal.failed(error, None)
            raise
        if blocking:
            await asyncio.to_thread(report, proposal, outcome, call)
        else:
            await areport(proposal, outcome, call)
        return outcome

    async def aopen(self, call: GuardedCall) -> AsyncProposal:
        desk = cast(AsyncDesk, self.desk)
        await desk.check_kill_switches()
        index = await self.astep(call)
        verdict = await desk.propose(call.body(index), idempotency_key=call.key)
        proposal = AsyncProposal(desk, call.label, call.key, verdict)
        await self.adecide(call, proposal)
        return proposal

    async def astep(self, call: GuardedCall) -> int | None:
        if not self.record_steps:
            return None
        if call.key not in self._steps:
            session: AsyncSession = self.session(call.session_id)
            self._steps[call.key] = await session.step("tool_call", call.label, params=call.params)
        return self._steps[call.key]

    async def adecide(self, call: GuardedCall, proposal: AsyncProposal) -> None:
        await proposal.wait()


class IncidentDeskInterruptMiddleware(IncidentDeskMiddleware):
    """IncidentDeskMiddleware for durable graphs: while a person decides, the graph stops.

    When the desk holds a call for a person, the middleware calls LangGraph's `interrupt()`
    with the pending action (`action_id`, `tool`, `params`, `rule`, `reason`, ...) instead of
    waiting, and the run returns with it under `__interrupt__`. Resume the thread with
    `Command(resume=...)` (any value: the desk's verdict decides, not the value) once the action
    is decided on the desk, in this process or another one: the tool node runs again from its
    start, proposes the same call again under the same key (made of the session id, by default
    the thread id, and the tool call's id), which is the same action, reads its verdict and runs
    the tool or tells the model why not. Resumed while still undecided, it interrupts again.
    With several calls held at once, resume them all by interrupt id:
    `Command(resume={i.id: True for i in result["__interrupt__"]})`.

    Needs a checkpointer and a thread id. The tool call is not recorded as a reasoning step: a
    proposal made again from another process must be the very same request.
    """

    record_steps = False

    def decide(self, call: GuardedCall, proposal: Proposal) -> None:
        while awaiting_person(proposal.verdict):
            interrupt(pending_action(call, proposal.verdict))
            proposal.verdict = proposal.desk.verdict(proposal.id)
        proposal.wait()

    async def adecide(self, call: GuardedCall, proposal: AsyncProposal) -> None:
        while awaiting_person(proposal.verdict):
            interrupt(pending_action(call, proposal.verdict))
            proposal.verdict = await proposal.desk.verdict(proposal.id)
        await proposal.wait()


def with_params(request: ToolCallRequest, params: dict[str, Any]) -> ToolCallRequest:
    """The request with the params the desk returned: an operator's, if they modified them."""
    if params == request.tool_call["args"]:
        return request
    return request.override(tool_call={**request.tool_call, "args": params})


def failure_of(outcome: Outcome, call: GuardedCall) -> tuple[ToolMessage | None, str | None]:
    """The tool's answer, and its error text when the tool node turned a failure into one."""
    message = tool_message(outcome, call.tool_call_id)
    if message is not None and message.status == "error":
        return message, str(message.content)
    return message, None


def report(proposal: Proposal, outcome: Outcome, call: GuardedCall) -> None:
    message, error = failure_of(outcome, call)
    if error is None:
        proposal.succeeded(result_of(message), None)
        return
    try:
        proposal.report(False, error=error)
    except DeskError as report_error:
        log.error("could not report %s failing: %s", call.label, report_error)


async def areport(proposal: AsyncProposal, outcome: Outcome, call: GuardedCall) -> None:
    message, error = failure_of(outcome, call)
    if error is None:
        await proposal.succeeded(result_of(message), None)
        return
    try:
        await proposal.report(False, error=error)
    except DeskError as report_error:
        log.error("could not report %s failing: %s", call.label, report_error)
