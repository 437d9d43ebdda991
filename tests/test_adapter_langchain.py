"""The LangChain middleware: a create_agent run whose tool calls ask the desk first, with a
scripted chat model in place of an LLM."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from incidentdesk_client import AsyncDesk, Desk
from incidentdesk_client.adapters.langchain import (
    IncidentDeskInterruptMiddleware,
    IncidentDeskMiddleware,
)
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action, ReasoningStep
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.test_client import ORDERS, decide_later

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def connect(desk: RunningDesk) -> Iterator[Callable[..., Desk]]:
    """Blocking desk clients for a test, their kill switch watchers stopped after it."""
    opened: list[Desk] = []

    def connect(agent: str, domain: str, *scopes: str, **options: Any) -> Desk:
        opened.append(Desk(desk.url, agent_token(agent, domain, *scopes), **options))
        return opened[-1]

    yield connect
    for client in opened:
        client.close()


class ScriptedModel(GenericFakeChatModel):
    """A chat model that answers from a script; create_agent binds tools to it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def model_calling(tool_name: str, args: dict[str, Any], call_id: str = "call-1") -> ScriptedModel:
    """A model that calls one tool, then answers."""
    call = AIMessage(content="", tool_calls=[{"name": tool_name, "args": args, "id": call_id}])
    return ScriptedModel(messages=iter([call, AIMessage(content="Done.")]))


