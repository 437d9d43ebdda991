"""The v1 agent API contract, over real HTTP against a running desk."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from approvals.models import Action, AuditEvent, IdempotencyRecord, ReasoningStep
from tests.agents import agent_token, call, decide, order, propose
from tests.servers import Desk, http, running_desk

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "cancel_order:update", "*:read")


def problem_fields(reply) -> list[str]:
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == reply.status
    return [error["field"] for error in body["errors"]]


# Verdicts


def test_allowed_order_under_the_cap(desk: Desk) -> None:
    reply = propose(desk, agent_token("buyer", "procurement", *ORDERS), order())
    assert reply.status == 201
    verdict = reply.json()
    assert verdict["status"] == "allowed" and verdict["may_execute"] is True
    assert verdict["rule"] == "allow-orders-under-cap"
    assert verdict["policy_version"] == 1
    assert reply.headers["Location"] == f"/api/v1/actions/{verdict['id']}"
    assert AuditEvent.objects.filter(action="action.allowed", object_id=verdict["id"]).exists()


def test_order_over_the_cap_is_pending_with_tier_and_expiry(desk: Desk) -> None:
    big = order(amount={"value": "500.01", "currency": "USD"})
    verdict = propose(desk, agent_token("buyer", "procurement", *ORDERS), big).json()
    assert (verdict["status"], verdict["rule"], verdict["tier"]) == ("pending", "spend-cap", 1)
    assert verdict["may_execute"] is False
    assert verdict["expires_at"] > timezone.now().isoformat()


def test_protected_target_is_denied_with_the_rule_and_reason(desk: Desk) -> None:
    token = agent_token("janitor", "devops", "delete_snapshot:delete")
    body = {
        "session_id": "s",
        "tool": "delete_snapshot",
        "verb": "delete",
        "params": {"snapshot_id": "snap-staging-critical-01"},
        "target_ids": ["snap-staging-critical-01"],
    }
    verdict = propose(desk, token, body).json()
    assert verdict["status"] == "denied"
    assert verdict["rule"] == "protected-targets"
    assert "protected target" in verdict["reason"]


def test_runaway_loop_escalates_after_three_orders(desk: Desk) -> None:
    token = agent_token("looper", "procurement", *ORDERS)
    statuses = [propose(desk, token, order()).json()["status"] for _ in range(5)]
    assert statuses == ["allowed", "allowed", "allowed", "pending", "pending"]


# Authentication and scope


def test_missing_wrong_expired_and_revoked_tokens_get_401(desk: Desk) -> None:
    from approvals.agents import token_revoke
    from approvals.audit import Actor
    from approvals.models import AgentToken

    assert http("POST", f"{desk.url}/api/v1/actions", order()).status == 401
    assert propose(desk, "idk_000000000000_nope", order()).status == 401
    expired = agent_token("old", "procurement", *ORDERS)
    AgentToken.objects.filter(prefix=expired[:16]).update(expires_at=timezone.now())
    reply = propose(desk, expired, order())
    assert reply.status == 401 and "expired" in reply.json()["detail"]
    revoked = agent_token("gone", "procurement", *ORDERS)
    token_revoke(prefix=revoked[:16], actor=Actor.system("tests"))
    reply = propose(desk, revoked, order())
    assert reply.status == 401 and "revoked" in reply.json()["detail"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert not Action.objects.exists()


def test_out_of_scope_is_403_and_audited(desk: Desk) -> None:
    token = agent_token("reader", "billing", "*:read", "update_discount:update")
    reply = propose(desk, token, {"session_id": "s", "tool": "drop_accounts", "verb": "delete"})
    assert reply.status == 403
    assert "may not delete with drop_accounts" in reply.json()["detail"]
    event = AuditEvent.objects.get(action="action.out_of_scope")
    assert event.actor == "reader" and event.data["tool"] == "drop_accounts"
    assert not Action.objects.exists()
    assert not IdempotencyRecord.objects.exists(), "a refused request must not hold its key"


# Bad input


def test_missing_idempotency_key_is_400(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    reply = http(
        "POST", f"{desk.url}/api/v1/actions", order(), {"Authorization": f"Bearer {token}"}
    )
    assert reply.status == 400 and "Idempotency-Key" in reply.json()["detail"]


def test_malformed_json_is_400(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    reply = http(
        "POST",
        f"{desk.url}/api/v1/actions",
        raw=b'{"tool": ',
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k"},
    )
    assert reply.status == 400 and reply.json()["title"] == "Malformed JSON"
    assert not IdempotencyRecord.objects.exists()


def test_invalid_fields_are_named_and_nothing_is_written(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    bad = order(verb="obliterate", amount={"value": "-5", "currency": "dollars"}, surprise=1)
    reply = propose(desk, token, bad)
    assert reply.status == 422
    fields = problem_fields(reply)
    assert {"verb", "amount.value", "amount.currency", "surprise"} <= set(fields)
    blast = order(blast_radius={"records": 20, "population": 10})
    assert problem_fields(propose(desk, token, blast)) == ["blast_radius"]
    assert not Action.objects.exists() and not IdempotencyRecord.objects.exists()


def test_body_over_the_limit_is_413(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    huge = order(pre_action_state={"blob": "x" * (1024 * 1024)})
    reply = propose(desk, token, huge)
    assert reply.status == 413
    assert not Action.objects.exists()
    # Past what the server would read into memory at all: still a problem document.
    huger = order(pre_action_state={"blob": "x" * (4 * 1024 * 1024)})
    reply = propose(desk, token, huger)
    assert reply.status == 413 and reply.json()["title"] == "Request too large"


def test_floats_anywhere_in_the_free_form_fields_are_kept(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    body = order(
        params={"sku": "GPU-A100", "qty": 2, "unit_price": 90.25, "weight_kg": 1.25},
        amount={"value": 180.5, "currency": "USD"},
        pre_action_state={"stock": 0.5, "ratio": 1e-3},
    )
    reply = propose(desk, token, body)
    assert reply.status == 201, reply.body
    action = Action.objects.get()
    assert action.params["weight_kg"] == 1.25 and action.pre_action_state["ratio"] == 0.001
    assert str(action.amount) == "180.5000"


def test_unknown_reasoning_step_is_409_and_nothing_is_written(desk: Desk) -> None:
    """Well-formed, but it names a step the session does not have (yet): a conflict with the
    session's state, not invalid input."""
    token = agent_token("buyer", "procurement", *ORDERS)
    reply = propose(desk, token, order(step_index=7))
    assert reply.status == 409 and problem_fields(reply) == ["step_index"]
    assert not Action.objects.exists()
    assert not IdempotencyRecord.objects.exists()


