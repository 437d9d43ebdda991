"""The pydantic-ai adapter against a running desk: agents driven by pydantic-ai's own test
models, their toolsets (function tools and MCP servers) guarded by IncidentDeskToolset."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from incidentdesk_client import AsyncDesk, DeskUnavailable
from incidentdesk_client.adapters.pydantic_ai import (
    IncidentDeskCapability,
    IncidentDeskToolset,
)
from mcp import Client as McpClient
from mcp.server.mcpserver import MCPServer
from pydantic import TypeAdapter
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action, IdempotencyRecord, ReasoningStep
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.servers import free_port
from tests.test_client import ORDERS, decide_later

pytestmark = pytest.mark.django_db(transaction=True)

SNAPSHOTS = ("delete_snapshot:delete", "restart_service:execute", "*:read")


class Vendor:
    """Stand-in target systems: they remember what the tools did to them."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.restarted: list[str] = []

    def toolset(self) -> FunctionToolset[None]:
        def create_order(sku: str, qty: int, unit_price: float) -> dict[str, Any]:
            """Order qty units of a sku from the vendor."""
            self.orders.append({"sku": sku, "qty": qty, "unit_price": unit_price})
            return {"order_id": f"PO-{len(self.orders)}"}

        def delete_snapshot(snapshot_id: str) -> str:
            """Delete a storage snapshot."""
            self.deleted.append(snapshot_id)
            return f"deleted {snapshot_id}"

        return FunctionToolset([create_order, delete_snapshot])