class Vendor:
    """The target system: it records each order the agent's tool placed."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []

    def tools(self) -> list[Any]:
        @tool
        def create_order(sku: str, qty: int, unit_price: float) -> dict:
            """Order qty units of a sku from the vendor."""
            self.orders.append({"sku": sku, "qty": qty})
            return {"order_id": f"PO-{len(self.orders)}", "qty": qty}

        @tool
        def get_stock(sku: str) -> int:
            """How many units of a sku are in stock."""
            return 1

        return [create_order, get_stock]


def order_agent(middleware: Any, vendor: Vendor, qty: int, **kwargs: Any) -> Any:
    args = {"sku": "A100", "qty": qty, "unit_price": 90}
    return create_agent(
        model_calling("create_order", args), vendor.tools(), middleware=[middleware], **kwargs
    )


def off_loop(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
    """Database work from async code: in a worker thread, whose connection closes after it."""

    def work() -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return asyncio.to_thread(work)


def tool_message(result: dict[str, Any]) -> ToolMessage:
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    return message


def ask(agent: Any, config: Any = None) -> dict[str, Any]:
    return agent.invoke({"messages": [("user", "Restock the A100s.")]}, config)


def test_an_allowed_call_runs_once_and_is_reported(connect: Callable[..., Desk]) -> None:
    vendor = Vendor()
    client = connect("buyer", "procurement", *ORDERS)
    result = ask(order_agent(IncidentDeskMiddleware(client, session_id="lc-1"), vendor, qty=2))
    assert vendor.orders == [{"sku": "A100", "qty": 2}]
    assert tool_message(result).status == "success"
    assert result["messages"][-1].content == "Done."
    action = Action.objects.get()
    assert (action.tool, action.verb, action.status) == ("create_order", "create", "succeeded")
    assert action.params == {"sku": "A100", "qty": 2, "unit_price": 90}
    assert action.result == {"order_id": "PO-1", "qty": 2}
    step = ReasoningStep.objects.get(session__external_id="lc-1", index=action.step_index)
    assert (step.kind, step.content) == ("tool_call", "create_order")


def test_a_modified_call_runs_the_operators_args(connect: Callable[..., Desk]) -> None:
    vendor = Vendor()
    client = connect("buyer", "procurement", *ORDERS, poll_wait=2)
    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90}, delay=0.1)
    result = ask(order_agent(IncidentDeskMiddleware(client), vendor, qty=10))  # $900: held
    operator.join()
    assert vendor.orders == [{"sku": "A100", "qty": 3}]
    assert '"qty": 3' in tool_message(result).content
    action = Action.objects.get()
    assert action.status == "succeeded" and action.result == {"order_id": "PO-1", "qty": 3}


def test_a_rejected_call_never_runs_and_the_model_hears_why(connect: Callable[..., Desk]) -> None:
    vendor = Vendor()
    client = connect("buyer", "procurement", *ORDERS, poll_wait=2)
    operator = decide_later("rejected", delay=0.1)
    result = ask(order_agent(IncidentDeskMiddleware(client), vendor, qty=10))
    operator.join()
    assert vendor.orders == []
    message = tool_message(result)
    assert message.status == "error"
    assert "rejected by decider: decided in the test" in message.content
    assert "rule spend-cap" in message.content
    assert result["messages"][-1].content == "Done.", "the run goes on"
    assert Action.objects.get().status == "rejected"


def test_a_denied_call_never_runs_and_the_model_hears_the_rule(
    connect: Callable[..., Desk],
) -> None:
    deleted: list[str] = []

    @tool
    def delete_snapshot(snapshot_id: str) -> str:
        """Delete a storage snapshot."""
        deleted.append(snapshot_id)
        return "deleted"

    client = connect("janitor", "devops", "delete_snapshot:delete")
    model = model_calling("delete_snapshot", {"snapshot_id": "snap-staging-critical-01"})
    agent = create_agent(model, [delete_snapshot], middleware=[IncidentDeskMiddleware(client)])
    message = tool_message(ask(agent))
    assert deleted == []
    assert message.status == "error" and "rule protected-targets" in message.content
    assert "protected target" in message.content
    assert message.artifact["incidentdesk"]["rule"] == "protected-targets"


def test_unguarded_tools_pass_through(connect: Callable[..., Desk]) -> None:
    client = connect("buyer", "procurement", *ORDERS)
    guard = IncidentDeskMiddleware(client, tools=["create_order"])
    agent = create_agent(
        model_calling("get_stock", {"sku": "A100"}), Vendor().tools(), middleware=[guard]
    )
    assert tool_message(ask(agent)).content == "1"
    assert not Action.objects.exists()


def test_a_tool_that_raises_is_reported_as_failed(connect: Callable[..., Desk]) -> None:
    @tool
    def create_order(sku: str, qty: int, unit_price: float) -> dict:
        """Order qty units of a sku from the vendor."""
        raise RuntimeError("vendor API is down")

    client = connect("buyer", "procurement", *ORDERS)
    model = model_calling("create_order", {"sku": "A100", "qty": 1, "unit_price": 90})
    agent = create_agent(model, [create_order], middleware=[IncidentDeskMiddleware(client)])
    with pytest.raises(RuntimeError, match="vendor API is down"):
        ask(agent)
    action = Action.objects.get()
    assert action.status == "failed" and "vendor API is down" in action.error


def test_the_async_desk_runs_an_allowed_call_with_ainvoke(desk: RunningDesk) -> None:
    vendor = Vendor()
    token = agent_token("buyer", "procurement", *ORDERS)

    async def run() -> dict[str, Any]:
        async with AsyncDesk(desk.url, token) as client:
            agent = order_agent(IncidentDeskMiddleware(client, session_id="lc-async"), vendor, 2)
            return await agent.ainvoke({"messages": [("user", "Restock the A100s.")]})

    result = asyncio.run(run())
    assert vendor.orders == [{"sku": "A100", "qty": 2}]
    assert tool_message(result).status == "success"
    action = Action.objects.get()
    assert action.status == "succeeded" and action.result == {"order_id": "PO-1", "qty": 2}


def test_a_kill_switch_engaged_while_a_call_waits_stops_it(desk: RunningDesk) -> None:
    vendor = Vendor()
    token = agent_token("buyer", "procurement", *ORDERS)

    async def run() -> dict[str, Any]:
        async with AsyncDesk(desk.url, token, poll_wait=1) as client:
            assert client.kill_switches is not None
            assert await client.kill_switches.wait_until_known()
            agent = order_agent(IncidentDeskMiddleware(client), vendor, qty=10)
            call = asyncio.ensure_future(agent.ainvoke({"messages": [("user", "Restock.")]}))
            while not await off_loop(Action.objects.filter(status="escalated").exists):
                await asyncio.sleep(0.05)
            await off_loop(
                killswitch_set,
                scope="procurement",
                engaged=True,
                actor=Actor.system("tests"),
                reason="runaway orders",
            )
            return await asyncio.wait_for(call, 20)

    message = tool_message(asyncio.run(run()))
    assert vendor.orders == []
    assert message.status == "error" and "runaway orders" in message.content


def test_the_interrupt_middleware_pauses_and_resumes_to_run_once(
    connect: Callable[..., Desk],
) -> None:
    vendor = Vendor()
    # A wait that blocks would give up after a second: this run must never block.
    client = connect("buyer", "procurement", *ORDERS, poll_wait=1, max_wait=1)
    guard = IncidentDeskInterruptMiddleware(client)
    agent = order_agent(guard, vendor, qty=10, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "restock-thread-1"}}

    paused = ask(agent, config)
    (pending,) = paused["__interrupt__"]
    action = Action.objects.get()
    assert action.status == "escalated" and vendor.orders == []
    assert pending.value["action_id"] == str(action.pk)
    assert pending.value["tool"] == "create_order"
    assert pending.value["params"] == {"sku": "A100", "qty": 10, "unit_price": 90}
    assert pending.value["rule"] == "spend-cap" and "spending cap" in pending.value["reason"]

    # Resumed before anyone decided: it stops again, on the same action.
    again = agent.invoke(Command(resume=True), config)
    assert again["__interrupt__"][0].value["action_id"] == str(action.pk)
    assert vendor.orders == [] and Action.objects.count() == 1

    decide_later("approved", delay=0).join()
    result = agent.invoke(Command(resume=True), config)
    assert "__interrupt__" not in result
    assert vendor.orders == [{"sku": "A100", "qty": 10}]
    assert tool_message(result).status == "success"
    action.refresh_from_db()
    assert action.status == "succeeded" and Action.objects.count() == 1
    assert action.session.external_id == "restock-thread-1"
    assert action.result == {"order_id": "PO-1", "qty": 10}

    # The same tool call proposed again is the same action, which has run: it does not run again.
    replay = IncidentDeskInterruptMiddleware(client, session_id="restock-thread-1")
    message = tool_message(ask(order_agent(replay, vendor, qty=10)))
    assert message.status == "error" and "may not run: succeeded" in message.content
    assert vendor.orders == [{"sku": "A100", "qty": 10}] and Action.objects.count() == 1
