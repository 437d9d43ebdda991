"""IncidentDesk for the OpenAI Agents SDK: every call of a guarded tool is asked of the desk first.

    from incidentdesk_client import AsyncDesk
    from incidentdesk_client.adapters.openai_agents import guard_tools

    async with AsyncDesk(url, token) as desk:
        agent = Agent(name="buyer", tools=guard_tools([create_order], desk.session("restock-1")))
        result = await Runner.run(agent, "Restock the A100s.")

A guarded tool keeps its name, description and parameter schema (without an `idempotency_key`
parameter: the desk fills it in). When the model calls it, the call is proposed to the desk and
runs only once allowed or approved, with the operator's params if they modified them; its
result or failure is reported. A refusal (denied, rejected, expired, cancelled, a kill switch,
a tool outside the token's scopes) becomes the tool's output, telling the model why, and the
tool does not run. A desk that cannot be reached stops the run (fail closed).

For tools declared with `needs_approval`, `resolve_interruptions(result)` answers the run's
approval requests with the desk's verdicts and resumes the run until none are left.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from agents import Agent, FunctionTool, Runner, RunResult, ToolApprovalItem, ToolTimeoutError
from agents.tool import (
    default_tool_timeout_error_message,
    invoke_function_tool,
    maybe_invoke_function_tool_failure_error_function,
    set_function_tool_failure_error_function,
)
from agents.tool_context import ToolContext

from incidentdesk_client.aio import AsyncDesk, AsyncProposal, AsyncSession
from incidentdesk_client.errors import (
    REFUSALS,
    ActionCancelled,
    ActionDenied,
    ActionExpired,
    ActionRejected,
    DeskError,
    KillSwitchEngaged,
    OutOfScope,
)
from incidentdesk_client.guarding import KEY, Hooks

__all__ = ["guard_tools", "guarded", "refusal", "resolve_interruptions"]

REFUSED = {
    ActionDenied: "denied by the policy",
    ActionRejected: "rejected by an operator",
    ActionExpired: "not decided in time",
    ActionCancelled: "cancelled",
    KillSwitchEngaged: "stopped by a kill switch",
    OutOfScope: "outside this agent's scopes",
}

# Proposals of one session go out one at a time: the SDK runs a response's tool calls
# concurrently, and each proposal takes the session's next reasoning step.
_proposing: weakref.WeakKeyDictionary[AsyncSession, asyncio.Lock] = weakref.WeakKeyDictionary()


def _object(arguments: str | None) -> dict[str, Any] | None:
    """A call's arguments, if they are a JSON object."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def refusal(tool: str, error: DeskError) -> str:
    """What the model is told when the desk refused a call of `tool`."""
    what = next(text for kind, text in REFUSED.items() if isinstance(error, kind))
    switch = error.verdict.get("kill_switch") or {}
    rule = error.rule or (f"kill switch {switch['scope']}" if switch.get("scope") else "")
    by = error.verdict.get("decided_by")
    if by and isinstance(error, ActionRejected):
        what = f"rejected by {by}"
    named = f" (rule: {rule})" if rule else ""
    return (
        f"IncidentDesk refused {tool}: {what}{named}. Reason: {error.reason}. "
        "The tool did not run; do not retry the same call."
    )


