"""The client as frameworks call it: tools called by position, async tools, the async client,
and the propose / wait / report steps a durable flow takes across processes."""

from __future__ import annotations

import asyncio
import inspect
import typing
from decimal import Decimal

import pytest
from incidentdesk_client import (
    ActionDenied,
    ActionRejected,
    AsyncDesk,
    Desk,
    KillSwitchEngaged,
)

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action, ReasoningStep
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.test_client import ORDERS, decide_later

pytestmark = pytest.mark.django_db(transaction=True)


def create_order(sku: str, qty: int, unit_price: float = 90.0, idempotency_key: str = "") -> dict:
    """Order GPUs from the vendor."""
    return {"order_id": f"PO-{sku}-{qty}", "key": idempotency_key}


def test_a_guarded_tool_shows_its_own_signature_without_the_key(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()
    guarded = session.guard(create_order)
    assert list(inspect.signature(guarded).parameters) == ["sku", "qty", "unit_price"]
    assert "idempotency_key" not in typing.get_type_hints(guarded)
    assert guarded.__name__ == "create_order" and guarded.__doc__ == create_order.__doc__
    with pytest.raises(TypeError):
        guarded("A100", 2, idempotency_key="chosen-by-the-model")
    assert not Action.objects.exists()


def test_positional_arguments_are_bound_by_the_real_signature(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()
    result = session.guard(create_order)("A100", 2)  # the tool's name, the registry's verb
    action = Action.objects.get()
    assert (action.tool, action.verb) == ("create_order", "create")
    assert action.params == {"sku": "A100", "qty": 2, "unit_price": 90.0}
    assert action.status == "succeeded"
    assert result["order_id"] == "PO-A100-2" and result["key"], "run with the proposal's key"


def test_an_async_tool_is_guarded_by_the_blocking_client(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()

    @session.guard("create_order")
    async def order(sku: str, qty: int, unit_price: float) -> dict:
        await asyncio.sleep(0)
        return {"ordered": qty}

    assert inspect.iscoroutinefunction(order)
    assert asyncio.run(order("A100", qty=1, unit_price=90)) == {"ordered": 1}
    assert Action.objects.get().status == "succeeded"


def test_the_async_client_runs_an_allowed_call_and_reports_it(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)

    async def run() -> dict:
        async with AsyncDesk(desk.url, token) as client:
            session = client.session("async-1")
            await session.thought("Stock is low.")
            return await session.guard(create_order)("A100", 2)

    assert asyncio.run(run())["order_id"] == "PO-A100-2"
    action = Action.objects.get()
    assert action.status == "succeeded" and action.result["order_id"] == "PO-A100-2"
    assert action.step_index == 1


def test_the_async_client_runs_the_operators_modified_params(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    ran: list[dict] = []

    async def order(sku: str, qty: int, unit_price: float) -> dict:
        ran.append({"sku": sku, "qty": qty})
        return {"ok": True}

    async def run() -> None:
        async with AsyncDesk(desk.url, token, poll_wait=5) as client:
            await client.session().guard("create_order")(order)("A100", 10, 90)

    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90})
    asyncio.run(run())
    operator.join()
    assert ran == [{"sku": "A100", "qty": 3}]


def test_the_async_client_never_runs_a_rejected_or_denied_call(desk: RunningDesk) -> None:
    ran: list[str] = []

    async def delete_snapshot(snapshot_id: str) -> None:
        ran.append(snapshot_id)

    async def order(sku: str, qty: int, unit_price: float) -> None:
        ran.append(sku)

    janitor_token = agent_token("janitor", "devops", "delete_snapshot:delete")
    buyer_token = agent_token("buyer", "procurement", *ORDERS)

    async def run() -> None:
        janitor = AsyncDesk(desk.url, janitor_token)
        async with janitor:
            guarded = janitor.session().guard(targets=lambda snapshot_id: [snapshot_id])
            with pytest.raises(ActionDenied):
                await guarded(delete_snapshot)("snap-staging-critical-01")
        buyer = AsyncDesk(desk.url, buyer_token, poll_wait=5)
        async with buyer:
            with pytest.raises(ActionRejected):
                await buyer.session().guard("create_order")(order)("A100", 10, 90)

    operator = decide_later("rejected")
    asyncio.run(run())
    operator.join()
    assert ran == []


def test_a_kill_switch_stops_an_async_call_waiting_for_its_decision(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    ran: list[int] = []

    async def order(sku: str, qty: int, unit_price: float) -> None:
        ran.append(qty)

    async def run() -> None:
        async with AsyncDesk(desk.url, token, poll_wait=1) as client:
            assert await client.kill_switches.wait_until_known()
            call = asyncio.ensure_future(client.session().guard("create_order")(order)("A", 10, 90))
            while not await asyncio.to_thread(Action.objects.filter(status="escalated").exists):
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                killswitch_set,
                scope="procurement",
                engaged=True,
                actor=Actor.system("tests"),
                reason="runaway orders",
            )
            with pytest.raises(KillSwitchEngaged):
                await asyncio.wait_for(call, 20)

    asyncio.run(run())
    assert ran == []


def test_a_proposal_resumed_in_another_process_is_the_same_action(desk: RunningDesk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    first = Desk(desk.url, token).session("durable-1")
    first.thought("Order GPUs.")
    proposal = first.propose("create_order", {"sku": "A", "qty": 1, "unit_price": 90}, key="n-1")
    # Another process re-runs the same step from its start, with nothing in memory but the
    # session id and the key: the same steps, the same proposal, the same action.
    again = Desk(desk.url, token).session("durable-1")
    again.thought("Order GPUs.")
    resumed = again.propose("create_order", {"sku": "A", "qty": 1, "unit_price": 90}, key="n-1")
    assert resumed.id == proposal.id and Action.objects.count() == 1
    assert resumed.wait() == {"sku": "A", "qty": 1, "unit_price": 90}
    resumed.report(True, {"order_id": "PO-9"}, post_state={"open_orders": 1})
    assert Desk(desk.url, token).proposal(proposal.id).status == "succeeded"
    assert list(ReasoningStep.objects.order_by("index").values_list("kind", "content")) == [
        ("thought", "Order GPUs."),
        ("tool_call", "create_order"),
    ]


def test_a_session_in_another_process_goes_on_after_the_steps_already_recorded(
    desk: RunningDesk,
) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    first = Desk(desk.url, token).session("shared-1")
    first.thought("one")
    first.thought("two")
    later = Desk(desk.url, token).session("shared-1")
    assert later.thought("three") == 2
    assert list(ReasoningStep.objects.order_by("index").values_list("content", flat=True)) == [
        "one",
        "two",
        "three",
    ]


def test_a_keyed_proposal_is_the_same_action_from_a_process_that_kept_nothing(
    desk: RunningDesk,
) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    params = {"sku": "A", "qty": 1, "unit_price": 90}
    first = Desk(desk.url, token).session("durable-2")
    first.thought("Order GPUs.")
    proposal = first.propose("create_order", params, key="n-2")
    # A new process that does not replay the run's earlier steps.
    resumed = Desk(desk.url, token).session("durable-2").propose("create_order", params, key="n-2")
    assert resumed.id == proposal.id and Action.objects.count() == 1
    calls = ReasoningStep.objects.filter(kind="tool_call").values_list("data", flat=True)
    assert [call["action_id"] for call in calls] == [proposal.id, proposal.id]


def test_a_failure_with_a_very_long_error_is_still_reported(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()

    @session.guard("create_order")
    def order(sku: str, qty: int, unit_price: float) -> None:
        raise RuntimeError("vendor said: " + "no " * 10_000)

    with pytest.raises(RuntimeError):
        order("A100", 1, 90)
    action = Action.objects.get()
    assert action.status == "failed" and len(action.error) == 10_000


def test_a_guarded_tool_keeps_its_annotations_resolvable(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()

    def priced(sku: str, unit_price: Decimal, idempotency_key: str = "") -> None: ...

    # This module's annotations are strings: they resolve in its own globals.
    assert typing.get_type_hints(session.guard(priced)) == {
        "sku": str,
        "unit_price": Decimal,
        "return": type(None),
    }


def test_a_failing_read_after_the_run_does_not_stop_its_report(desk: RunningDesk) -> None:
    session = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS)).session()

    def snapshot(**params: object) -> dict:
        if Action.objects.exists():
            raise ConnectionError("the vendor's stock API is down")
        return {"open_orders": 0}

    session.guard("create_order", snapshot=snapshot)(create_order)("A100", 1)
    action = Action.objects.get()
    assert action.status == "succeeded" and action.post_state is None
