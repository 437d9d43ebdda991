"""Deciding escalations: one decision counts, four eyes at tier 2, SLA timers and expiry."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections

from approvals.core import Refused
from approvals.models import Action, Approval, AuditEvent
from approvals.queue import AlreadyDecided, escalation_timer_fired, escalations_sweep
from tests.agents import decide, escalated_action

pytestmark = pytest.mark.django_db

S = Action.Status


def fresh(action: Action) -> Action:
    return Action.objects.get(pk=action.pk)


def test_escalation_opens_at_its_tier_with_sla_and_expiry() -> None:
    action = escalated_action(tier=1)
    assert action.timer_id
    sla = (action.sla_due_at - action.created_at).total_seconds()
    expiry = (action.expires_at - action.created_at).total_seconds()
    assert 899 <= sla <= 900  # tier 1: 15 minutes
    assert 6299 <= expiry <= 6300  # then 30 at tier 2 and 60 at tier 3


def test_one_approver_decides_tier_one(approver) -> None:
    action = escalated_action(tier=1)
    decision = decide(action_id=action.pk, user=approver, verdict="approve")
    assert decision.final
    action = fresh(action)
    assert action.status == S.APPROVED and action.decided_by == approver.username
    assert action.timer_id == ""
    assert AuditEvent.objects.filter(action="action.approved", actor=approver.username).exists()


def test_reject_needs_a_reason_and_records_it(approver) -> None:
    action = escalated_action(tier=1)
    with pytest.raises(Refused, match="say why"):
        decide(action_id=action.pk, user=approver, verdict="reject", reason="  ")
    assert fresh(action).status == S.ESCALATED
    decide(action_id=action.pk, user=approver, verdict="reject", reason="too many")
    action = fresh(action)
    assert (action.status, action.decision_reason) == (S.REJECTED, "too many")


def test_modify_records_the_diff_and_the_agent_gets_the_new_params(approver, make_operator) -> None:
    action = escalated_action(tier=1)
    with pytest.raises(Refused, match="JSON object"):
        decide(action_id=action.pk, user=approver, verdict="modify", params=[1])
    with pytest.raises(Refused, match="unchanged"):
        decide(action_id=action.pk, user=approver, verdict="modify", params=dict(action.params))
    decide(
        action_id=action.pk,
        user=approver,
        verdict="modify",
        params={"sku": "GPU-A100", "qty": 2, "unit_price": 90},
        reason="two will do",
    )
    action = fresh(action)
    # A new proposal: $180 now, which the policy would allow, but a person other than the one
    # who modified it approves the modified version.
    assert action.status == S.ESCALATED and f"{action.amount:f}" == "180.0000"
    event = AuditEvent.objects.get(action="escalation.modified")
    assert "qty: 10 -> 2" in event.summary and event.data["reason"] == "two will do"
    assert event.data["rule"] == "allow-orders-under-cap"
    with pytest.raises(Refused, match="another approver"):
        decide(action_id=action.pk, user=approver, verdict="approve")
    decide(action_id=action.pk, user=make_operator("abe-approver", "approver"), verdict="approve")
    action = fresh(action)
    assert action.status == S.MODIFIED and action.modified_params["qty"] == 2


def test_a_second_decider_is_told_who_decided(approver, senior_approver) -> None:
    action = escalated_action(tier=1)
    decide(action_id=action.pk, user=approver, verdict="approve")
    with pytest.raises(AlreadyDecided, match=f"approved by {approver.username}"):
        decide(action_id=action.pk, user=senior_approver, verdict="reject", reason="x")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent writers")
def test_concurrent_decisions_exactly_one_counts(make_operator) -> None:
    action = escalated_action(tier=1)
    deciders = [make_operator(f"approver-{n}", "approver") for n in range(8)]
    barrier = threading.Barrier(len(deciders))
    outcomes: list[str] = []

    def race(user) -> None:
        barrier.wait()
        try:
            verdict = "approve" if user.username.endswith(("0", "2", "4", "6")) else "reject"
            decide(action_id=action.pk, user=user, verdict=verdict, reason="race")
            outcomes.append("decided")
        except AlreadyDecided:
            outcomes.append("told")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(u,)) for u in deciders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["decided"] + ["told"] * 7
    decided = AuditEvent.objects.filter(action__in=["action.approved", "action.rejected"])
    assert decided.count() == 1


def test_tier_two_needs_two_different_people_one_senior(
    approver, senior_approver, make_operator
) -> None:
    action = escalated_action(tier=2)
    first = decide(action_id=action.pk, user=approver, verdict="approve")
    assert not first.final and "1 more approver" in first.waiting_for
    with pytest.raises(Refused, match="someone else"):
        decide(action_id=action.pk, user=approver, verdict="approve")
    # A second plain approver is not enough: one of the two must be senior.
    other = make_operator("abe-approver", "approver")
    second = decide(action_id=action.pk, user=other, verdict="approve")
    assert not second.final and "decide_tier2" in second.waiting_for
    assert fresh(action).status == S.ESCALATED
    decide(action_id=action.pk, user=senior_approver, verdict="approve")
    assert fresh(action).status == S.APPROVED
    assert Approval.objects.filter(action=action).count() == 3


def test_a_modification_sets_earlier_approvals_aside(
    approver, senior_approver, make_operator
) -> None:
    action = escalated_action(tier=2)
    decide(action_id=action.pk, user=approver, verdict="approve")
    # The senior changes the params: the first approval was of other params.
    changed = decide(
        action_id=action.pk,
        user=senior_approver,
        verdict="modify",
        params={"snapshot_id": "snap-dev-7", "keep_days": 7},
        reason="keep a week",
    )
    assert not changed.final and f"other than {senior_approver.username}" in changed.waiting_for
    assert not Approval.objects.filter(action=action).exists()
    event = AuditEvent.objects.get(action="escalation.modified")
    assert "1 earlier approval(s) set aside" in event.summary
    # The first approver approves again, now of the modified params, and another senior.
    decide(action_id=action.pk, user=approver, verdict="approve")
    assert fresh(action).status == S.ESCALATED
    decide(
        action_id=action.pk, user=make_operator("sue-senior", "senior_approver"), verdict="approve"
    )
    action = fresh(action)
    assert action.status == S.MODIFIED
    assert action.modified_params == {"snapshot_id": "snap-dev-7", "keep_days": 7}


def test_an_approval_is_of_the_params_the_approver_saw(
    approver, senior_approver, make_operator
) -> None:
    from approvals.queue import effective_params, params_fingerprint

    action = escalated_action(tier=2)
    seen = params_fingerprint(effective_params(action))
    decide(
        action_id=action.pk,
        user=senior_approver,
        verdict="modify",
        params={"snapshot_id": "snap-dev-7", "keep_days": 1},
        params_seen=seen,
    )
    with pytest.raises(Refused, match="review them again"):
        decide(action_id=action.pk, user=approver, verdict="approve", params_seen=seen)
    now_seen = params_fingerprint(effective_params(fresh(action)))
    decide(action_id=action.pk, user=approver, verdict="approve", params_seen=now_seen)
    decide(
        action_id=action.pk,
        user=make_operator("sue-senior", "senior_approver"),
        verdict="approve",
        params_seen=now_seen,
    )
    assert fresh(action).status == S.MODIFIED


def test_the_agents_owner_may_not_approve_but_may_reject(approver) -> None:
    action = escalated_action(tier=1)
    action.agent.owner = approver
    action.agent.save()
    with pytest.raises(Refused, match="someone else must approve"):
        decide(action_id=action.pk, user=approver, verdict="approve")
    decide(action_id=action.pk, user=approver, verdict="reject", reason="mine, no")
    assert fresh(action).status == S.REJECTED


def test_a_tier_needs_its_permission(viewer, approver) -> None:
    action = escalated_action(tier=1)
    with pytest.raises(Refused, match="decide_tier1"):
        decide(action_id=action.pk, user=viewer, verdict="approve")
    action.tier = 3
    action.save()
    with pytest.raises(Refused, match="decide_tier3"):
        decide(action_id=action.pk, user=approver, verdict="approve")


def test_sla_moves_it_up_a_tier_then_it_expires() -> None:
    action = escalated_action(tier=1)
    first_timer = action.timer_id
    early = escalation_timer_fired(
        action_id=action.pk, timer_id=first_timer, now=action.sla_due_at - timedelta(seconds=1)
    )
    assert early == "early" and fresh(action).tier == 1
    at = action.sla_due_at + timedelta(seconds=1)
    assert escalation_timer_fired(action_id=action.pk, timer_id=first_timer, now=at) == "escalated"
    action = fresh(action)
    assert action.tier == 2 and action.timer_id != first_timer
    assert action.sla_due_at == at + timedelta(minutes=30)
    assert action.expires_at == at + timedelta(minutes=30 + 60)  # what is left: tiers 2 and 3
    # The first timer again (a duplicate delivery) is stale now.
    assert escalation_timer_fired(action_id=action.pk, timer_id=first_timer, now=at) == "stale"
    at = action.sla_due_at + timedelta(seconds=1)
    assert escalation_timer_fired(action_id=action.pk, timer_id=action.timer_id, now=at) == (
        "escalated"
    )
    action = fresh(action)
    assert action.tier == 3
    at = action.sla_due_at + timedelta(seconds=1)
    assert escalation_timer_fired(action_id=action.pk, timer_id=action.timer_id, now=at) == (
        "expired"
    )
    action = fresh(action)
    assert action.status == S.EXPIRED and action.decided_by == "escalation-timer"
    assert AuditEvent.objects.filter(action="escalation.tier_raised").count() == 2
    assert AuditEvent.objects.filter(action="action.expired").count() == 1


def test_a_timer_that_fires_after_the_decision_does_nothing(approver) -> None:
    action = escalated_action(tier=1)
    timer = action.timer_id
    decide(action_id=action.pk, user=approver, verdict="approve")
    late = action.sla_due_at + timedelta(hours=5)
    assert escalation_timer_fired(action_id=action.pk, timer_id=timer, now=late) == "stale"
    assert fresh(action).status == S.APPROVED


def test_the_sweep_fires_overdue_timers_only() -> None:
    due = escalated_action(tier=1)
    not_yet = escalated_action(tier=1, agent="other-buyer")
    Action.objects.filter(pk=not_yet.pk).update(sla_due_at=due.sla_due_at + timedelta(hours=1))
    assert escalations_sweep(now=due.sla_due_at + timedelta(seconds=1)) == 1
    assert fresh(due).tier == 2 and fresh(not_yet).tier == 1