# Idempotency


def test_same_key_same_body_replays_the_answer(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    first = propose(desk, token, order(), key="order-1")
    again = propose(desk, token, order(), key="order-1")
    assert again.status == first.status == 201
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert Action.objects.count() == 1


def test_same_key_other_body_is_422_with_its_own_problem_type(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    propose(desk, token, order(), key="order-1")
    reply = propose(desk, token, order(params={"qty": 3, "unit_price": 60}), key="order-1")
    assert reply.status == 422 and reply.json()["title"] == "Idempotency-Key reused"
    assert problem_fields(reply) == ["Idempotency-Key"]
    # Distinct from "still in flight", which a client may retry.
    assert reply.json()["type"] == "urn:incidentdesk:problem:idempotency-key-reused"
    assert Action.objects.count() == 1


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="embedded mode's writers take turns: a repeat waits for the first instead",
)
def test_same_key_while_the_first_is_in_flight_is_409_and_freed_if_it_dies(desk: Desk) -> None:
    from approvals.api import Claim, idempotency_claim
    from approvals.models import Agent

    token = agent_token("buyer", "procurement", *ORDERS)
    agent = Agent.objects.get(name="buyer")

    class Died(Exception):
        pass

    with pytest.raises(Died), transaction.atomic():
        # Another request holds the key, mid-work.
        held = idempotency_claim(agent_id=agent.pk, key="busy", fingerprint="first")
        assert held.claim is Claim.NEW
        reply = propose(desk, token, order(), key="busy")
        assert reply.status == 409 and reply.json()["title"] == "Request in progress"
        assert reply.json()["type"] == "urn:incidentdesk:problem:request-in-progress"
        raise Died
    assert not Action.objects.exists()
    # It rolled back, and let go of the key with it.
    assert propose(desk, token, order(), key="busy").status == 201


def test_twenty_threads_with_one_key_create_one_action(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    replies = []
    barrier = threading.Barrier(20)

    def send() -> None:
        barrier.wait()
        replies.append(propose(desk, token, order(), key="same-for-all"))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Action.objects.count() == 1
    assert {r.status for r in replies} <= {201, 409}
    created = [r.json() for r in replies if r.status == 201]
    assert created and all(body == created[0] for body in created)


# Reading verdicts


def test_get_and_long_poll_until_an_operator_decides(desk: Desk, approver) -> None:

    token = agent_token("buyer", "procurement", *ORDERS)
    verdict = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
    started = time.monotonic()
    unchanged = call(desk, token, "GET", f"/actions/{verdict['id']}?wait=1")
    assert unchanged.json()["status"] == "pending" and time.monotonic() - started >= 0.9

    def decide_later() -> None:
        time.sleep(0.5)
        decide(
            action_id=verdict["id"],
            user=approver,
            verdict="modify",
            params={"sku": "GPU-A100", "qty": 1, "unit_price": 90},
        )
        connections.close_all()

    threading.Thread(target=decide_later).start()
    started = time.monotonic()
    changed = call(desk, token, "GET", f"/actions/{verdict['id']}?wait=10").json()
    assert time.monotonic() - started < 5
    # Modified: a new proposal, still pending until someone else approves it.
    assert changed["status"] == "pending" and changed["may_execute"] is False
    assert changed["params"]["qty"] == 1 and changed["modified"] is True


def test_a_verdict_decided_before_the_long_poll_is_answered_at_once(desk: Desk, approver) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    verdict = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
    decide(action_id=verdict["id"], user=approver, verdict="reject", reason="not now")
    started = time.monotonic()
    answer = call(desk, token, "GET", f"/actions/{verdict['id']}?wait=10").json()
    assert answer["status"] == "rejected" and time.monotonic() - started < 2
    allowed = propose(desk, token, order()).json()
    started = time.monotonic()
    assert call(desk, token, "GET", f"/actions/{allowed['id']}?wait=10").json()["may_execute"]
    assert time.monotonic() - started < 2


def test_bad_wait_and_unknown_action(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    assert call(desk, token, "GET", f"/actions/{uuid.uuid4()}").status == 404
    assert call(desk, token, "GET", "/actions/not-a-uuid").status == 404
    verdict = propose(desk, token, order()).json()
    reply = call(desk, token, "GET", f"/actions/{verdict['id']}?wait=999")
    assert reply.status == 422 and problem_fields(reply) == ["wait"]
    other = agent_token("stranger", "procurement", *ORDERS)
    assert call(desk, other, "GET", f"/actions/{verdict['id']}").status == 404
    # The same agent, through a token for another domain, does not see it either.
    elsewhere = agent_token("buyer", "billing", "*:read", "*:update")
    assert call(desk, elsewhere, "GET", f"/actions/{verdict['id']}").status == 404
    report = {"ok": True, "result": {}, "post_state": {}}
    assert call(desk, elsewhere, "POST", f"/actions/{verdict['id']}/result", report).status == 404


# Results


def test_result_of_an_allowed_action_is_recorded(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    verdict = propose(desk, token, order()).json()
    report = {"ok": True, "result": {"order_id": "PO-1"}, "post_state": {"open_orders": 1}}
    reply = call(desk, token, "POST", f"/actions/{verdict['id']}/result", report)
    assert reply.status == 200 and reply.json()["status"] == "succeeded"
    again = call(desk, token, "POST", f"/actions/{verdict['id']}/result", report)
    assert again.status == 200, "a retried report is answered, not refused"
    action = Action.objects.get(pk=verdict["id"])
    assert action.post_state == {"open_orders": 1}
    assert (
        AuditEvent.objects.filter(action="action.succeeded", object_id=str(action.pk)).count() == 1
    )


def test_result_for_an_action_not_allowed_is_409_and_audited(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    pending = propose(desk, token, order(amount={"value": "900", "currency": "USD"})).json()
    reply = call(desk, token, "POST", f"/actions/{pending['id']}/result", {"ok": True})
    assert reply.status == 409
    assert Action.objects.get(pk=pending["id"]).status == "escalated"
    assert AuditEvent.objects.filter(
        action="action.result_refused", object_id=pending["id"]
    ).exists()


# Reasoning steps


def test_steps_are_recorded_in_order(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    steps = [
        {"index": 0, "kind": "thought", "content": "Stock of A100 is low."},
        {"index": 1, "kind": "tool_call", "content": "create_order", "data": {"qty": 2}},
    ]
    assert call(desk, token, "POST", "/sessions/run-9/steps", {"steps": steps}).status == 201
    assert call(desk, token, "POST", "/sessions/run-9/steps", {"steps": steps}).status == 201
    gap = call(
        desk,
        token,
        "POST",
        "/sessions/run-9/steps",
        {"steps": [{"index": 5, "kind": "thought", "content": "skip"}]},
    )
    assert gap.status == 409 and problem_fields(gap) == ["steps.0.index"]
    different = {"steps": [{"index": 0, "kind": "thought", "content": "different"}]}
    changed = call(desk, token, "POST", "/sessions/run-9/steps", different)
    assert changed.status == 409
    assert list(ReasoningStep.objects.order_by("index").values_list("index", "kind")) == [
        (0, "thought"),
        (1, "tool_call"),
    ]
    verdict = propose(desk, token, order(session_id="run-9", step_index=1)).json()
    assert Action.objects.get(pk=verdict["id"]).step_index == 1


# Limits and documents


def test_rate_limit_answers_429_with_retry_after(tmp_path, django_db_setup) -> None:
    token = agent_token("chatty", "procurement", *ORDERS)
    with running_desk(tmp_path, API_RATE_LIMIT="3") as desk:
        # The limit counts per minute of the clock: start well inside one, so that the six
        # requests below fall in the same window however slow the machine is.
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        statuses = [call(desk, token, "GET", f"/actions/{uuid.uuid4()}").status for _ in range(5)]
        assert statuses == [404, 404, 404, 429, 429]
        reply = call(desk, token, "GET", f"/actions/{uuid.uuid4()}")
        assert 1 <= int(reply.headers["Retry-After"]) <= 61


def test_openapi_document_and_api_page(desk: Desk) -> None:
    spec = http("GET", f"{desk.url}/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert {
        "/actions",
        "/actions/{action_id}",
        "/actions/{action_id}/result",
        "/sessions/{session_id}/steps",
        "/actions/explain",
    } <= spec["paths"].keys()
    assert "ActionIn" in spec["components"]["schemas"]
    page = http("GET", f"{desk.url}/api/")
    assert page.status == 200 and b"POST /api/v1/actions" in page.body


def test_explain_names_the_rule_and_records_no_action(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    reply = call(
        desk, token, "POST", "/actions/explain", order(amount={"value": "750", "currency": "USD"})
    )
    body = reply.json()
    assert (body["outcome"], body["rule"], body["in_scope"]) == ("escalate", "spend-cap", True)
    assert [t["rule"] for t in body["trace"]] == [
        "allow-reads",
        "flapping",
        "order-rate",
        "spend-cap",
        "unregistered-tool",
        "flapping-guard",
    ]
    assert not Action.objects.exists()


def test_the_server_seals_audit_events_soon_after_commit(desk: Desk) -> None:
    verdict = propose(desk, agent_token("buyer", "procurement", *ORDERS), order()).json()
    deadline = time.monotonic() + 10
    event = AuditEvent.objects.get(action="action.allowed", object_id=verdict["id"])
    while event.seq is None and time.monotonic() < deadline:
        time.sleep(0.05)
        event.refresh_from_db()
    assert event.seq is not None and len(event.hash) == 64
