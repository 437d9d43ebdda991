"""The MCP proxy as a host runs it: a subprocess over stdio, in front of a real MCP server (over
stdio, and over streamable HTTP), against a running desk."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from incidentdesk_client import AsyncDesk
from incidentdesk_client.adapters.mcp_proxy import DeskProxy
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.types import CallToolResult

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.servers import free_port
from tests.test_client import ORDERS, decide_later

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = str(ROOT / "tests" / "mcp_upstream.py")


class Host:
    """An MCP host on an event loop of its own: it launches the proxy over stdio, as a desktop
    host would, and calls its tools for the test."""

    def __init__(self, server: StdioServerParameters) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop: asyncio.Event | None = None
        connected: concurrent.futures.Future[ClientSession] = concurrent.futures.Future()
        self.running = asyncio.run_coroutine_threadsafe(self._connect(server, connected), self.loop)
        self.session = connected.result(timeout=30)

    async def _connect(
        self, server: StdioServerParameters, connected: concurrent.futures.Future[ClientSession]
    ) -> None:
        self.stop = asyncio.Event()
        try:
            async with stdio_client(server) as (read_stream, write_stream):
                self.dispatcher = JSONRPCDispatcher(read_stream, write_stream)
                async with ClientSession(dispatcher=self.dispatcher) as session:
                    await session.initialize()
                    connected.set_result(session)
                    await self.stop.wait()
        except BaseException as error:
            if not connected.done():
                connected.set_exception(error)
            raise

    def run(self, work: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(
        self, tool: str, arguments: dict[str, Any], notes: list[str] | None = None
    ) -> concurrent.futures.Future[Any]:
        """Call a tool in the background; progress notes, if any, go to `notes`."""

        async def progress(done: float, total: float | None, message: str | None) -> None:
            if notes is not None:
                notes.append(message or "")

        call = self.session.call_tool(tool, arguments, progress_callback=progress)
        return asyncio.run_coroutine_threadsafe(call, self.loop)

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        return self.start(tool, arguments or {}).result(timeout=20)

    def send_again(self, request_id: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tools/call under a request id of the test's choosing, as a retrying host sends."""
        params = {"name": tool, "arguments": arguments}
        return self.run(
            self.dispatcher.send_raw_request("tools/call", params, {"request_id": request_id})
        )

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.running.result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def calls_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "upstream-calls.jsonl"


@pytest.fixture(scope="module")
def token_file(
    tmp_path_factory: pytest.TempPathFactory, desk: RunningDesk, django_db_blocker: Any
) -> Path:
    """The file the proxies read their agent token from. They start under a token of a domain
    no test stops; each test then puts them under an agent of its own (`agent`), since the
    desk's tables are emptied after every test."""
    path = tmp_path_factory.mktemp("mcp-token") / "token"
    with django_db_blocker.unblock():
        path.write_text(agent_token("mcp-host", "billing", "*:read"))
    return path


def proxy_server(
    desk: RunningDesk, token_file: Path, calls_file: Path, *upstream: str
) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "incidentdesk_client.adapters.mcp_proxy",
            *upstream,
            "--session",
            "mcp-tests",
            "--poll-wait",
            "1",
        ],
        env={
            "PYTHONPATH": str(ROOT / "client"),
            "INCIDENTDESK_URL": desk.url,
            "INCIDENTDESK_TOKEN_FILE": str(token_file),
            "MCP_UPSTREAM_CALLS": str(calls_file),
        },
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def host(desk: RunningDesk, token_file: Path, calls_file: Path) -> Iterator[Host]:
    """The proxy in front of the upstream over stdio."""
    command = f"{sys.executable} {UPSTREAM}"
    running = Host(proxy_server(desk, token_file, calls_file, "--upstream-command", command))
    yield running
    running.close()


