"""The agent client against a running desk."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections
from incidentdesk_client import (
    ActionDenied,
    ActionExpired,
    ActionRejected,
    Desk,
    DeskUnavailable,
    OutOfScope,
    ReportFailed,
)

from approvals.audit import Actor
from approvals.models import Action, ReasoningStep
from tests.agents import agent_token, decide
from tests.servers import Desk as RunningDesk
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "*:read")


class Vendor:
    """A stand-in target system: it records what the guarded tool did to it."""

    def __init__(self) -> None:
        self.orders: list[dict] = []

    def open_orders(self, **params) -> dict:
        return {"open_orders": len(self.orders)}

    def create_order(self, sku: str, qty: int, unit_price: float, idempotency_key: str) -> dict:
        self.orders.append({"sku": sku, "qty": qty, "key": idempotency_key})
        return {"order_id": f"PO-{len(self.orders)}"}


def guarded_order(desk: Desk, vendor: Vendor, session_id: str = "restock-1"):
    session = desk.session(session_id)
    session.thought("A100 stock is below the floor.")
    return session.guard(
        "create_order",
        "create",
        snapshot=vendor.open_orders,
        amount=lambda sku, qty, unit_price: (qty * unit_price, "USD"),
        compensation=lambda sku, qty, unit_price: {"tool": "cancel_order", "params": {"sku": sku}},
    )(vendor.create_order)


def decide_later(status: str, params: dict | None = None, delay: float = 0.5) -> threading.Thread:
    """An operator (or, for "expired", the SLA timers) deciding the newest escalation soon."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model

    from approvals.desk import operator_ensure
    from approvals.queue import escalation_timer_fired

    operator, _ = operator_ensure(
        username="decider", role="approver", password="x" * 20, actor=Actor.system("tests")
    )
    second, _ = operator_ensure(
        username="second-decider", role="approver", password="x" * 20, actor=Actor.system("tests")
    )
    user_id, second_id = operator.pk, second.pk

    def run() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pending = Action.objects.filter(status=Action.Status.ESCALATED).first()
                if pending:
                    time.sleep(delay)
                    user = get_user_model().objects.get(pk=user_id)
                    if status == "expired":
                        while pending.status == Action.Status.ESCALATED:
                            late = pending.sla_due_at + timedelta(seconds=1)
                            escalation_timer_fired(
                                action_id=pending.pk, timer_id=pending.timer_id, now=late
                            )
                            pending.refresh_from_db()
                        return
                    verdict = {"approved": "approve", "modified": "modify"}.get(status, "reject")
                    decide(
                        action_id=pending.pk,
                        user=user,
                        verdict=verdict,
                        params=params,
                        reason="decided in the test",
                    )
                    if verdict == "modify":  # someone else approves the modified version
                        other = get_user_model().objects.get(pk=second_id)
                        decide(action_id=pending.pk, user=other, verdict="approve")
                    return
                time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_allowed_call_runs_and_is_reported(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS))
    result = guarded_order(client, vendor)(sku="A100", qty=2, unit_price=90)
    assert result == {"order_id": "PO-1"}
    action = Action.objects.get()
    assert action.status == "succeeded"
    assert action.pre_action_state == {"open_orders": 0}
    assert action.post_state == {"open_orders": 1}
    assert action.result == {"order_id": "PO-1"}
    assert vendor.orders[0]["key"], "the tool ran with the proposal's idempotency key"
    assert list(ReasoningStep.objects.order_by("index").values_list("kind", flat=True)) == [
        "thought",
        "tool_call",
    ]
    assert action.step_index == 1