def scripted(*calls: ToolCallPart) -> FunctionModel:
    """A model that makes `calls` (in one response, so they run in parallel), then answers with
    what each tool returned, failures included."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if not returns:
            return ModelResponse(parts=list(calls))
        lines = [f"{p.tool_name} {p.outcome}: {p.content}" for p in returns]
        return ModelResponse(parts=[TextPart("\n".join(sorted(lines)))])

    return FunctionModel(respond)


def order(qty: int, call_id: str = "call-1") -> ToolCallPart:
    args = {"sku": "A100", "qty": qty, "unit_price": 90}
    return ToolCallPart("create_order", args, tool_call_id=call_id)


def run_agent(
    url: str,
    token: str,
    model: Any,
    toolsets: Callable[[AsyncDesk], list[Any]],
) -> str:
    async def run() -> str:
        async with AsyncDesk(url, token, poll_wait=1) as desk:
            agent = Agent(model, toolsets=toolsets(desk))
            return str((await agent.run("Keep the A100s in stock.")).output)

    return asyncio.run(run())


def test_an_allowed_call_runs_once_and_is_reported(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()
    model = TestModel(call_tools=["create_order"])
    captured: list[str] = []

    async def run() -> str:
        async with AsyncDesk(desk.url, token) as client:
            guarded = IncidentDeskToolset(vendor.toolset(), client, session_id="restock-1")
            agent = Agent(model, toolsets=[guarded])
            result = await agent.run("Restock.")
            captured.append(result.run_id)
            return str(result.output)

    output = asyncio.run(run())
    assert vendor.orders == [{"sku": "a", "qty": 0, "unit_price": 0.0}], "ran once"
    assert "PO-1" in output
    action = Action.objects.get()
    assert (action.tool, action.verb, action.status) == ("create_order", "create", "succeeded")
    assert action.params == {"sku": "a", "qty": 0, "unit_price": 0.0}
    assert action.result == {"order_id": "PO-1"}
    assert action.session.external_id == "restock-1"
    key = IdempotencyRecord.objects.get().key
    assert key == f"pydantic-ai:{captured[0]}:pyd_ai_tool_call_id__create_order"
    steps = ReasoningStep.objects.values_list("kind", "content", "data__action_id")
    assert list(steps) == [("tool_call", "create_order", str(action.pk))]


def test_a_modified_call_runs_the_operators_args(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()
    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90}, delay=0.1)
    output = run_agent(
        desk.url,
        token,
        scripted(order(qty=10)),  # $900: over the cap, held for an operator
        lambda client: [IncidentDeskToolset(vendor.toolset(), client)],
    )
    operator.join()
    assert vendor.orders == [{"sku": "A100", "qty": 3, "unit_price": 90.0}]
    assert output == "create_order success: {'order_id': 'PO-1'}"
    action = Action.objects.get()
    assert action.status == "succeeded" and action.params == {
        "sku": "A100",
        "qty": 10,
        "unit_price": 90,
    }
    assert action.modified_params == {"sku": "A100", "qty": 3, "unit_price": 90}


def test_operators_args_that_do_not_fit_the_tool_fail_the_call(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()
    operator = decide_later("modified", {"sku": ["A100"], "qty": 3, "unit_price": 90}, delay=0.1)
    output = run_agent(
        desk.url,
        token,
        scripted(order(qty=10)),
        lambda client: [IncidentDeskToolset(vendor.toolset(), client)],
    )
    operator.join()
    assert vendor.orders == []
    assert output.startswith("create_order failed: create_order was approved with changed")
    action = Action.objects.get()
    assert action.status == "failed" and "sku" in action.error


def test_a_rejected_call_never_runs_and_the_model_is_told_the_rule(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()
    operator = decide_later("rejected", delay=0.1)
    output = run_agent(
        desk.url,
        token,
        scripted(order(qty=10)),
        lambda client: [IncidentDeskToolset(vendor.toolset(), client)],
    )
    operator.join()
    assert vendor.orders == []
    assert output.startswith("create_order failed: IncidentDesk did not let create_order run")
    assert "(rule spend-cap)" in output and "decided in the test" in output
    assert Action.objects.get().status == "rejected"


def test_a_denied_call_never_runs_and_the_model_is_told_the_rule(desk: RunningDesk) -> None:
    token = agent_token("janitor", "devops", *SNAPSHOTS)
    vendor = Vendor()
    call = ToolCallPart("delete_snapshot", {"snapshot_id": "snap-staging-critical-01"})
    output = run_agent(
        desk.url,
        token,
        scripted(call),
        lambda client: [IncidentDeskToolset(vendor.toolset(), client)],
    )
    assert vendor.deleted == []
    assert output.startswith("delete_snapshot failed: IncidentDesk did not let delete_snapshot run")
    assert "(rule protected-targets)" in output
    assert Action.objects.get().status == "denied"


def test_a_call_out_of_the_tokens_scope_never_runs_and_the_model_is_told(
    desk: RunningDesk,
) -> None:
    token = agent_token("restarter", "devops", "restart_service:execute")
    vendor = Vendor()
    call = ToolCallPart("delete_snapshot", {"snapshot_id": "snap-dev-7"})
    output = run_agent(
        desk.url,
        token,
        scripted(call),
        lambda client: [IncidentDeskToolset(vendor.toolset(), client)],
    )
    assert vendor.deleted == []
    assert output.startswith("delete_snapshot failed: IncidentDesk did not let delete_snapshot run")
    assert "this token may not delete with delete_snapshot" in output
    assert not Action.objects.exists()


def test_a_kill_switch_engaged_while_a_call_waits_stops_it(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()

    async def run() -> str:
        async with AsyncDesk(desk.url, token, poll_wait=1) as client:
            assert client.kill_switches is not None
            assert await client.kill_switches.wait_until_known()
            agent = Agent(
                scripted(order(qty=10)),
                toolsets=[IncidentDeskToolset(vendor.toolset(), client)],
            )
            running = asyncio.ensure_future(agent.run("Restock."))
            held = Action.objects.filter(status="escalated").exists
            for _ in range(100):
                if running.done() or await asyncio.to_thread(held):
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                killswitch_set,
                scope="procurement",
                engaged=True,
                actor=Actor.system("tests"),
                reason="runaway orders",
            )
            return str((await asyncio.wait_for(running, 10)).output)

    output = asyncio.run(run())
    assert vendor.orders == []
    assert output.startswith("create_order failed: IncidentDesk did not let create_order run")
    assert "kill switch procurement engaged by tests: runaway orders" in output
    assert "rule" not in output
    assert Action.objects.get().status == "escalated", "held for a person, never run"


def test_a_tool_that_raises_is_reported_as_failed(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)

    def create_order(sku: str, qty: int, unit_price: float) -> dict[str, Any]:
        raise ConnectionError("vendor API is down")

    with pytest.raises(ConnectionError, match="vendor API is down"):
        run_agent(
            desk.url,
            token,
            scripted(order(qty=1)),
            lambda client: [IncidentDeskToolset(FunctionToolset([create_order]), client)],
        )
    action = Action.objects.get()
    assert action.status == "failed" and "vendor API is down" in action.error


def test_parallel_calls_are_each_proposed_once_as_their_own_steps(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    vendor = Vendor()
    calls = [order(qty=n, call_id=f"call-{n}") for n in (1, 2, 3)]
    output = run_agent(
        desk.url,
        token,
        scripted(*calls),
        lambda client: [IncidentDeskToolset(vendor.toolset(), client, session_id="parallel-1")],
    )
    assert sorted(o["qty"] for o in vendor.orders) == [1, 2, 3]
    assert output.count("create_order success") == 3
    actions = {str(a.pk): a.status for a in Action.objects.all()}
    assert list(actions.values()) == ["succeeded"] * 3
    steps = ReasoningStep.objects.order_by("index").values_list("index", "data")
    assert [index for index, _ in steps] == [0, 1, 2], "each its own step, in turn"
    assert {data["action_id"] for _, data in steps} == set(actions)


def test_the_capability_guards_the_agents_own_tools_it_is_given(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    ran: list[str] = []

    def create_order(ctx: RunContext[None], sku: str, qty: int, unit_price: float) -> str:
        ran.append(f"order {qty} x {sku}")
        return "PO-1"

    def open_orders() -> int:
        ran.append("read")
        return 0

    calls = [order(qty=2), ToolCallPart("open_orders", {}, tool_call_id="call-2")]

    async def run() -> str:
        async with AsyncDesk(desk.url, token) as client:
            guard = IncidentDeskCapability(client, tools=["create_order"])
            agent = Agent(scripted(*calls), tools=[create_order, open_orders], capabilities=[guard])
            return str((await agent.run("Restock.")).output)

    output = asyncio.run(run())
    assert sorted(ran) == ["order 2 x A100", "read"]
    assert "create_order success" in output and "open_orders success" in output
    action = Action.objects.get()  # the read was not in `tools`: it ran unguarded
    assert (action.tool, action.status, action.result) == ("create_order", "succeeded", "PO-1")


def test_with_the_desk_down_only_reads_marked_fail_open_run() -> None:
    ran: list[str] = []

    def open_orders() -> int:
        ran.append("read")
        return 0

    def create_order(sku: str, qty: int, unit_price: float) -> str:
        ran.append("order")
        return "PO-1"

    async def run(call: ToolCallPart) -> str:
        down = f"http://127.0.0.1:{free_port()}"
        async with AsyncDesk(down, "idk_x_y", retries=0, fail_open_reads=True) as client:
            tools = FunctionToolset([open_orders, create_order])
            guarded = IncidentDeskToolset(tools, client, verbs={"open_orders": "read"})
            return str((await Agent(scripted(call), toolsets=[guarded]).run("Restock.")).output)

    assert asyncio.run(run(ToolCallPart("open_orders", {}))) == "open_orders success: 0"
    with pytest.raises(DeskUnavailable):
        asyncio.run(run(order(qty=1)))
    assert ran == ["read"]


class McpServerToolset(AbstractToolset[Any]):
    """An MCP server's tools, listed and called over the MCP protocol (the `mcp` package's
    client, connected to the server in-process)."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.client: McpClient | None = None

    @property
    def id(self) -> str:
        return "mcp-ops"

    async def __aenter__(self) -> McpServerToolset:
        self.client = McpClient(self.server)
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        assert self.client is not None
        await self.client.__aexit__(*args)
        return None

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        assert self.client is not None
        listed = await self.client.list_tools()
        validator = TypeAdapter(dict[str, Any]).validator
        return {
            tool.name: ToolsetTool(
                toolset=self,
                tool_def=ToolDefinition(
                    name=tool.name,
                    description=tool.description,
                    parameters_json_schema=tool.input_schema,
                ),
                max_retries=1,
                args_validator=validator,
            )
            for tool in listed.tools
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        assert self.client is not None
        result = await self.client.call_tool(name, tool_args)
        return "\n".join(part.text for part in result.content if part.type == "text")


def ops_server(vendor: Vendor) -> MCPServer:
    server = MCPServer("ops")

    @server.tool()
    def restart_service(service: str) -> str:
        """Restart one service."""
        vendor.restarted.append(service)
        return f"restarted {service}"

    @server.tool()
    def delete_snapshot(snapshot_id: str) -> str:
        """Delete a storage snapshot."""
        vendor.deleted.append(snapshot_id)
        return f"deleted {snapshot_id}"

    return server


OPS_CALLS = (
    ToolCallPart("restart_service", {"service": "web"}, tool_call_id="call-1"),
    ToolCallPart("delete_snapshot", {"snapshot_id": "snap-prod-7"}, tool_call_id="call-2"),
)


def check_ops_run(vendor: Vendor, output: str) -> None:
    assert vendor.restarted == ["web"] and vendor.deleted == []
    assert "restart_service success: restarted web" in output
    assert "delete_snapshot failed: IncidentDesk did not let delete_snapshot run" in output
    statuses = dict(Action.objects.values_list("tool", "status"))
    assert statuses == {"restart_service": "succeeded", "delete_snapshot": "denied"}
    assert Action.objects.get(tool="restart_service").result == "restarted web"


def test_an_mcp_server_toolset_is_guarded(desk: RunningDesk) -> None:
    token = agent_token("ops-bot", "devops", *SNAPSHOTS)
    vendor = Vendor()
    output = run_agent(
        desk.url,
        token,
        scripted(*OPS_CALLS),
        lambda client: [IncidentDeskToolset(McpServerToolset(ops_server(vendor)), client)],
    )
    check_ops_run(vendor, output)


def test_pydantic_ais_own_mcp_toolset_is_guarded(desk: RunningDesk) -> None:
    mcp = pytest.importorskip(
        "pydantic_ai.mcp", reason="pydantic-ai's MCP client needs fastmcp", exc_type=ImportError
    )
    token = agent_token("ops-bot", "devops", *SNAPSHOTS)
    vendor = Vendor()
    output = run_agent(
        desk.url,
        token,
        scripted(*OPS_CALLS),
        lambda client: [IncidentDeskToolset(mcp.MCPToolset(ops_server(vendor)), client)],
    )
    check_ops_run(vendor, output)