class DeskTool:
    """The invoker of a guarded tool: propose, wait, run the original tool, report."""

    def __init__(
        self, tool: FunctionTool, session: AsyncSession, verb: str | None, hooks: Hooks
    ) -> None:
        self.name = tool.name
        self.original = tool
        self.session, self.verb, self.hooks = session, verb, hooks
        properties = tool.params_json_schema.get("properties", {})
        self.takes_key = KEY in properties
        self.defaults = {
            name: spec["default"]
            for name, spec in properties.items()
            if name != KEY and isinstance(spec, dict) and "default" in spec
        }
        # The original without its failure handling: a failure reaches the guard, which
        # reports it, then tells the model what the original would have.
        self.inner = copy.copy(tool)
        set_function_tool_failure_error_function(self.inner, None)
        if tool.timeout_seconds is not None:
            self.inner.timeout_behavior = "raise_exception"
        # Calls already decided by resolve_interruptions, by tool call id.
        self.decided: dict[str, AsyncProposal] = {}

    def key(self, call_id: str) -> str:
        """The Idempotency-Key of a tool call: the same call proposed again is the same action."""
        key = f"{self.session.id}:{call_id}"
        return key if len(key) <= 255 else hashlib.sha256(key.encode()).hexdigest()

    def params(self, arguments: str | None) -> dict[str, Any] | None:
        """The params of a call as the tool would get them (defaults filled in), without a key."""
        params = _object(arguments)
        if params is None:
            return None
        params.pop(KEY, None)
        for name, default in self.defaults.items():
            params.setdefault(name, copy.deepcopy(default))
        return params

    def unreadable(self) -> str:
        return f"{self.name} did not run: its arguments are not a JSON object."

    async def decide(self, call_id: str, params: dict[str, Any]) -> AsyncProposal:
        """Propose the call and wait for the desk's decision; raises the DeskError that stops
        it."""
        lock = _proposing.setdefault(self.session, asyncio.Lock())
        async with lock:
            proposal = await self.session.propose(
                self.name,
                params,
                verb=self.verb,
                key=self.key(call_id),
                **self.hooks.proposal(params),
            )
        await proposal.wait()
        return proposal

    async def __call__(self, ctx: ToolContext[Any], arguments: str) -> Any:
        params = self.params(arguments)
        if params is None:
            return self.unreadable()
        call_id = ctx.tool_call_id or uuid.uuid4().hex
        try:
            proposal = self.decided.pop(call_id, None)
            if proposal is None:
                proposal = await self.decide(call_id, params)
            else:  # approved through the run's interruption: still so now?
                proposal.verdict = await self.session.desk.verdict(proposal.id)
                await proposal.wait()
        except REFUSALS as refused:
            return refusal(self.name, refused)
        return await self.run(ctx, proposal)

    async def run(self, ctx: ToolContext[Any], proposal: AsyncProposal) -> Any:
        """Run the original tool with the desk's params (and key), and report the outcome."""
        params = proposal.params
        arguments = {**params, KEY: proposal.key} if self.takes_key else params
        context, serialized = ctx, ctx.tool_arguments
        if arguments != _object(ctx.tool_arguments):  # the tool sees the arguments it runs with
            serialized = json.dumps(arguments)
            context = ToolContext.from_agent_context(
                ctx,
                ctx.tool_call_id,
                ctx.tool_call,
                tool_name=ctx.tool_name,
                tool_arguments=serialized,
                tool_namespace=ctx.tool_namespace,
            )
        try:
            result = await invoke_function_tool(
                function_tool=self.inner, context=context, arguments=serialized
            )
        except Exception as error:
            await proposal.failed(error, self.hooks.after_failure(params))
            told = await self.told_of_failure(ctx, error)
            if told is None:
                raise
            return told
        await proposal.succeeded(result, self.hooks.after(result, params))
        return result

    async def told_of_failure(self, ctx: ToolContext[Any], error: Exception) -> Any:
        """What the original tool would have told the model of this failure (None: it would
        have raised)."""
        tool = self.original
        if isinstance(error, ToolTimeoutError):
            if tool.timeout_behavior == "raise_exception":
                return None
            if tool.timeout_error_function is None:
                return default_tool_timeout_error_message(
                    tool_name=tool.name, timeout_seconds=error.timeout_seconds
                )
            told = tool.timeout_error_function(ctx, error)
            return await told if inspect.isawaitable(told) else told
        return await maybe_invoke_function_tool_failure_error_function(
            function_tool=tool, context=ctx, error=error
        )