def test_a_call_that_ran_but_could_not_be_reported_says_so(desk: RunningDesk) -> None:
    from approvals.agents import token_revoke
    from approvals.audit import Actor
    from approvals.models import AgentToken

    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), retries=0)

    def order_then_lose_the_token(
        sku: str, qty: int, unit_price: float, idempotency_key: str
    ) -> dict:
        placed = vendor.create_order(sku, qty, unit_price, idempotency_key)
        token_revoke(prefix=AgentToken.objects.get().prefix, actor=Actor.system("tests"))
        return placed

    session = client.session("restock-2")
    call = session.guard("create_order", "create", snapshot=vendor.open_orders)(
        order_then_lose_the_token
    )
    with pytest.raises(ReportFailed) as failed:
        call(sku="A100", qty=2, unit_price=90)
    assert failed.value.result == {"order_id": "PO-1"}
    assert failed.value.post_state == {"open_orders": 1}
    assert len(vendor.orders) == 1
    # Started and never reported: once its result is overdue, it waits to be reconciled.
    assert Action.objects.get().status == "executing"


def test_denied_call_does_not_run(desk: RunningDesk) -> None:
    token = agent_token("janitor", "devops", "delete_snapshot:delete")
    deleted: list[str] = []
    session = Desk(desk.url, token).session()
    delete = session.guard("delete_snapshot", "delete", targets=lambda snapshot_id: [snapshot_id])(
        lambda snapshot_id: deleted.append(snapshot_id)
    )
    with pytest.raises(ActionDenied) as denied:
        delete(snapshot_id="snap-staging-critical-01")
    assert denied.value.rule == "protected-targets"
    assert "protected target" in denied.value.reason
    assert deleted == []


def test_escalated_then_approved_runs(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=5)
    operator = decide_later("approved")
    result = guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90)  # $900: over the cap
    operator.join()
    assert result == {"order_id": "PO-1"} and vendor.orders[0]["qty"] == 10
    assert Action.objects.get().status == "succeeded"


def test_escalated_then_modified_runs_the_operators_params(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=5)
    operator = decide_later("modified", {"sku": "A100", "qty": 3, "unit_price": 90})
    guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90)
    operator.join()
    assert [(o["sku"], o["qty"]) for o in vendor.orders] == [("A100", 3)]
    assert Action.objects.get().post_state == {"open_orders": 1}


def test_escalated_then_rejected_does_not_run(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=5)
    operator = decide_later("rejected")
    with pytest.raises(ActionRejected):
        guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90)
    operator.join()
    assert vendor.orders == []


def test_expired_escalation_does_not_run(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=5)
    operator = decide_later("expired")
    with pytest.raises(ActionExpired):
        guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90)
    operator.join()
    assert vendor.orders == []


def test_client_gives_up_waiting_after_max_wait(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=1, max_wait=1)
    with pytest.raises(ActionExpired, match="no decision"):
        guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90)
    assert vendor.orders == []


def test_out_of_scope_is_its_own_error(desk: RunningDesk) -> None:
    client = Desk(desk.url, agent_token("reader", "procurement", "*:read"))
    with pytest.raises(OutOfScope):
        guarded_order(client, Vendor())(sku="A100", qty=1, unit_price=90)


def test_desk_down_fails_closed(db) -> None:
    vendor = Vendor()
    client = Desk(f"http://127.0.0.1:{free_port()}", "idk_x_y", retries=2, backoff=0.05)
    session = client.session("s")
    order = session.guard("create_order", "create")(vendor.create_order)
    with pytest.raises(DeskUnavailable):
        order(sku="A100", qty=1, unit_price=90)
    assert vendor.orders == []


def test_reads_may_fail_open_when_configured(db) -> None:
    client = Desk(f"http://127.0.0.1:{free_port()}", "idk_x_y", retries=0, fail_open_reads=True)
    session = client.session("s")
    read = session.guard("get_stock", "read")(lambda sku: {"sku": sku, "stock": 3})
    assert read(sku="A100") == {"sku": "A100", "stock": 3}
    write = session.guard("create_order", "create")(Vendor().create_order)
    with pytest.raises(DeskUnavailable):
        write(sku="A100", qty=1, unit_price=90)
