"""What is approved is what runs: an approval covers the targets' state the approver saw, the
agent says when it starts and with which params, and a run whose outcome nobody reported lands
in the reconcile queue, where a person settles it."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.urls import reverse
from django.utils import timezone
from incidentdesk_client import Desk as AgentDesk
from incidents.target import Target

from approvals.audit import Actor
from approvals.models import Action, Approval, AuditEvent, Domain
from approvals.policy import Match, PolicyDocument, Rule, domain_ensure, policy_publish
from approvals.queue import executions_overdue_sweep
from approvals.rollbacks import Selection, plan_create
from tests.agents import agent_token, call, decide_on_the_desk, propose
from tests.rollback_helpers import connect
from tests.servers import Desk, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

S = Action.Status
BEFORE = {"id": "acct-1", "plan": "pro", "credit_limit": 1000}
MOVED = {**BEFORE, "credit_limit": 5000}  # someone else changed it after the approval
PARAMS = {"credit_limit": 2000}


def reviewed_domain(url: str | None, slug: str = "accounts") -> Domain:
    """Every update is escalated at tier 1; with `url`, set_record's connector reads the test
    target."""
    domain, _ = domain_ensure(
        slug=slug, name=slug.title(), description="", actor=Actor.system("tests")
    )
    rule = Rule(
        id="review-every-change",
        match=Match(verbs=["update"]),
        outcome="escalate",
        tier=1,
        reason="every change",
    )
    document = PolicyDocument(rules=[rule], default_outcome="allow", unregistered="allow")
    policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    if url:
        connect(domain, url, "set_record")
    return domain


def proposal(**overrides: Any) -> dict[str, Any]:
    return {
        "session_id": "run-1",
        "tool": "set_record",
        "verb": "update",
        "params": PARAMS,
        "target_ids": ["acct-1"],
        "pre_action_state": BEFORE,
        **overrides,
    }


def escalated(desk: Desk, served: Target, url: str) -> tuple[str, str]:
    reviewed_domain(url)
    served.seed({"acct-1": BEFORE})
    token = agent_token("clerk", "accounts", "set_record:update")
    reply = propose(desk, token, proposal())
    assert reply.status == 201 and reply.json()["status"] == "pending", reply.json()
    return token, reply.json()["id"]


def test_an_approved_action_whose_targets_changed_goes_back_to_the_queue(
    desk: Desk, target: tuple[Target, str], approver: AbstractUser, login: Any
) -> None:
    served, url = target
    token, action_id = escalated(desk, served, url)
    assert Action.objects.get(pk=action_id).desk_snapshot == BEFORE
    decide_on_the_desk(desk, approver, action_id, "approve", reason="limit looks right")
    served.seed({"acct-1": MOVED})

    refused = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})

    assert refused.status == 409, refused.json()
    body = refused.json()
    assert body["title"] == "State changed since approval"
    assert body["verdict"]["status"] == "pending" and body["verdict"]["may_execute"] is False
    assert body["changed"] == [{"target": "acct-1", "fields": ["credit_limit"]}]
    action = Action.objects.get(pk=action_id)
    assert action.status == S.ESCALATED and action.tier == 1
    assert action.approved_state == BEFORE and action.desk_snapshot == MOVED
    assert action.state_changed_at is not None and action.decided_by == ""
    assert not Approval.objects.filter(action=action).exists()
    event = AuditEvent.objects.get(action="escalation.state_changed", object_id=action_id)
    assert event.data["changed"] == {"acct-1": ["credit_limit"]}
    assert event.data["approvals_set_aside"] == 1
    page = login(approver).get(reverse("review", args=[action_id])).content.decode()
    assert 'id="state-changed"' in page and "State changed since approval" in page
    start = page.index('id="state-changed"')
    changed = page[start : page.index("</table>", start)]
    assert '<span class="differs">  &quot;credit_limit&quot;: 1000</span>' in changed
    assert '<span class="differs">  &quot;credit_limit&quot;: 5000</span>' in changed

    # Approved again, of the state as it is now: it starts.
    decide_on_the_desk(desk, approver, action_id, "approve", reason="5000 is fine too")
    started = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    assert started.status == 200, started.json()
    assert started.json()["status"] == "executing"
    action.refresh_from_db()
    assert action.status == S.EXECUTING and action.params_mismatch is False
    assert action.execute_by is not None and action.execute_by > timezone.now()
    # Saying so again (a retry) changes nothing.
    again = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    assert again.status == 200 and again.json()["status"] == "executing"
    assert AuditEvent.objects.filter(action="action.executing", object_id=action_id).count() == 1
    done = call(
        desk, token, "POST", f"/actions/{action_id}/result", {"ok": True, "post_state": MOVED}
    )
    assert done.status == 200 and done.json()["status"] == "succeeded"


def test_an_approved_action_whose_targets_are_unchanged_starts(
    desk: Desk, target: tuple[Target, str], approver: AbstractUser
) -> None:
    served, url = target
    token, action_id = escalated(desk, served, url)
    decide_on_the_desk(desk, approver, action_id, "approve", reason="fine")
    started = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    assert started.status == 200 and started.json()["status"] == "executing", started.json()
    assert not AuditEvent.objects.filter(action="escalation.state_changed").exists()


def test_an_unreadable_target_does_not_let_an_approved_action_start(
    desk: Desk, target: tuple[Target, str], approver: AbstractUser
) -> None:
    served, url = target
    token, action_id = escalated(desk, served, url)
    decide_on_the_desk(desk, approver, action_id, "approve", reason="fine")
    served.read_delay = 4  # past the desk's DESK_SNAPSHOT_SECONDS (2)
    try:
        refused = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    finally:
        served.read_delay = 0
    assert refused.status == 503, refused.json()
    assert "could not read them again" in refused.json()["detail"]
    assert Action.objects.get(pk=action_id).status == S.APPROVED


def test_params_other_than_those_allowed_are_flagged_on_the_action_and_its_trail(
    desk: Desk, target: tuple[Target, str], login: Any, viewer: AbstractUser
) -> None:
    served, url = target
    reviewed_domain(url)
    served.seed({"acct-1": BEFORE})
    token = agent_token("clerk", "accounts", "read_record:read")
    allowed = propose(desk, token, proposal(tool="read_record", verb="read", params={"f": 1}))
    assert allowed.json()["status"] == "allowed", allowed.json()
    action_id = allowed.json()["id"]
    started = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": {"f": 9}})
    assert started.status == 200 and started.json()["status"] == "executing"
    action = Action.objects.get(pk=action_id)
    assert action.params_mismatch is True and action.ran_params == {"f": 9}
    event = AuditEvent.objects.get(action="action.params_mismatch", object_id=action_id)
    assert "f: 1 -> 9" in event.summary
    page = login(viewer).get(reverse("review", args=[action_id])).content.decode()
    assert 'id="params-mismatch"' in page
    assert "<code>f</code>: allowed <del>1</del>, ran <ins>9</ins>" in page
    timeline = login(viewer).get(reverse("session", args=[action.session_id])).content.decode()
    assert "with params other than those allowed" in timeline


def test_only_an_allowed_or_approved_action_starts(desk: Desk, target: tuple[Target, str]) -> None:
    served, url = target
    token, action_id = escalated(desk, served, url)
    refused = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS})
    assert refused.status == 409 and refused.json()["title"] == "Not allowed to run"
    bad = call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": [1]})
    assert bad.status == 422 and bad.json()["errors"][0]["field"] == "params"


def test_the_client_waits_again_when_the_state_changed_and_then_runs(
    desk: Desk, target: tuple[Target, str], approver: AbstractUser
) -> None:
    served, url = target
    reviewed_domain(url)
    served.seed({"acct-1": BEFORE})
    client = AgentDesk(desk.url, agent_token("clerk", "accounts", "set_record:update"))
    try:
        made = client.session("run-1").propose(
            "set_record", PARAMS, verb="update", target_ids=["acct-1"], pre_action_state=BEFORE
        )
        assert made.status == "pending"
        decide_on_the_desk(desk, approver, made.id, "approve", reason="first look")
        served.seed({"acct-1": MOVED})
        ran: list[dict[str, Any]] = []
        waiter = threading.Thread(target=lambda: ran.append(made.wait()))
        waiter.start()
        wait_until(
            lambda: Action.objects.get(pk=made.id).status == S.ESCALATED, 10, "back in the queue"
        )
        assert not ran  # it waits for a person again
        decide_on_the_desk(desk, approver, made.id, "approve", reason="second look")
        waiter.join(timeout=30)
    finally:
        client.close()
    assert ran == [PARAMS]
    assert made.status == "executing"
    assert Action.objects.get(pk=made.id).status == S.EXECUTING


def started(desk: Desk, served: Target, url: str) -> tuple[str, str]:
    """An allowed set_record (no review) that the agent started and never reported."""
    domain, _ = domain_ensure(
        slug="ledger", name="Ledger", description="", actor=Actor.system("tests")
    )
    document = PolicyDocument(rules=[], default_outcome="allow", unregistered="allow")
    policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    connect(domain, url, "set_record")
    served.seed({"acct-1": BEFORE})
    token = agent_token("clerk", "ledger", "set_record:update")
    reply = propose(desk, token, proposal())
    action_id = reply.json()["id"]
    assert reply.json()["status"] == "allowed", reply.json()
    assert (
        call(desk, token, "POST", f"/actions/{action_id}/executing", {"params": PARAMS}).status
        == 200
    )
    return token, action_id


def test_a_started_action_without_a_result_is_reconciled_by_a_person(
    desk: Desk,
    target: tuple[Target, str],
    login: Any,
    commander: AbstractUser,
    approver: AbstractUser,
) -> None:
    served, url = target
    token, action_id = started(desk, served, url)
    assert executions_overdue_sweep() == 0  # not overdue yet
    served.seed({"acct-1": {**BEFORE, "credit_limit": 2000}})  # it did run, silently
    later = timezone.now() + timedelta(seconds=3600)
    assert executions_overdue_sweep(now=later) == 1
    assert executions_overdue_sweep(now=later) == 0  # safe to run twice
    action = Action.objects.get(pk=action_id)
    assert action.reconcile_since == later
    assert AuditEvent.objects.filter(action="action.reconcile_needed", object_id=action_id).exists()

    queue = login(approver).get(reverse("reconcile")).content.decode()
    assert f'id="reconcile-{action_id}"' in queue and "1 action waiting." in queue
    page = login(approver).get(reverse("reconcile-action", args=[action_id])).content.decode()
    assert 'id="read-now"' in page and "Read through the ledger connector just now." in page
    # Before, expected after and now: credit_limit marked in all three columns.
    assert '<span class="differs">  &quot;credit_limit&quot;: 1000</span>' in page
    assert page.count('<span class="differs">  &quot;credit_limit&quot;: 2000</span>') == 2
    assert 'name="outcome"' not in page  # an approver may read, not settle

    denied = login(approver).post(
        reverse("reconcile-settle", args=[action_id]), {"outcome": "succeeded", "reason": "x"}
    )
    assert denied.status_code == 403
    ic = login(commander)
    missing = ic.post(reverse("reconcile-settle", args=[action_id]), {"outcome": "succeeded"})
    assert missing.status_code == 302
    assert Action.objects.get(pk=action_id).status == S.EXECUTING
    settled = ic.post(
        reverse("reconcile-settle", args=[action_id]),
        {"outcome": "succeeded", "reason": "the limit is 2000 on the target"},
    )
    assert settled.status_code == 302 and settled["Location"] == reverse("reconcile")
    action.refresh_from_db()
    assert action.status == S.SUCCEEDED and action.reconciled_by == commander.username
    assert action.post_state == {**BEFORE, "credit_limit": 2000}  # the desk's own read
    event = AuditEvent.objects.get(action="action.reconciled", object_id=action_id)
    assert event.data["outcome"] == "succeeded" and event.actor == commander.username
    # A report arriving after that is refused, and recorded.
    late = call(desk, token, "POST", f"/actions/{action_id}/result", {"ok": False})
    assert late.status == 409


def test_a_late_report_settles_an_overdue_action_itself(
    desk: Desk, target: tuple[Target, str]
) -> None:
    served, url = target
    token, action_id = started(desk, served, url)
    executions_overdue_sweep(now=timezone.now() + timedelta(seconds=3600))
    reported = call(desk, token, "POST", f"/actions/{action_id}/result", {"ok": True})
    assert reported.status == 200 and reported.json()["status"] == "succeeded"
    action = Action.objects.get(pk=action_id)
    assert action.reconcile_since is None
    event = AuditEvent.objects.get(action="action.succeeded", object_id=action_id)
    assert event.data["reported_overdue"] is True


def test_rollback_plans_and_kill_switches_count_actions_whose_outcome_is_unknown(
    desk: Desk, target: tuple[Target, str]
) -> None:
    from approvals.killswitches import killswitch_effects, killswitch_set

    served, url = target
    token, action_id = started(desk, served, url)
    plan = plan_create(
        actor=Actor("user", "cora"), selection=Selection(scope="session", session="clerk/run-1")
    )
    assert list(plan.steps.values_list("action_id", flat=True)) == [
        Action.objects.get(pk=action_id).pk
    ]
    change = killswitch_set(
        scope="ledger", engaged=True, actor=Actor("user", "otto"), reason="stop"
    )
    done = killswitch_effects(change_id=change.pk) or change
    done.refresh_from_db()
    assert "1 actions were already running" in done.effects_summary
    assert Action.objects.get(pk=action_id).status == S.EXECUTING  # not cancelled: it may run
    # Its result, reported while the switch is engaged, is of a call started before it.
    reported = call(desk, token, "POST", f"/actions/{action_id}/result", {"ok": True})
    assert reported.status == 200 and reported.json()["status"] == "succeeded"
    assert Action.objects.get(pk=action_id).ran_during_kill is False


def test_the_running_desk_moves_overdue_runs_to_the_reconcile_queue(
    desk: Desk, target: tuple[Target, str]
) -> None:
    served, url = target
    _, action_id = started(desk, served, url)
    Action.objects.filter(pk=action_id).update(execute_by=timezone.now() - timedelta(seconds=1))
    deadline = time.monotonic() + 40
    while Action.objects.get(pk=action_id).reconcile_since is None:
        assert time.monotonic() < deadline, "the beat sweep did not move it"
        time.sleep(0.2)


def test_a_result_reported_without_starting_is_flagged(
    desk: Desk, target: tuple[Target, str], approver: AbstractUser
) -> None:
    served, url = target
    token, action_id = escalated(desk, served, url)
    decide_on_the_desk(desk, approver, action_id, "approve", reason="fine")
    served.seed({"acct-1": MOVED})  # changed after the approval, and never checked
    reported = call(desk, token, "POST", f"/actions/{action_id}/result", {"ok": True})
    assert reported.status == 200 and reported.json()["status"] == "succeeded"
    event = AuditEvent.objects.get(action="action.succeeded", object_id=action_id)
    assert event.data["started_unannounced"] is True
    assert event.data["approved_state_unchecked"] is True
    assert "the state its approval covered was not checked" in event.summary


def test_the_params_are_required_to_start(desk: Desk, target: tuple[Target, str]) -> None:
    served, url = target
    _, action_id = escalated(desk, served, url)
    token = agent_token("clerk", "accounts", "set_record:update")
    missing = call(desk, token, "POST", f"/actions/{action_id}/executing", {})
    assert missing.status == 422 and missing.json()["errors"][0]["field"] == "params"
