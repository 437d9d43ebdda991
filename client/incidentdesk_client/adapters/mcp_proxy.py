"""An MCP server in front of another one: every tool call goes to IncidentDesk first.

An MCP host launches the proxy over stdio, as it would launch the server itself; the proxy
starts (or connects to) the real server and lists its tools unchanged. Each `tools/call` is
proposed to the desk, waits for the verdict, runs upstream with the desk's arguments (an
operator's, if they modified them), and is reported back. A call the desk does not let run
comes back as a tool error that names the rule and the reason; the upstream never sees it.

    incidentdesk-mcp-proxy --upstream-command "python server.py"
    incidentdesk-mcp-proxy --upstream-url http://127.0.0.1:8000/mcp

The desk is INCIDENTDESK_URL, the agent token INCIDENTDESK_TOKEN (or a file named by
INCIDENTDESK_TOKEN_FILE, read again on each call so a rotated token takes effect at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shlex
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Union

import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from incidentdesk_client.aio import AsyncDesk, AsyncProposal, AsyncSession
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
    Unauthorized,
)
from incidentdesk_client.verdicts import jsonable, proposal_body

log = logging.getLogger("incidentdesk_client.mcp_proxy")

Upstream = Union[str, StdioServerParameters]
Progress = Callable[[float, str], Awaitable[None]]

NAME = "incidentdesk-mcp-proxy"
DESK_SETTINGS = "INCIDENTDESK_"  # not passed on to an upstream the proxy launches
VERBS = ("read", "create", "update", "delete", "spend", "execute")
ERROR_MAX = 10_000  # the desk keeps this much of a failure's message
REMEMBERED_CALLS = 256
PROGRESS_EVERY = 10.0  # seconds between progress notes while a call waits for a person

STOPPED = (
    (ActionDenied, "the desk's policy denied it"),
    (ActionRejected, "an operator rejected it"),
    (ActionExpired, "nobody decided in time"),
    (ActionCancelled, "it was cancelled after it was approved"),
    (KillSwitchEngaged, "a kill switch is engaged"),
    (OutOfScope, "the agent's token does not cover it"),
    (Unauthorized, "the desk refused the agent's token"),
    (DeskUnavailable, "the desk could not be reached, so nothing ran"),
    (InvalidRequest, "the desk refused the request"),
)


def annotated_verb(tool: types.Tool | None, default: str) -> str:
    """The verb a tool's annotations suggest, for a tool the domain's registry does not know:
    read-only is read, destructive is delete, anything else `default`."""
    hints = tool.annotations if tool is not None else None
    if hints is not None and hints.read_only_hint:
        return "read"
    if hints is not None and hints.destructive_hint:
        return "delete"
    return default


def refusal(tool: str, stop: DeskError) -> types.CallToolResult:
    """The tool error a host sees for a call the desk did not let run."""
    why = next((text for kind, text in STOPPED if isinstance(stop, kind)), "the desk stopped it")
    rule = stop.rule or "none"
    switch = stop.verdict.get("kill_switch")
    if isinstance(stop, KillSwitchEngaged) and isinstance(switch, dict):
        rule = f"kill switch {switch.get('scope')} (engaged by {switch.get('changed_by')})"
    reason = stop.reason.rstrip(".")
    action = f" Action: {stop.action_id}." if stop.action_id else ""
    text = f"IncidentDesk did not run {tool}: {why}. Rule: {rule}. Reason: {reason}.{action}"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def failure(tool: str, error: BaseException) -> types.CallToolResult:
    text = f"{tool} failed upstream: {error}"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def text_of(result: types.CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    return "\n".join(texts)[:ERROR_MAX]


def reported(result: types.CallToolResult) -> Any:
    """What the desk keeps of a tool's result: its structured content, or its text (other
    blocks by their type only)."""
    if result.structured_content is not None:
        return jsonable(result.structured_content)
    return [
        block.text if isinstance(block, types.TextContent) else {"type": block.type}
        for block in result.content
    ]


def own_stamp(result: types.CallToolResult) -> types.CallToolResult:
    """The upstream's result as the proxy's: without the upstream's server identity."""
    stamp = types.SERVER_INFO_META_KEY
    if not result.meta or stamp not in result.meta:
        return result
    meta = {key: value for key, value in result.meta.items() if key != stamp}
    return result.model_copy(update={"meta": meta or None})


