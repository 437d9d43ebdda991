"""In Chromium, by keyboard: a review page showing the state changed since its approval and
the undo request; the reconcile page settling a run nobody reported; a policy backtest; the
Agents page. Each saves the screenshot the README shows."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from incidents.target import Target

from approvals.models import Action
from approvals.queue import executions_overdue_sweep
from tests.agents import agent_token, call, propose
from tests.browser import SCREENSHOTS, in_sync, operator_with_real_password, sign_in
from tests.servers import Desk, agent_socket
from tests.test_runs import BEFORE, MOVED, PARAMS, proposal, reviewed_domain, started

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def signed_in(chromium: Any, desk: Desk, make_operator: Any, name: str, role: str) -> Any:
    operator_with_real_password(make_operator, name, role)
    page = chromium.new_context(viewport={"width": 1366, "height": 900}).new_page()
    sign_in(page, desk, name)
    return page


def test_a_review_page_shows_the_changed_state_and_the_undo_request(
    desk: Desk, chromium: Any, make_operator: Any, target: tuple[Target, str]
) -> None:
    served, url = target
    reviewed_domain(url)
    served.seed({"acct-1": BEFORE})
    token = agent_token("clerk", "accounts", "set_record:update")
    action_id = propose(desk, token, proposal()).json()["id"]
    ann = signed_in(chromium, desk, make_operator, "ann", "approver")
    # Ann approves by keyboard.
    ann.goto(f"{desk.url}/actions/{action_id}/")
    in_sync(ann)
    ann.locator("#d-reason").focus()
    ann.keyboard.type("limit 2000 is fine")
    ann.locator("button[value=approve]").focus()
    ann.keyboard.press("Enter")
    ann.locator(".status-approved").wait_for(timeout=10_000)
    served.seed({"acct-1": MOVED})
    refused = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    assert refused.status == 409

    ann.goto(f"{desk.url}/actions/{action_id}/")
    changed = ann.locator("#state-changed")
    changed.wait_for(timeout=10_000)
    assert "State changed since approval" in changed.inner_text()
    assert changed.locator(".differs").count() == 2  # credit_limit, approved and now
    assert ann.locator(".status-escalated").count() == 1
    changed.scroll_into_view_if_needed()
    shot(ann, "review-state-changed.png")
    undo = ann.locator("#undo-preview")
    assert undo.get_attribute("data-known") == "yes"
    request = undo.locator("pre.undo-request")
    assert request.inner_text().startswith(f"PUT {url}/records/acct-1")
    assert json.loads(request.inner_text().split("\n\n", 1)[1]) == MOVED
    request.focus()  # the request is reachable by keyboard
    assert ann.evaluate("document.activeElement.classList.contains('undo-request')")
    # At the top of its pane, clear of the decision panel that stays at the pane's foot.
    request.evaluate("element => element.scrollIntoView({block: 'start'})")
    request.screenshot(path=str(SCREENSHOTS / "review-undo.png"))
    ann.context.close()


def test_an_incident_commander_reconciles_a_run_nobody_reported(
    desk: Desk, chromium: Any, make_operator: Any, target: tuple[Target, str]
) -> None:
    served, url = target
    _, action_id = started(desk, served, url)
    served.seed({"acct-1": {**BEFORE, "credit_limit": 2000}})  # it ran; nobody said so
    assert executions_overdue_sweep(now=timezone.now() + timedelta(hours=1)) == 1
    cora = signed_in(chromium, desk, make_operator, "cora", "incident_commander")
    cora.goto(f"{desk.url}/reconcile/")
    link = cora.locator(f"#reconcile-{action_id} a")
    link.focus()
    with cora.expect_navigation():
        cora.keyboard.press("Enter")
    assert cora.locator("#read-now").inner_text().startswith("Read through the ledger connector")
    assert cora.locator("#outcomes .differs").count() == 3
    shot(cora, "reconcile.png")
    cora.locator("input[name=outcome][value=succeeded]").focus()
    cora.keyboard.press("Space")
    cora.locator("#reconcile-reason").focus()
    cora.keyboard.type("credit limit reads 2000 on the ledger")
    with cora.expect_navigation():
        cora.keyboard.press("Enter")
    assert cora.url.endswith("/reconcile/")
    assert "settled as Succeeded" in cora.content()
    action = Action.objects.get(pk=action_id)
    assert action.status == Action.Status.SUCCEEDED and action.reconciled_by == "cora"
    cora.context.close()


def test_an_admin_backtests_a_stricter_policy_and_reads_the_agents_page(
    desk: Desk, chromium: Any, make_operator: Any, target: tuple[Target, str]
) -> None:
    served, url = target
    reviewed_domain(url)
    served.seed({"acct-1": BEFORE})
    token = agent_token("clerk", "accounts", "set_record:update", "read_record:read")
    for n in range(3):
        body = proposal(tool="read_record", verb="read", params={"n": n}, pre_action_state=None)
        assert propose(desk, token, body).json()["status"] == "allowed"
    ada = signed_in(chromium, desk, make_operator, "ada", "admin")
    ada.goto(f"{desk.url}/policies/?domain=accounts")
    document = json.loads(ada.locator("#b-document").input_value())
    document["rules"].insert(
        0,
        {
            "id": "reads-need-a-look",
            "match": {"verbs": ["read"]},
            "outcome": "escalate",
            "tier": 1,
            "reason": "reads of accounts are reviewed",
        },
    )
    ada.locator("#b-document").fill(json.dumps(document, indent=2))
    ada.locator("#b-since").focus()
    ada.keyboard.press("Control+A")
    ada.keyboard.type("1")
    with ada.expect_navigation():
        ada.keyboard.press("Enter")
    result = ada.locator("#backtest")
    assert "3 actions replayed, 3 verdicts would change" in result.inner_text()
    assert "reads-need-a-look" in ada.locator(".backtest-rules").inner_text()
    result.scroll_into_view_if_needed()
    shot(ada, "policy-backtest.png")

    with agent_socket(desk, token) as ws:
        state = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "killswitch.ack", "version": state["version"]}))
        ada.goto(f"{desk.url}/agents/")
        cell = ada.locator("#agent-clerk .agent-link")
        assert cell.get_attribute("data-sockets") == "1"
        shot(ada, "agents.png")
    ada.context.close()
