"""The queue live: escalations posted by agents over HTTP reach open queue pages; decisions
made elsewhere update them. A real ASGI server and real websocket clients."""

from __future__ import annotations

import pytest
from websockets.sync.client import ClientConnection, connect

from approvals.models import Action
from approvals.queue import effective_params, params_fingerprint
from tests.agents import agent_token, order, propose
from tests.conftest import session_cookie
from tests.servers import Browser, Desk
from tests.test_live import receive_until

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "*:read")


def page_socket(desk: Desk, cookies: dict[str, str], topics: str) -> ClientConnection:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return connect(
        f"{desk.ws_url}/ws/desk/?topics={topics}",
        origin=desk.url,
        additional_headers={"Cookie": header},
        open_timeout=10,
        proxy=None,
    )


def test_new_escalation_appears_and_a_decision_elsewhere_removes_it(
    desk: Desk, approver, senior_approver
) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    with (
        page_socket(desk, session_cookie(approver), "count,queue") as queue_a,
        page_socket(
            desk, session_cookie(senior_approver), "count,queue&domain=procurement"
        ) as queue_b,
        page_socket(
            desk, session_cookie(senior_approver), "count,queue&domain=billing"
        ) as elsewhere,
    ):
        for ws in (queue_a, queue_b, elsewhere):
            receive_until(ws, 'id="queue-groups"')  # the catch-up on connect
        verdict = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
        assert verdict["status"] == "pending"
        row = f'id="esc-{verdict["id"]}"'
        for ws in (queue_a, queue_b):
            pushed = receive_until(ws, 'hx-swap-oob="beforeend:#tier-1-rows"')[-1]
            assert row in pushed and 'id="queue-count"' in pushed
        # A page filtered to another domain gets the count, not the row.
        other = receive_until(elsewhere, 'id="queue-count"')[-1]
        assert "beforeend" not in other

        browser = Browser(desk.url, session_cookie(approver))
        status, _ = browser.request("GET", f"/actions/{verdict['id']}/")
        assert status == 200
        with page_socket(desk, browser.cookies, f"count,action-{verdict['id']}") as review:
            receive_until(review, 'id="decision"')
            seen = params_fingerprint(effective_params(Action.objects.get(pk=verdict["id"])))
            status, body = browser.htmx_post(
                f"/actions/{verdict['id']}/decide", {"verdict": "approve", "params_seen": seen}
            )
            assert status == 200, body
            decided = receive_until(review, "Approved")[-1]
            assert f"by {approver.username}" in decided
        for ws in (queue_a, queue_b):
            gone = receive_until(ws, f'<li id="esc-{verdict["id"]}" hx-swap-oob="delete">')[-1]
            assert "beforeend" not in gone
    assert Action.objects.get(pk=verdict["id"]).status == Action.Status.APPROVED


def test_a_reconnecting_queue_page_catches_up(desk: Desk, approver) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    verdict = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
    # Escalated while the page was away: the state sent on connect has it.
    with page_socket(desk, session_cookie(approver), "count,queue") as ws:
        catch_up = receive_until(ws, 'id="queue-groups"')[-1]
    assert f'id="esc-{verdict["id"]}"' in catch_up


def test_the_running_desk_sweeps_overdue_escalations_up_a_tier(desk: Desk, approver) -> None:
    """Beat runs beside the worker (inside the server in embedded mode): an escalation whose
    timer task was lost still moves up when its SLA has passed."""
    import time
    from datetime import timedelta

    from django.utils import timezone

    token = agent_token("buyer", "procurement", *ORDERS)
    verdict = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
    with page_socket(desk, session_cookie(approver), "count,queue") as ws:
        receive_until(ws, 'id="queue-groups"')
        # Its SLA passed, and its timer task is gone (another id): only the sweep can act.
        Action.objects.filter(pk=verdict["id"]).update(
            sla_due_at=timezone.now() - timedelta(seconds=1), timer_id="lost-timer"
        )
        moved = receive_until(ws, 'hx-swap-oob="beforeend:#tier-2-rows"', timeout=30)[-1]
        assert f'id="esc-{verdict["id"]}"' in moved
    deadline = time.monotonic() + 5
    while Action.objects.get(pk=verdict["id"]).tier != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Action.objects.get(pk=verdict["id"]).tier == 2