@pytest.fixture(scope="module")
def http_host(desk: RunningDesk, token_file: Path, calls_file: Path) -> Iterator[Host]:
    """The proxy in front of the upstream over streamable HTTP."""
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, UPSTREAM, "--http", str(port)],
        env={**os.environ, "MCP_UPSTREAM_CALLS": str(calls_file)},
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if upstream.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/mcp"
        running = Host(proxy_server(desk, token_file, calls_file, "--upstream-url", url))
        yield running
        running.close()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


@pytest.fixture
def agent(token_file: Path, calls_file: Path) -> Callable[..., str]:
    """Put the proxy under a new agent's token (it reads the file on each call) and start the
    record of upstream calls afresh."""
    calls_file.write_text("")

    def use(name: str, domain: str, *scopes: str) -> str:
        token = agent_token(name, domain, *scopes)
        token_file.write_text(token)
        return token

    return use


def upstream_calls(calls_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in calls_file.read_text().splitlines()]


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def test_the_upstreams_tools_are_listed_unchanged(host: Host) -> None:
    from tests.mcp_upstream import server as upstream

    listed = host.run(host.session.list_tools())
    own = asyncio.run(upstream.list_tools())
    assert [tool.model_dump(exclude_none=True) for tool in listed.tools] == [
        tool.model_dump(exclude_none=True) for tool in own
    ]
    hints = {tool.name: tool.annotations for tool in listed.tools}
    assert hints["list_snapshots"].read_only_hint is True
    assert hints["delete_snapshot"].destructive_hint is True