class DeskProxy:
    """The tools of one upstream MCP server, each call asked of the desk first.

    `upstream` is a connected `mcp.Client`. A call's Idempotency-Key comes from its JSON-RPC
    request id (with the tool and arguments, and this proxy's run), so a request sent again
    is the same action: it is answered with the first one's result and runs upstream once.
    """

    def __init__(
        self,
        session: AsyncSession,
        upstream: Client,
        *,
        default_verb: str = "execute",
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if default_verb not in VERBS:
            raise ValueError(f"default_verb must be one of {', '.join(VERBS)}")
        self.session = session
        self.desk: AsyncDesk = session.desk
        self.upstream = upstream
        self.default_verb = default_verb
        self.token_file = Path(token_file) if token_file is not None else None
        self.run_id = uuid.uuid4().hex
        self.tools: dict[str, types.Tool] = {}
        self.unregistered: set[str] = set()  # tools the domain's registry turned out not to know
        self._calls: OrderedDict[str, asyncio.Task[types.CallToolResult]] = OrderedDict()

    # What the host sees

    async def list_tools(self, cursor: str | None = None) -> types.ListToolsResult:
        page = await self.upstream.list_tools(cursor=cursor)
        self.tools.update((tool.name, tool) for tool in page.tools)
        return types.ListToolsResult(tools=page.tools, next_cursor=page.next_cursor)

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        request_id: Any = None,
        progress: Progress | None = None,
    ) -> types.CallToolResult:
        """Run one call through the desk. While it waits for a person, `progress(seconds,
        message)` is called every PROGRESS_EVERY seconds (a host may count it as a sign of
        life)."""
        key = self.key(name, arguments, request_id)
        call = self._calls.get(key)
        if call is None:
            call = asyncio.ensure_future(self._guarded(name, arguments, key, progress))
            self._calls[key] = call
            while len(self._calls) > REMEMBERED_CALLS:
                self._calls.popitem(last=False)
        return await call

    def server(self, name: str = NAME, instructions: str | None = None) -> Server:
        """A low-level MCP server with this proxy's tools, to run on any transport."""

        async def on_list_tools(
            ctx: Any, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return await self.list_tools(params.cursor if params else None)

        async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
            async def progress(seconds: float, message: str) -> None:
                await ctx.session.report_progress(seconds, message=message)

            arguments = params.arguments or {}
            return await self.call_tool(params.name, arguments, ctx.request_id, progress)

        return Server(
            name,
            instructions=instructions,
            on_list_tools=on_list_tools,
            on_call_tool=on_call_tool,
        )

    # One call

    def key(self, name: str, arguments: dict[str, Any], request_id: Any) -> str:
        if request_id is None:
            return f"mcp-{uuid.uuid4().hex}"
        call = json.dumps([self.run_id, str(request_id), name, arguments], sort_keys=True)
        return f"mcp-{hashlib.sha256(call.encode()).hexdigest()[:40]}"

    async def _guarded(
        self, name: str, arguments: dict[str, Any], key: str, progress: Progress | None
    ) -> types.CallToolResult:
        try:
            self._read_token()
            proposal = await self.propose(name, arguments, key)
            params = await self._wait(proposal, progress)
        except DeskError as stop:
            log.info("%s not run: %s", name, stop)
            return refusal(name, stop)
        try:
            result = await self.upstream.call_tool(name, params)
        except Exception as error:
            await self._report(proposal, ok=False, error=repr(error)[:ERROR_MAX])
            return failure(name, error)
        if result.is_error:
            await self._report(proposal, ok=False, result=reported(result), error=text_of(result))
        else:
            await self._report(proposal, ok=True, result=reported(result))
        return own_stamp(result)

    async def propose(self, name: str, arguments: dict[str, Any], key: str) -> AsyncProposal:
        """Propose the call as one reasoning step. The verb is the registry's if the domain
        registered the tool (none is sent), else the one its annotations suggest; which of
        the two applies is learnt from the desk's answer and remembered."""
        await self.desk.check_kill_switches()
        if name not in self.tools:
            await self._find(name)
        index = await self.session.step("tool_call", name, params=arguments)
        suggested = annotated_verb(self.tools.get(name), self.default_verb)
        verbs: list[str | None] = [None, suggested]
        if name in self.unregistered:
            verbs.reverse()
        for attempt, verb in enumerate(verbs):
            body = proposal_body(
                session_id=self.session.id,
                step_index=index,
                tool=name,
                verb=verb,
                params=arguments,
            )
            try:
                verdict = await self.desk.propose(body, idempotency_key=key)
            except InvalidRequest as refused:
                if attempt == 0 and about_verb(refused):
                    continue
                raise
            if verb is None:
                self.unregistered.discard(name)
            else:
                self.unregistered.add(name)
            return AsyncProposal(self.desk, f"{name}:{verb}" if verb else name, key, verdict)
        raise AssertionError("unreachable")

    async def _wait(self, proposal: AsyncProposal, progress: Progress | None) -> dict[str, Any]:
        """The params to run, once decided; meanwhile, progress notes say who it waits for."""
        if progress is None or proposal.status != "pending":
            return await proposal.wait()
        note = (
            f"waiting for a person at IncidentDesk to decide {proposal.label} "
            f"(action {proposal.id}, rule {proposal.verdict.get('rule')}: "
            f"{proposal.verdict.get('reason')})"
        )

        async def tell() -> None:
            started = time.monotonic()
            with contextlib.suppress(Exception):
                while True:
                    await progress(round(time.monotonic() - started, 1), note)
                    await asyncio.sleep(PROGRESS_EVERY)

        telling = asyncio.ensure_future(tell())
        try:
            return await proposal.wait()
        finally:
            telling.cancel()

    async def _find(self, name: str) -> None:
        """List the upstream's tools until `name` turns up (a host may call a tool it did not
        list through this proxy)."""
        cursor: str | None = None
        while True:
            page = await self.list_tools(cursor)
            cursor = page.next_cursor
            if name in self.tools or cursor is None:
                return

    async def _report(self, proposal: AsyncProposal, **outcome: Any) -> None:
        try:
            await proposal.report(**outcome)
        except DeskError as error:
            log.error("%s ran, but the desk did not take its report: %s", proposal.label, error)

    def _read_token(self) -> None:
        if self.token_file is None:
            return
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            unreadable = f"cannot read the agent token in {self.token_file}: {error}"
            raise Unauthorized(unreadable) from error
        if not token:
            raise Unauthorized(f"{self.token_file} holds no agent token")
        if token != self.desk.token:
            self.desk.token = token
            if self.desk.kill_switches is not None:
                self.desk.kill_switches.token = token


def about_verb(refused: InvalidRequest) -> bool:
    """Whether the desk refused a proposal for its verb alone: none was given for a tool the
    registry does not know, or one was given that the registry contradicts."""
    errors = refused.problem.get("errors") or []
    return any(isinstance(error, dict) and error.get("field") == "verb" for error in errors)


def upstream_of(command: str | None = None, url: str | None = None) -> Upstream:
    """The upstream server: a command to launch over stdio (it gets this process's environment
    without the desk's INCIDENTDESK_* settings), or a streamable HTTP URL."""
    if (command is None) == (url is None):
        raise ValueError("give the upstream server's command or its URL, not both")
    if url is not None:
        return url
    program, *args = shlex.split(command or "")
    env = {name: value for name, value in os.environ.items() if not name.startswith(DESK_SETTINGS)}
    return StdioServerParameters(command=program, args=args, env=env)


async def serve(
    upstream: Upstream,
    *,
    url: str,
    token: str,
    session_id: str | None = None,
    default_verb: str = "execute",
    token_file: str | os.PathLike[str] | None = None,
    poll_wait: int = 25,
    max_wait: float | None = None,
) -> None:
    """Serve the upstream's tools over this process's stdin and stdout until the host
    closes them."""
    desk = AsyncDesk(url, token, poll_wait=poll_wait, max_wait=max_wait)
    client = Client(upstream, cache=None)
    async with desk, client:
        session = desk.session(session_id or f"mcp-{uuid.uuid4().hex[:12]}")
        proxy = DeskProxy(session, client, default_verb=default_verb, token_file=token_file)
        server = proxy.server(instructions=client.instructions)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=NAME,
        description="Serve an MCP server's tools over stdio, asking IncidentDesk before each call.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream-command", help='the server to launch, e.g. "python server.py"')
    where.add_argument("--upstream-url", help="a streamable HTTP server, e.g. http://host/mcp")
    parser.add_argument("--url", default=os.environ.get("INCIDENTDESK_URL"), help="the desk")
    parser.add_argument(
        "--token",
        default=os.environ.get("INCIDENTDESK_TOKEN"),
        help="the agent token (INCIDENTDESK_TOKEN keeps it out of the process list)",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("INCIDENTDESK_TOKEN_FILE"),
        help="read the agent token from this file, again on each call (over --token)",
    )
    parser.add_argument(
        "--session",
        default=os.environ.get("INCIDENTDESK_SESSION"),
        help="the session id the calls are recorded under (default: a new one per start)",
    )
    parser.add_argument(
        "--default-verb",
        choices=VERBS,
        default="execute",
        help="the verb of an unregistered tool whose annotations say neither read-only nor "
        "destructive (default: execute)",
    )
    parser.add_argument("--poll-wait", type=int, default=25, help="seconds per long-poll")
    parser.add_argument(
        "--max-wait", type=float, default=None, help="seconds to wait for a person at most"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("the desk's URL is needed: --url or INCIDENTDESK_URL")
    if args.upstream_command is not None and not shlex.split(args.upstream_command):
        parser.error("--upstream-command is empty")
    if args.token_file:
        try:
            args.token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            parser.error(f"cannot read --token-file: {error}")
    if not args.token:
        parser.error("an agent token is needed: --token, --token-file or INCIDENTDESK_TOKEN")
    return args


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())
    upstream = upstream_of(args.upstream_command, args.upstream_url)
    try:
        asyncio.run(
            serve(
                upstream,
                url=args.url,
                token=args.token,
                session_id=args.session,
                default_verb=args.default_verb,
                token_file=args.token_file,
                poll_wait=args.poll_wait,
                max_wait=args.max_wait,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
