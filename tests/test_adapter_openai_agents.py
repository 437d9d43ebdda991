"""The OpenAI Agents SDK adapter against a running desk, with the SDK's scripted model: guarded
tools, and the SDK's own approval interruptions answered by the desk."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunConfig, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from incidentdesk_client import AsyncDesk
from incidentdesk_client.adapters.openai_agents import (
    guard_tools,
    guarded,
    resolve_interruptions,
)

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.test_client import ORDERS, decide_later

pytestmark = pytest.mark.django_db(transaction=True)

UNTRACED = RunConfig(tracing_disabled=True)
GuardTools = Callable[[Any], list[FunctionTool]]


def order_tool(ran: list[dict], *, fails: bool = False, needs_approval: bool = False):
    @function_tool(needs_approval=needs_approval)
    def create_order(
        sku: str, qty: int, unit_price: float = 90.0, idempotency_key: str = ""
    ) -> dict:
        """Order qty units of a sku from the vendor."""
        ran.append({"sku": sku, "qty": qty, "key": idempotency_key})
        if fails:
            raise RuntimeError("vendor API down")
        return {"order_id": f"PO-{len(ran)}"}

    return create_order


def order(call_id: str, qty: int):
    return function_call("create_order", {"sku": "A100", "qty": qty}, call_id=call_id)


def run_agent(
    desk: RunningDesk,
    token: str,
    tools: GuardTools,
    calls: list,
    *,
    native: bool = False,
    meanwhile: Callable[[AsyncDesk], Any] | None = None,
) -> tuple[Any, ScriptedModel]:
    """Run an agent whose scripted model makes `calls` in one response, then answers."""
    model = ScriptedModel([calls, [assistant_message("done")]])

    async def run() -> Any:
        async with AsyncDesk(desk.url, token, poll_wait=1) as client:
            session = client.session(f"oa-{uuid.uuid4().hex[:8]}")
            agent = Agent(name="buyer", model=model, tools=tools(session))
            running = asyncio.ensure_future(Runner.run(agent, "Restock.", run_config=UNTRACED))
            if meanwhile is not None:
                await meanwhile(client)
            result = await asyncio.wait_for(running, 20)
            if native:
                result = await resolve_interruptions(result, run_config=UNTRACED)
            return result

    result = asyncio.run(run())
    model.assert_complete()
    return result, model


def told(model: ScriptedModel, call_id: str) -> str:
    """What the model was told a call returned."""
    for item in model.last_call.input:
        if item.get("type") == "function_call_output" and item["call_id"] == call_id:
            return str(item["output"])
    raise AssertionError(f"the model was told nothing of {call_id}")


def test_an_allowed_call_runs_once_and_is_reported(desk: RunningDesk) -> None:
    ran: list[dict] = []
    result, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda session: guard_tools([order_tool(ran)], session),
        [order("call-1", 2)],
    )
    action = Action.objects.get()
    assert (action.tool, action.verb, action.status) == ("create_order", "create", "succeeded")
    assert action.params == {"sku": "A100", "qty": 2, "unit_price": 90.0}, "with its default"
    assert action.result == {"order_id": "PO-1"}
    assert ran == [{"sku": "A100", "qty": 2, "key": f"{action.session.external_id}:call-1"}]
    assert "PO-1" in told(model, "call-1") and result.final_output == "done"


def test_a_modified_call_runs_the_operators_params(desk: RunningDesk) -> None:
    ran: list[dict] = []
    token = agent_token("buyer", "procurement", *ORDERS)
    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90}, delay=0.1)
    run_agent(desk, token, lambda s: [guarded(order_tool(ran), s)], [order("call-1", 10)])
    operator.join()
    assert [(call["sku"], call["qty"]) for call in ran] == [("A100", 3)]
    assert Action.objects.get().status == "succeeded"


def test_rejected_and_denied_calls_never_run_and_the_model_is_told_why(
    desk: RunningDesk,
) -> None:
    deleted: list[str] = []

    @function_tool
    def delete_snapshot(snapshot_id: str) -> str:
        """Delete a storage snapshot."""
        deleted.append(snapshot_id)
        return "deleted"

    janitor = agent_token("janitor", "devops", "delete_snapshot:delete")
    call = function_call(
        "delete_snapshot", {"snapshot_id": "snap-staging-critical-01"}, call_id="call-d"
    )
    _, model = run_agent(desk, janitor, lambda s: [guarded(delete_snapshot, s)], [call])
    denied = told(model, "call-d")
    assert "denied by the policy" in denied and "protected-targets" in denied
    assert deleted == []

    ran: list[dict] = []
    operator = decide_later("rejected", delay=0.1)
    _, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda s: [guarded(order_tool(ran), s)],
        [order("call-r", 10)],
    )
    operator.join()
    rejected = told(model, "call-r")
    assert "rejected by decider" in rejected and "spend-cap" in rejected
    assert "decided in the test" in rejected
    assert ran == []


def test_a_kill_switch_engaged_while_a_call_waits_stops_it(desk: RunningDesk) -> None:
    ran: list[dict] = []
    token = agent_token("buyer", "procurement", *ORDERS)

    async def engage_once_escalated(client: AsyncDesk) -> None:
        assert client.kill_switches is not None
        assert await client.kill_switches.wait_until_known()
        while not await asyncio.to_thread(Action.objects.filter(status="escalated").exists):
            await asyncio.sleep(0.05)
        await asyncio.to_thread(
            killswitch_set,
            scope="procurement",
            engaged=True,
            actor=Actor.system("tests"),
            reason="runaway orders",
        )

    _, model = run_agent(
        desk,
        token,
        lambda s: [guarded(order_tool(ran), s)],
        [order("call-1", 10)],
        meanwhile=engage_once_escalated,
    )
    stopped = told(model, "call-1")
    assert "kill switch" in stopped and "runaway orders" in stopped
    assert ran == []


def test_a_tool_that_raises_is_reported_as_failed(desk: RunningDesk) -> None:
    ran: list[dict] = []
    _, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda s: [guarded(order_tool(ran, fails=True), s)],
        [order("call-1", 2)],
    )
    action = Action.objects.get()
    assert action.status == "failed" and "vendor API down" in action.error
    assert len(ran) == 1
    assert told(model, "call-1") == "An error occurred while running the tool. Please try again."


def test_a_positional_and_keyword_tool_gets_the_desks_params_and_key(desk: RunningDesk) -> None:
    calls: list[tuple] = []

    @function_tool
    def create_order(sku: str, /, qty: int, *, unit_price: float = 90, idempotency_key: str = ""):
        """Order qty units of a sku."""
        calls.append((sku, qty, unit_price, idempotency_key))
        return "ordered"

    by_the_model = {"sku": "A100", "qty": 2, "unit_price": 80, "idempotency_key": "mine"}
    _, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda s: guard_tools([create_order], s, verbs={"create_order": "create"}),
        [function_call("create_order", by_the_model, call_id="call-1")],
    )
    (seen,) = model.first_call.tools
    assert seen.name == "create_order" and seen.description == "Order qty units of a sku."
    assert set(seen.params_json_schema["properties"]) == {"sku", "qty", "unit_price"}
    assert "idempotency_key" not in json.dumps(seen.params_json_schema)
    action = Action.objects.get()
    assert action.params == {"sku": "A100", "qty": 2, "unit_price": 80}
    assert calls == [("A100", 2, 80.0, f"{action.session.external_id}:call-1")]


def test_the_approval_driver_answers_interruptions_with_the_desks_verdicts(
    desk: RunningDesk,
) -> None:
    ran: list[dict] = []
    operator = decide_later("modified", {"sku": "A100", "qty": 4, "unit_price": 90}, delay=0.1)
    result, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda s: [guarded(order_tool(ran, needs_approval=True), s)],
        [order("call-small", 2), order("call-big", 10)],
        native=True,
    )
    operator.join()
    assert result.interruptions == [] and result.final_output == "done"
    assert sorted(call["qty"] for call in ran) == [2, 4], "each ran once, the operator's qty"
    actions = Action.objects.order_by("created_at")
    assert [(a.params["qty"], a.status) for a in actions] == [(2, "succeeded"), (10, "succeeded")]
    assert actions[1].modified_params["qty"] == 4
    assert "PO-" in told(model, "call-small") and "PO-" in told(model, "call-big")


def test_the_approval_driver_rejects_with_the_desks_reason(desk: RunningDesk) -> None:
    ran: list[dict] = []
    operator = decide_later("rejected", delay=0.1)
    result, model = run_agent(
        desk,
        agent_token("buyer", "procurement", *ORDERS),
        lambda s: [guarded(order_tool(ran, needs_approval=True), s)],
        [order("call-1", 10)],
        native=True,
    )
    operator.join()
    assert result.interruptions == [] and ran == []
    assert Action.objects.get().status == "rejected"
    refused = told(model, "call-1")
    assert "rejected by decider" in refused and "decided in the test" in refused


def test_the_approval_driver_refuses_a_tool_it_cannot_report(desk: RunningDesk) -> None:
    ran: list[dict] = []
    with pytest.raises(TypeError, match="not guarded"):
        run_agent(
            desk,
            agent_token("buyer", "procurement", *ORDERS),
            lambda s: [order_tool(ran, needs_approval=True)],
            [order("call-1", 2)],
            native=True,
        )
    assert ran == [] and not Action.objects.exists()