def test_an_allowed_call_runs_upstream_once_and_is_reported(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-allowed", "procurement", *ORDERS)
    result = host.call("create_order", {"sku": "A100", "qty": 2, "unit_price": 90})
    assert not result.is_error
    assert result.structured_content["order_id"] == "PO-A100-2"
    assert upstream_calls(calls_file) == [
        {"tool": "create_order", "arguments": {"sku": "A100", "qty": 2, "unit_price": 90.0}}
    ]
    action = Action.objects.get()
    assert action.verb == "create" and action.rule == "allow-orders-under-cap"
    assert action.status == "succeeded" and action.result["order_id"] == "PO-A100-2"
    assert action.session.external_id == "mcp-tests" and action.step_index is not None


def test_a_request_sent_again_is_the_same_action(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-retry", "procurement", *ORDERS)
    order = {"sku": "A100", "qty": 1, "unit_price": 90}
    first = host.send_again("retry-7", "create_order", order)
    again = host.send_again("retry-7", "create_order", order)
    assert again == first and not first.get("isError")
    assert len(upstream_calls(calls_file)) == 1
    assert Action.objects.get().status == "succeeded"


def test_unregistered_tools_take_their_verb_from_their_annotations(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-verbs", "procurement", *ORDERS)  # procurement registers no snapshot tools
    operator = decide_later("approved", delay=0.1)  # the desk escalates unregistered tools
    listed = host.call("list_snapshots")
    operator.join()
    assert not listed.is_error and "snap-dev-7" in text(listed)
    action = Action.objects.get()
    assert action.tool == "list_snapshots" and action.verb == "read"
    assert action.rule == "unregistered-tool"
    refused = host.call("delete_snapshot", {"snapshot_id": "snap-dev-7"})
    assert refused.is_error
    assert "token does not cover it" in text(refused)
    assert "may not delete with delete_snapshot" in text(refused)
    assert [call["tool"] for call in upstream_calls(calls_file)] == ["list_snapshots"]


def test_a_held_call_says_so_then_runs_upstream_with_the_operators_arguments(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-modified", "procurement", *ORDERS)
    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90}, delay=0.1)
    notes: list[str] = []
    call = host.start("create_order", {"sku": "A100", "qty": 10, "unit_price": 90}, notes)
    result = call.result(timeout=20)
    operator.join()
    action = Action.objects.get()
    assert notes and f"action {action.pk}, rule spend-cap" in notes[0]
    assert not result.is_error and result.structured_content["qty"] == 3
    assert upstream_calls(calls_file) == [
        {"tool": "create_order", "arguments": {"sku": "A100", "qty": 3, "unit_price": 90.0}}
    ]
    assert action.status == "succeeded"


def test_a_denied_call_never_reaches_the_upstream(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("janitor-denied", "devops", "delete_snapshot:delete")
    result = host.call("delete_snapshot", {"snapshot_id": "snap-staging-critical-01"})
    assert result.is_error
    assert "policy denied it" in text(result) and "Rule: protected-targets" in text(result)
    assert "protected target" in text(result)
    assert upstream_calls(calls_file) == []
    assert Action.objects.get().status == "denied"


def test_a_rejected_call_never_reaches_the_upstream(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-rejected", "procurement", *ORDERS)
    operator = decide_later("rejected", delay=0.1)
    result = host.call("create_order", {"sku": "A100", "qty": 10, "unit_price": 90})
    operator.join()
    assert result.is_error
    assert "an operator rejected it" in text(result) and "Rule: spend-cap" in text(result)
    assert "decided in the test" in text(result)
    assert upstream_calls(calls_file) == []


def test_a_kill_switch_stops_a_call_waiting_for_its_decision(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-killed", "procurement", *ORDERS)
    call = host.start("create_order", {"sku": "A100", "qty": 10, "unit_price": 90})
    deadline = time.monotonic() + 10
    while not Action.objects.filter(status="escalated").exists():
        assert time.monotonic() < deadline and not call.done()
        time.sleep(0.05)
    stop = {"scope": "procurement", "actor": Actor.system("tests"), "reason": "runaway orders"}
    killswitch_set(engaged=True, **stop)
    try:
        result = call.result(timeout=10)
    finally:
        killswitch_set(engaged=False, **stop)
    assert result.is_error
    assert "kill switch is engaged" in text(result) and "kill switch procurement" in text(result)
    assert "runaway orders" in text(result)
    assert upstream_calls(calls_file) == []


def test_an_upstream_error_is_reported_to_the_desk_as_a_failure(
    host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-broken", "procurement", *ORDERS)
    result = host.call("create_order", {"sku": "BROKEN", "qty": 1, "unit_price": 90})
    assert result.is_error and "does not sell BROKEN" in text(result)
    assert len(upstream_calls(calls_file)) == 1
    action = Action.objects.get()
    assert action.status == "failed" and "does not sell BROKEN" in action.error


def test_the_upstream_may_be_served_over_streamable_http(
    http_host: Host, agent: Callable[..., str], calls_file: Path
) -> None:
    agent("buyer-http", "procurement", *ORDERS)
    listed = http_host.run(http_host.session.list_tools())
    assert [tool.name for tool in listed.tools] == [
        "create_order",
        "list_snapshots",
        "delete_snapshot",
    ]
    result = http_host.call("create_order", {"sku": "H100", "qty": 1, "unit_price": 90})
    assert not result.is_error and result.structured_content["order_id"] == "PO-H100-1"
    assert [call["tool"] for call in upstream_calls(calls_file)] == ["create_order"]
    assert Action.objects.get().status == "succeeded"


def test_a_desk_out_of_reach_fails_closed(
    calls_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.mcp_upstream import server as upstream

    monkeypatch.setenv("MCP_UPSTREAM_CALLS", str(calls_file))
    calls_file.write_text("")

    async def call() -> CallToolResult:
        desk = AsyncDesk(f"http://127.0.0.1:{free_port()}", "idk_offline", retries=0)
        async with desk, Client(upstream, cache=None) as client:
            proxy = DeskProxy(desk.session("offline"), client)
            return await proxy.call_tool("list_snapshots", {}, request_id=1)

    result = asyncio.run(call())
    assert result.is_error and "the desk could not be reached, so nothing ran" in text(result)
    assert upstream_calls(calls_file) == []