def _session(session_or_desk: AsyncSession | AsyncDesk) -> AsyncSession:
    if isinstance(session_or_desk, AsyncSession):
        return session_or_desk
    if isinstance(session_or_desk, AsyncDesk):
        return session_or_desk.session()
    raise TypeError(
        "guard Agents SDK tools with an AsyncDesk or AsyncSession: the SDK runs tools on an "
        f"event loop (got {type(session_or_desk).__name__})"
    )


def guarded(
    tool: FunctionTool,
    session_or_desk: AsyncSession | AsyncDesk,
    *,
    verb: str | None = None,
    snapshot: Callable[..., Any] | None = None,
    targets: Callable[..., Any] | None = None,
    amount: Callable[..., Any] | None = None,
    blast_radius: Callable[..., Any] | None = None,
    compensation: Callable[..., Any] | None = None,
    post_state: Callable[[Any], Any] | None = None,
) -> FunctionTool:
    """The tool, asking the desk before each call.

    `verb` may be left out for a tool in the domain's registry. The hooks are as for
    `Session.guard`: functions of the call's params by name (`post_state` of the result).
    Given a desk rather than a session, the tool's calls go into a session of their own.
    """
    if not isinstance(tool, FunctionTool):
        raise TypeError(f"only function tools can be guarded, not {type(tool).__name__}")
    if isinstance(tool.on_invoke_tool, DeskTool):
        raise ValueError(f"{tool.name} is guarded already")
    hooks = Hooks(snapshot, targets, amount, blast_radius, compensation, post_state)
    wrapped = copy.copy(tool)
    wrapped.on_invoke_tool = DeskTool(tool, _session(session_or_desk), verb, hooks)
    wrapped.timeout_seconds = None  # waiting for a person is not the tool's time
    schema = copy.deepcopy(tool.params_json_schema)
    if KEY in schema.get("properties", {}):
        del schema["properties"][KEY]
        schema["required"] = [name for name in schema.get("required", []) if name != KEY]
    wrapped.params_json_schema = schema
    return wrapped


def guard_tools(
    tools: Iterable[FunctionTool],
    session_or_desk: AsyncSession | AsyncDesk,
    *,
    verbs: Mapping[str, str] | None = None,
) -> list[FunctionTool]:
    """Each tool guarded, all in one session; `verbs` by tool name for tools the domain's
    registry does not know."""
    session = _session(session_or_desk)
    verbs = verbs or {}
    return [guarded(tool, session, verb=verbs.get(tool.name)) for tool in tools]


def _desk_tool(item: ToolApprovalItem) -> DeskTool:
    for tool in getattr(item.agent, "tools", []):
        if (
            isinstance(tool, FunctionTool)
            and tool.name == item.tool_name
            and isinstance(tool.on_invoke_tool, DeskTool)
        ):
            return tool.on_invoke_tool
    raise TypeError(
        f"{item.tool_name} asks for approval but is not guarded: wrap it with guarded() so the "
        "desk decides it and gets its outcome"
    )


async def resolve_interruptions(
    result: RunResult, *, agent: Agent[Any] | None = None, **run_options: Any
) -> RunResult:
    """Answer the run's tool approval requests with the desk's verdicts, resume, and repeat
    until the run asks for none.

    Each pending call is proposed to the desk and waited on; an allowed or approved call is
    approved in the run state (the guarded tool then runs it with the desk's params and reports
    its outcome, without proposing it again), a refused one is rejected with the desk's reason.
    `run_options` (context, max_turns, hooks, run_config...) go to each `Runner.run`.
    """
    while result.interruptions:
        state = result.to_state()
        for item in result.interruptions:
            desk_tool = _desk_tool(item)
            params = desk_tool.params(item.arguments)
            if params is None:
                state.reject(item, rejection_message=desk_tool.unreadable())
                continue
            call_id = item.call_id or uuid.uuid4().hex
            try:
                desk_tool.decided[call_id] = await desk_tool.decide(call_id, params)
            except REFUSALS as refused:
                state.reject(item, rejection_message=refusal(desk_tool.name, refused))
                continue
            state.approve(item)
        result = await Runner.run(agent or result.last_agent, state, **run_options)
    return result
