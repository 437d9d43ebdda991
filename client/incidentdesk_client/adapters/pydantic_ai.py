"""IncidentDesk for pydantic-ai: every tool call of a toolset asks the desk first.

    from incidentdesk_client import AsyncDesk
    from incidentdesk_client.adapters.pydantic_ai import IncidentDeskToolset

    async with AsyncDesk(url, token) as desk:
        agent = Agent(model, toolsets=[IncidentDeskToolset(tools, desk, session_id="restock-1")])
        await agent.run("Restock the A100s.")

The toolset proposes each call (the tool's name, its validated arguments as params, an
Idempotency-Key made of the run's id and the tool call's id), waits for the verdict, runs the
wrapped tool with the params the desk returns (an operator's when they modified them) and reports
the result or the failure. A call the desk refuses never runs: the model gets a failed tool result
(`ToolFailed`) that names the rule, and the run goes on. `IncidentDeskCapability` does the same for
all of an agent's tools at once.

Requires pydantic-ai-slim 2.68 or later (`pip install "incidentdesk-client[pydantic-ai]"`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic import ValidationError
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ToolFailed
from pydantic_ai.messages import ToolReturn
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool, WrapperToolset

from incidentdesk_client.aio import AsyncDesk, AsyncProposal, AsyncSession
from incidentdesk_client.errors import (
    REFUSALS,
    DeskError,
    DeskUnavailable,
    KillSwitchEngaged,
)

__all__ = ["IncidentDeskCapability", "IncidentDeskToolset", "REFUSALS"]


log = logging.getLogger("incidentdesk_client")

MAX_KEY = 255
MAX_SESSIONS = 100


@dataclass
class IncidentDeskToolset(WrapperToolset[AgentDepsT]):
    """Wraps a toolset (function tools, an MCP server, any other) so that each of its tool calls
    is proposed to the desk and runs only when allowed or approved.

    `session_id` names the desk session the calls are recorded in (by default each agent run is
    its own session, named by its run id). `tools` limits the guard to those tool names (the
    others run unguarded); `verbs` gives the verb of tools the domain's registry does not know.
    Use it on the event loop of `desk`.
    """

    desk: AsyncDesk
    session_id: str | None = None
    tools: Collection[str] | None = None
    verbs: Mapping[str, str] | None = None
    _sessions: OrderedDict[str, AsyncSession] = field(
        default_factory=OrderedDict, init=False, repr=False
    )

    def guards(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    async def call_tool(
        self,
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[AgentDepsT],
        tool: ToolsetTool[AgentDepsT],
    ) -> Any:
        if not self.guards(name):
            return await super().call_tool(name, tool_args, ctx, tool)
        params = as_params(tool_args)
        try:
            proposal = await self.propose(name, params, ctx)
            granted = await proposal.wait() if proposal else params
        except REFUSALS as refusal:
            raise ToolFailed(refusal_message(name, refusal)) from refusal
        if proposal is None:
            return await super().call_tool(name, tool_args, ctx, tool)
        try:
            args = tool_args if granted == params else operators_args(name, granted, ctx, tool)
            result = await super().call_tool(name, args, ctx, tool)
        except (ApprovalRequired, CallDeferred):
            raise  # not run: deferred to pydantic-ai's own flow, nothing to report yet
        except Exception as error:
            await proposal.failed(error, None)
            raise
        await proposal.succeeded(reportable(result), None)
        return result

    async def propose(
        self, name: str, params: dict[str, Any], ctx: RunContext[AgentDepsT]
    ) -> AsyncProposal | None:
        """Propose one call, recorded as a step of the run's session. None: the desk is
        unreachable and the tool is a read that `desk.fail_open_reads` lets run unchecked."""
        verb = (self.verbs or {}).get(name)
        session = self.session_for(ctx)
        try:
            return await session.propose(name, params, verb=verb, key=call_key(ctx))
        except DeskUnavailable:
            if verb != "read" or not self.desk.fail_open_reads:
                raise
            log.warning("desk unreachable; running read-only %s unchecked", name)
            return None

    def session_for(self, ctx: RunContext[AgentDepsT]) -> AsyncSession:
        """The desk session of a run: one object per session, so that the calls the model makes
        at once take turns recording their steps. Sessions of runs long finished are forgotten
        (the desk keeps them)."""
        session_id = self.session_id or ctx.run_id or ""
        if session_id not in self._sessions:
            self._sessions[session_id] = self.desk.session(session_id or None)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        return self._sessions[session_id]


@dataclass
class IncidentDeskCapability(AbstractCapability[AgentDepsT]):
    """Guards every tool of an agent, its own function tools and its toolsets (MCP servers
    included), with an IncidentDeskToolset around the toolset the agent assembles for each run.

        agent = Agent(model, tools=[create_order], capabilities=[IncidentDeskCapability(desk)])
    """

    desk: AsyncDesk
    session_id: str | None = None
    tools: Collection[str] | None = None
    verbs: Mapping[str, str] | None = None

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live desk connection: not for agent specs

    def get_wrapper_toolset(
        self, toolset: AbstractToolset[AgentDepsT]
    ) -> AbstractToolset[AgentDepsT]:
        return IncidentDeskToolset(
            toolset, self.desk, session_id=self.session_id, tools=self.tools, verbs=self.verbs
        )


def call_key(ctx: RunContext[Any]) -> str | None:
    """The Idempotency-Key of a call: the same run's same tool call proposes the same action.
    Both ids are needed: some models number their tool calls anew in every run."""
    if not ctx.run_id or not ctx.tool_call_id:
        return None
    key = f"pydantic-ai:{ctx.run_id}:{ctx.tool_call_id}"
    if len(key) > MAX_KEY:
        key = "pydantic-ai:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def as_params(tool_args: dict[str, Any]) -> dict[str, Any]:
    """Validated arguments (dates, models, enums...) as the JSON the desk stores."""
    params = pydantic_core.to_jsonable_python(tool_args, fallback=str, bytes_mode="base64")
    return dict(params)


def operators_args(
    name: str, params: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
) -> dict[str, Any]:
    """The params an operator wrote, validated as the tool's own arguments are."""
    try:
        args = tool.args_validator.validate_python(params, context=ctx.validation_context)
    except ValidationError as error:
        raise ToolFailed(
            f"{name} was approved with changed arguments that do not fit the tool: {error}"
        ) from error
    return dict(args)


def reportable(result: Any) -> Any:
    """A tool's return value as the desk can store it."""
    if isinstance(result, ToolReturn):
        result = result.return_value
    try:
        return pydantic_core.to_jsonable_python(result, fallback=repr, bytes_mode="base64")
    except (TypeError, ValueError, pydantic_core.PydanticSerializationError):
        return repr(result)


def refusal_message(name: str, refusal: DeskError) -> str:
    """What the model is told: the call did not run, under which rule, and why. A kill switch
    names itself: the rule that held the call for a person is not why it stopped."""
    stopped = isinstance(refusal, KillSwitchEngaged)
    rule = f" (rule {refusal.rule})" if refusal.rule and not stopped else ""
    return f"IncidentDesk did not let {name} run{rule}: {refusal}"
