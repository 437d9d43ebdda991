"""The client and the kill switches: pushed state, checks at no network cost, fallbacks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from incidentdesk_client import Desk, DeskUnavailable, KillSwitchEngaged
from incidentdesk_client.killswitch import KillSwitches

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action, AuditEvent
from tests.agents import agent_token
from tests.servers import Desk as RunningDesk
from tests.servers import free_port, running_desk
from tests.test_client import Vendor, decide_later, guarded_order

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "*:read")


def engage(scope: str = "procurement") -> None:
    killswitch_set(scope=scope, engaged=True, actor=Actor("user", "otto"), reason="runaway")


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_client_stops_on_push_without_a_request(desk: RunningDesk) -> None:
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS))
    try:
        assert client.kill_switches.wait_until_known()
        order = guarded_order(client, vendor)
        engage()
        wait_for(lambda: client.kill_switches.engaged())
        assert client.kill_switches.source == "push"
        with pytest.raises(KillSwitchEngaged, match="runaway"):
            order(sku="A100", qty=1, unit_price=90)
        # Stopped in the client: the desk never saw the attempt.
        assert not AuditEvent.objects.filter(action="action.refused_killed").exists()
        assert not Action.objects.exists() and vendor.orders == []
    finally:
        client.close()


def test_an_agent_waiting_on_an_escalation_is_told_of_the_kill(desk: RunningDesk) -> None:
    vendor = Vendor()
    # Not watching: the answer must come through the long-poll itself.
    client = Desk(
        desk.url,
        agent_token("buyer", "procurement", *ORDERS),
        poll_wait=20,
        watch_kill_switches=False,
    )
    order = guarded_order(client, vendor)

    def engage_when_pending() -> None:
        wait_for(lambda: Action.objects.filter(status="escalated").exists())
        engage()

    import threading

    engager = threading.Thread(target=engage_when_pending)
    engager.start()
    started = time.monotonic()
    with pytest.raises(KillSwitchEngaged, match="runaway"):
        order(sku="A100", qty=10, unit_price=90)  # $900: escalated, then frozen by the kill
    engager.join()
    assert time.monotonic() - started < 15  # answered by the kill, not by the poll's end
    assert vendor.orders == []


def test_a_reconnecting_client_gets_the_whole_state_again(tmp_path: Path, django_db_setup) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    port = free_port()
    with running_desk(tmp_path / "first", port=port) as first:
        client = Desk(first.url, token, retries=0)
        assert client.kill_switches.wait_until_known()
        wait_for(lambda: client.kill_switches.connected)
    try:
        # Engaged while the client could not hear it: the message was never sent to it.
        engage()
        with running_desk(tmp_path / "second", port=port):
            wait_for(lambda: client.kill_switches.engaged(), timeout=20)
        assert client.kill_switches.engaged()[0]["scope"] == "procurement"
    finally:
        client.close()


def test_stale_state_fails_closed_and_reads_may_fail_open(tmp_path: Path, django_db_setup) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    with running_desk(tmp_path / "desk") as desk:
        client = Desk(desk.url, token, retries=0, max_state_age=1, fail_open_reads=True)
        assert client.kill_switches.wait_until_known()
    try:
        time.sleep(1.5)  # the desk is gone and the state ages past its bound
        with pytest.raises(DeskUnavailable, match="failing closed"):
            client.check_kill_switches()
        session = client.session("reads")
        read = session.guard("read_stock", "read")(lambda sku: {"sku": sku, "stock": 3})
        assert read(sku="A100") == {"sku": "A100", "stock": 3}  # allowed to fail open
        vendor = Vendor()
        write = session.guard("create_order", "create")(vendor.create_order)
        with pytest.raises(DeskUnavailable, match="failing closed"):
            write(sku="A100", qty=1, unit_price=90)
        assert vendor.orders == []
    finally:
        client.close()


def test_with_the_socket_down_the_state_comes_by_polling(desk: RunningDesk) -> None:
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), watch_kill_switches=False)
    watcher = KillSwitches(desk.url, client.token, client.kill_switch_state, poll_interval=0.2)
    watcher.ws_url = f"ws://127.0.0.1:{free_port()}/ws/agent/"  # nothing listens there
    watcher.start()
    try:
        wait_for(lambda: watcher.confirmed_at is not None)
        engage()
        wait_for(lambda: watcher.engaged())
        assert watcher.source == "poll" and not watcher.connected
    finally:
        watcher.stop()


def test_the_escalation_decided_after_release_still_runs(desk: RunningDesk) -> None:
    """Released again: the same client goes on as before."""
    vendor = Vendor()
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS), poll_wait=5)
    try:
        engage()
        wait_for(lambda: client.kill_switches.engaged())
        killswitch_set(
            scope="procurement", engaged=False, actor=Actor("user", "otto"), reason="fixed"
        )
        wait_for(lambda: not client.kill_switches.engaged())
        operator = decide_later("approved")
        assert guarded_order(client, vendor)(sku="A100", qty=10, unit_price=90) == {
            "order_id": "PO-1"
        }
        operator.join()
    finally:
        client.close()


def test_a_started_call_picked_up_again_still_stops_on_an_engaged_switch(
    desk: RunningDesk,
) -> None:
    """A proposal that comes back already started (a resumed step, a second wait) is checked
    against the switches before it runs again."""
    client = Desk(desk.url, agent_token("buyer", "procurement", *ORDERS))
    try:
        assert client.kill_switches.wait_until_known()
        proposal = client.session("restock-3").propose(
            "create_order", {"sku": "A100", "qty": 1, "unit_price": 90}, verb="create"
        )
        assert proposal.wait() == {"sku": "A100", "qty": 1, "unit_price": 90}
        assert proposal.status == "executing"
        engage()
        wait_for(lambda: client.kill_switches.engaged())
        again = client.proposal(proposal.id)
        assert again.status == "executing"
        with pytest.raises(KillSwitchEngaged, match="runaway"):
            again.wait()
    finally:
        client.close()
