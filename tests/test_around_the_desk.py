"""Ways around the desk, tried from outside: each must be closed."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from approvals.audit import Actor
from approvals.killswitches import killswitch_effects, killswitch_set
from approvals.models import Action, AuditEvent
from approvals.queue import effective_params, params_fingerprint
from tests.agents import agent_token, call, order, propose
from tests.servers import Browser, Desk

pytestmark = pytest.mark.django_db(transaction=True)

S = Action.Status
ORDERS = ("create_order:create", "*:read")


def problem(reply: Any) -> dict[str, Any]:
    assert reply.headers["Content-Type"] == "application/problem+json", reply.body
    return reply.json()


# The verb, the amount and the targets come from the registry, not the agent's word.


def test_a_read_scope_cannot_delete_by_calling_the_deletion_a_read(desk: Desk) -> None:
    token = agent_token("reader", "devops", "*:read")
    lie = {
        "session_id": "s",
        "tool": "delete_snapshot",
        "verb": "read",
        "params": {"snapshot_id": "snap-prod-db"},
        "target_ids": ["snap-prod-db"],
    }
    reply = propose(desk, token, lie)
    assert reply.status == 422
    assert problem(reply)["errors"][0]["field"] == "verb"
    assert "registered as delete" in problem(reply)["detail"]
    # Without a verb, the registered one is checked against the scopes.
    honest = {k: v for k, v in lie.items() if k != "verb"}
    reply = propose(desk, token, honest)
    assert reply.status == 403 and "may not delete" in problem(reply)["detail"]
    assert not Action.objects.exists()


def test_the_registered_verb_meets_the_protected_target_rule(desk: Desk) -> None:
    token = agent_token("cleaner", "devops", "*:read", "delete_snapshot:delete")
    body = {"session_id": "s", "tool": "delete_snapshot", "params": {"snapshot_id": "snap-prod-db"}}
    verdict = propose(desk, token, body).json()
    assert (verdict["status"], verdict["rule"]) == ("denied", "protected-targets")
    action = Action.objects.get()
    assert (action.verb, action.target_ids) == ("delete", ["snap-prod-db"])


def test_leaving_the_amount_out_does_not_skip_the_spending_cap(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    body = order(params={"sku": "CAT6-BOX", "qty": 1000, "unit_price": 4.5})
    del body["amount"]
    verdict = propose(desk, token, body).json()
    assert (verdict["status"], verdict["rule"]) == ("pending", "spend-cap")
    action = Action.objects.get()
    assert (f"{action.amount:f}", action.currency) == ("4500.0000", "USD")


def test_an_amount_that_contradicts_the_params_is_refused(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    body = order(
        params={"sku": "CAT6-BOX", "qty": 1000, "unit_price": 4.5},
        amount={"value": "45.00", "currency": "USD"},
    )
    reply = propose(desk, token, body)
    assert reply.status == 422 and problem(reply)["errors"][0]["field"] == "amount"
    assert "4500" in problem(reply)["detail"]
    # A negative amount would pass any cap; a huge one fits no column, or no number at all.
    for qty in (-1000, 10**20, "1e1000000"):
        reply = propose(desk, token, order(params={"qty": qty}, amount=None))
        assert reply.status == 422 and problem(reply)["errors"][0]["field"] == "params.qty"
    missing = propose(desk, token, {**order(), "params": {"sku": "CAT6-BOX", "qty": 3}})
    assert missing.status == 422 and problem(missing)["errors"][0]["field"] == "params.unit_price"
    assert not Action.objects.exists()


def test_targets_come_from_the_params_and_must_be_one_path_segment(desk: Desk) -> None:
    token = agent_token("support", "billing", "update_discount:update", "*:read")
    body = {
        "session_id": "s",
        "tool": "update_discount",
        "params": {"account_ids": ["acct-1", "acct-2"], "discount_rate": 0.5},
        "target_ids": ["acct-9"],
    }
    reply = propose(desk, token, body)
    assert reply.status == 422 and problem(reply)["errors"][0]["field"] == "target_ids"
    body["params"]["account_ids"] = ["acct-1", ".."]
    del body["target_ids"]
    reply = propose(desk, token, body)
    assert reply.status == 422
    assert problem(reply)["errors"][0]["field"] == "params.account_ids.1"
    for bad in ("..", ".", "a/b"):
        reply = propose(
            desk,
            token,
            {**body, "tool": "note", "verb": "update", "params": {}, "target_ids": [bad]},
        )
        assert reply.status == 422 and problem(reply)["errors"][0]["field"] == "target_ids.0"
    assert not Action.objects.exists()


def test_an_unregistered_tool_is_escalated_whatever_its_verb(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", "*:read")
    reply = propose(desk, token, {"session_id": "s", "tool": "peek_vendor_portal", "verb": "read"})
    verdict = reply.json()
    assert (verdict["status"], verdict["rule"]) == ("pending", "unregistered-tool")
    no_verb = propose(desk, token, {"session_id": "s", "tool": "peek_vendor_portal"})
    assert no_verb.status == 422 and problem(no_verb)["errors"][0]["field"] == "verb"


# Explain: the same function as a proposal, every step shown, and audited.


def test_explain_shows_every_step_including_the_guards_and_is_audited(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    reply = call(desk, token, "POST", "/actions/explain", order())
    body = reply.json()
    steps = [step["rule"] for step in body["trace"]]
    assert steps[-2:] == ["unregistered-tool", "flapping-guard"]
    assert body["rule"] == "allow-orders-under-cap" and body["verb"] == "create"
    assert body["amount"] == {"value": "180.0000", "currency": "USD"}
    explained = AuditEvent.objects.get(action="action.explained")
    assert explained.data["rule"] == "allow-orders-under-cap"
    assert not Action.objects.exists()
    # Explain and the proposal agree, by construction.
    assert propose(desk, token, order()).json()["rule"] == body["rule"]


# A modification is a new proposal, and someone else approves it.


def _browser(desk: Desk, user: Any, action: Action) -> Browser:
    from tests.conftest import session_cookie

    browser = Browser(desk.url, session_cookie(user))
    status, _ = browser.request("GET", f"/actions/{action.pk}/")  # sets the CSRF cookie
    assert status == 200
    return browser


def _decide(browser: Browser, action: Action, **form: str) -> tuple[int, str]:
    action.refresh_from_db()
    form.setdefault("params_seen", params_fingerprint(effective_params(action)))
    return browser.htmx_post(f"/actions/{action.pk}/decide", form)


def test_one_approver_cannot_rewrite_an_order_and_let_it_run_alone(
    desk: Desk, make_operator: Any
) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    held = propose(
        desk,
        token,
        order(
            params={"sku": "CAT6-BOX", "qty": 100, "unit_price": 9},
            amount={"value": "900", "currency": "USD"},
        ),
    )
    assert held.json()["status"] == "pending"
    action = Action.objects.get()
    ann = _browser(desk, make_operator("ann", "approver"), action)
    status, _ = _decide(
        ann,
        action,
        verdict="modify",
        reason="more",
        params='{"sku": "CAT6-BOX", "qty": 100000, "unit_price": 9}',
    )
    assert status == 200
    action.refresh_from_db()
    assert action.status == S.ESCALATED and action.modified_by == "ann"
    assert f"{action.amount:f}" == "900000.0000"  # worked out again from the new params
    assert action.rule == "spend-cap"
    verdict = call(desk, token, "GET", f"/actions/{action.pk}").json()
    assert verdict["may_execute"] is False
    # The one who modified it cannot be the approval that lets it run.
    status, html = _decide(ann, action, verdict="approve")
    assert status == 403 and "another approver" in html
    ben = _browser(desk, make_operator("ben", "approver"), action)
    assert _decide(ben, action, verdict="approve")[0] == 200
    verdict = call(desk, token, "GET", f"/actions/{action.pk}").json()
    assert (verdict["status"], verdict["may_execute"], verdict["decided_by"]) == (
        "modified",
        True,
        "ben",
    )
    assert verdict["params"]["qty"] == 100000


def test_a_modification_the_policy_denies_is_refused_naming_the_rule(
    desk: Desk, make_operator: Any
) -> None:
    token = agent_token("cleaner", "devops", "delete_snapshot:delete")
    propose(
        desk,
        token,
        {"session_id": "s", "tool": "delete_snapshot", "params": {"snapshot_id": "snap-dev-7"}},
    )
    action = Action.objects.get()
    assert action.status == S.ESCALATED
    ida = _browser(desk, make_operator("ida", "incident_commander"), action)
    status, html = _decide(
        ida,
        action,
        verdict="modify",
        reason="the other one",
        params='{"snapshot_id": "snap-prod-db"}',
    )
    assert status == 422 and "protected-targets" in html
    action.refresh_from_db()
    assert action.modified_params is None and action.target_ids == ["snap-dev-7"]


def test_a_modification_may_not_move_a_snapshot_onto_other_targets(
    desk: Desk, make_operator: Any
) -> None:
    token = agent_token("support", "billing", "update_discount:update")
    ids = [f"acct-{n}" for n in range(200)]
    propose(
        desk,
        token,
        {
            "session_id": "s",
            "tool": "update_discount",
            "params": {"account_ids": ids, "discount_rate": 0.5},
            "pre_action_state": {i: {"discount_rate": 0} for i in ids},
        },
    )
    action = Action.objects.get()
    assert (action.status, action.rule) == (S.ESCALATED, "blast-radius")
    ida = _browser(desk, make_operator("ida", "incident_commander"), action)
    other = json.dumps({"account_ids": ["acct-900"], "discount_rate": 0.5})
    status, html = _decide(ida, action, verdict="modify", reason="another one", params=other)
    assert status == 422 and "other targets" in html
    # The same targets, another rate: a new proposal, judged again.
    status, _ = _decide(
        ida,
        action,
        verdict="modify",
        reason="a smaller sale",
        params=json.dumps({"account_ids": ids, "discount_rate": 0.1}),
    )
    assert status == 200 and Action.objects.get().modified_by == "ida"


def test_a_decision_must_say_which_params_it_saw(desk: Desk, make_operator: Any) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    propose(
        desk,
        token,
        order(
            params={"sku": "X", "qty": 10, "unit_price": 90},
            amount={"value": "900", "currency": "USD"},
        ),
    )
    action = Action.objects.get()
    ann = _browser(desk, make_operator("ann", "approver"), action)
    status, html = ann.htmx_post(f"/actions/{action.pk}/decide", {"verdict": "approve"})
    assert status == 422 and "params_seen" in html
    assert Action.objects.get().status == S.ESCALATED


# Kill switches: every unexecuted action, however old; approvals lapse; deciding waits.


def test_an_engage_cancels_old_approvals_and_old_approvals_lapse(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    old = propose(desk, token, order(), key="old-order").json()
    fresh = propose(desk, token, order()).json()
    two_days = timezone.now() - timedelta(days=2)
    Action.objects.filter(pk=old["id"]).update(created_at=two_days, updated_at=two_days)
    change = killswitch_set(
        scope="procurement", engaged=True, actor=Actor("user", "otto"), reason="runaway"
    )
    killswitch_effects(change_id=change.pk)
    assert Action.objects.get(pk=old["id"]).status == S.CANCELLED
    assert Action.objects.get(pk=fresh["id"]).status == S.CANCELLED
    killswitch_set(scope="procurement", engaged=False, actor=Actor("user", "otto"), reason="ok")
    # A client retrying the proposal is told what became of it, not the stored "go ahead".
    replayed = propose(desk, token, order(), key="old-order")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert (replayed.json()["status"], replayed.json()["may_execute"]) == ("cancelled", False)
    # A yes older than APPROVAL_TTL may not start, also one recorded without a deadline.
    allowed = propose(desk, token, order()).json()
    assert allowed["may_execute"] is True and allowed["run_by"]
    Action.objects.filter(pk=allowed["id"]).update(run_by=timezone.now() - timedelta(seconds=1))
    assert call(desk, token, "GET", f"/actions/{allowed['id']}").json()["may_execute"] is False
    unbounded = propose(desk, token, order(), key="legacy").json()
    Action.objects.filter(pk=unbounded["id"]).update(
        run_by=None, created_at=timezone.now() - timedelta(hours=1)
    )
    assert call(desk, token, "GET", f"/actions/{unbounded['id']}").json()["may_execute"] is False
    assert propose(desk, token, order(), key="legacy").json()["may_execute"] is False


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's advisory locks")
def test_a_decision_in_flight_cannot_escape_an_engage(desk: Desk, make_operator: Any) -> None:
    """An engage holds its switch's lock until it commits; a decision takes the shared lock, so
    it waits, then finds the switch engaged."""
    token = agent_token("buyer", "procurement", *ORDERS)
    propose(
        desk,
        token,
        order(
            amount={"value": "900", "currency": "USD"},
            params={"sku": "X", "qty": 10, "unit_price": 90},
        ),
    )
    action = Action.objects.get()
    ann = _browser(desk, make_operator("ann", "approver"), action)
    engaging, done = threading.Event(), threading.Event()

    def engage() -> None:
        try:
            with transaction.atomic():
                killswitch_set(
                    scope="procurement", engaged=True, actor=Actor("user", "otto"), reason="stop"
                )
                engaging.set()
                done.wait(20)
        finally:
            connections.close_all()

    thread = threading.Thread(target=engage)
    thread.start()
    assert engaging.wait(10)
    answer: list[tuple[int, str]] = []
    decider = threading.Thread(
        target=lambda: answer.append(_decide(ann, action, verdict="approve"))
    )
    decider.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            if cursor.fetchone()[0]:
                break
        time.sleep(0.05)
    else:
        done.set()
        raise AssertionError("the decision did not wait for the engage")
    done.set()
    thread.join(10)
    decider.join(15)
    assert answer and answer[0][0] == 423, answer
    assert Action.objects.get().status == S.ESCALATED
