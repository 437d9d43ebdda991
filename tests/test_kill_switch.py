"""Kill switches: exact enforcement, frozen escalations, cancelled work, the CLI and the page."""

from __future__ import annotations

import threading
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.urls import reverse

from approvals.audit import Actor
from approvals.core import Refused
from approvals.killswitches import killswitch_effects, killswitch_set
from approvals.models import Action, AgentSession, AuditEvent, KillSwitchChange
from approvals.queue import escalation_timer_fired
from tests.agents import agent_token, call, decide, escalated_action, order, propose
from tests.servers import Desk

S = Action.Status
ORDERS = ("create_order:create", "*:read")


def engage(scope: str = "procurement", who: str = "otto-oncall") -> KillSwitchChange:
    return killswitch_set(scope=scope, engaged=True, actor=Actor("user", who), reason="runaway")


def release(scope: str = "procurement") -> KillSwitchChange:
    return killswitch_set(scope=scope, engaged=False, actor=Actor("user", "otto"), reason="fixed")


@pytest.mark.django_db(transaction=True)
def test_engaged_switch_refuses_new_actions_with_423_and_release_admits_again(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    assert propose(desk, token, order()).status == 201
    engage()
    refused = propose(desk, token, order())
    assert refused.status == 423
    body = refused.json()
    assert body["kill_switch"]["scope"] == "procurement" and body["kill_switch"]["engaged"]
    assert "runaway" in body["detail"]
    assert Action.objects.count() == 1
    assert AuditEvent.objects.filter(action="action.refused_killed").count() == 1
    # Another domain is not stopped by this switch.
    other = agent_token("janitor", "devops", "restart_service:execute")
    restart = {"session_id": "run-1", "tool": "restart_service", "params": {"service": "web"}}
    assert propose(desk, other, restart).status == 201
    release()
    assert propose(desk, token, order()).status == 201


@pytest.mark.django_db(transaction=True)
def test_the_global_switch_stops_every_domain_and_a_replay_too(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    first = propose(desk, token, order(), key="order-1")
    assert first.status == 201
    engage("global")
    other = agent_token("janitor", "devops", "restart_service:execute")
    restart = {"session_id": "run-1", "tool": "restart_service", "params": {"service": "web"}}
    assert propose(desk, other, restart).status == 423
    # A replay of an allowed answer must not tell an agent to go ahead under a kill.
    assert propose(desk, token, order(), key="order-1").status == 423
    state = call(desk, token, "GET", "/killswitches").json()
    assert state["switches"]["global"]["engaged"] is True and state["version"] >= 1


@pytest.mark.django_db(transaction=True)
def test_no_action_is_admitted_after_the_engage_commits(desk: Desk) -> None:
    """Agents propose in a tight loop while the switch is engaged: every admitted action was
    written before the engage took its lock, and everything after is refused."""
    tokens = [agent_token(f"looper-{n}", "billing", "*:update") for n in range(6)]
    body = {
        "session_id": "loop",
        "tool": "update_record",
        "verb": "update",
        "params": {"field": "x"},
        "target_ids": ["acct-1"],
        "blast_radius": {"records": 1, "population": 10000},
    }
    stop = threading.Event()
    answers: list[int] = []

    def loop(token: str) -> None:
        while not stop.is_set():
            answers.append(propose(desk, token, body).status)

    threads = [threading.Thread(target=loop, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    change = engage("billing")
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    connections.close_all()
    admitted = Action.objects.filter(domain__slug="billing")
    assert admitted.exists(), "the loop should have had actions admitted before the engage"
    assert 423 in answers
    late = admitted.filter(created_at__gte=change.created_at)
    assert list(late.values_list("created_at", flat=True)) == []
    assert set(answers) <= {201, 423}


@pytest.mark.django_db
def test_open_escalations_are_frozen_until_release(approver) -> None:
    action = escalated_action(tier=1)
    engage()
    with pytest.raises(Refused, match="kill switch is engaged"):
        decide(action_id=action.pk, user=approver, verdict="approve")
    late = action.sla_due_at.replace(year=action.sla_due_at.year + 1)
    assert escalation_timer_fired(action_id=action.pk, timer_id=action.timer_id, now=late) == (
        "frozen"
    )
    assert Action.objects.get(pk=action.pk).tier == 1
    engaged_at = KillSwitchChange.objects.get().created_at
    released = release()
    thawed = killswitch_effects(change_id=released.pk)
    assert thawed is not None and "1 escalations resumed" in thawed.effects_summary
    # The time spent frozen is given back to its SLA and expiry, with a new timer.
    resumed = Action.objects.get(pk=action.pk)
    frozen_for = released.created_at - engaged_at
    assert resumed.sla_due_at == action.sla_due_at + frozen_for
    assert resumed.expires_at == action.expires_at + frozen_for
    assert resumed.timer_id and resumed.timer_id != action.timer_id
    decide(action_id=action.pk, user=approver, verdict="approve")
    assert Action.objects.get(pk=action.pk).status == S.APPROVED


@pytest.mark.django_db
def test_engage_cancels_approved_unexecuted_actions_and_flags_a_late_result(approver) -> None:
    from approvals.agents import token_authenticate
    from approvals.api import action_report_result

    action = escalated_action(tier=1)
    decide(action_id=action.pk, user=approver, verdict="approve")
    change = engage()
    done = killswitch_effects(change_id=change.pk)
    assert done is not None and "cancelled 1" in done.effects_summary
    assert killswitch_effects(change_id=change.pk) is None  # a second delivery does nothing
    cancelled = Action.objects.get(pk=action.pk)
    assert cancelled.status == S.CANCELLED and cancelled.decided_by == "kill-switch"
    # The agent had already started it: its result is kept, and flagged.
    token = token_authenticate(agent_token("buyer-2", "procurement", "create_order:create"))
    token.agent_id, token.domain_id = action.agent_id, action.domain_id
    action_report_result(
        token=token,
        action_id=str(action.pk),
        ok=True,
        result={"id": 1},
        post_state={"open_orders": 1},
        error="",
    )
    ran = Action.objects.get(pk=action.pk)
    assert ran.status == S.SUCCEEDED and ran.ran_during_kill
    assert AgentSession.objects.get(pk=ran.session_id).ran_during_kill
    assert AuditEvent.objects.filter(action="action.ran_during_kill").exists()


@pytest.mark.django_db
def test_engage_and_release_need_oncall_a_reason_and_a_confirmation(
    viewer, approver, oncall, login
) -> None:
    escalated_action(tier=1)  # creates the procurement domain
    url = reverse("killswitch-change", args=["procurement"])
    form = {"verb": "engage", "reason": "runaway orders", "confirm": "procurement"}
    for user in (viewer, approver):
        assert login(user).post(url, form).status_code == 403
    client = login(oncall)
    client.post(url, {**form, "confirm": "procuremen"})
    client.post(url, {**form, "reason": " "})
    assert not KillSwitchChange.objects.exists()
    assert client.post(url, form).status_code == 302
    change = KillSwitchChange.objects.get()
    assert change.engaged and change.actor == oncall.username
    assert AuditEvent.objects.filter(action="killswitch.engaged", actor=oncall.username).exists()
    page = login(viewer).get(reverse("queue")).content.decode()
    assert "Kill switch engaged" in page and "runaway orders" in page  # the banner
    assert "FROZEN" in page
    history = login(viewer).get(reverse("killswitches")).content.decode()
    assert "runaway orders" in history and "Engage procurement" not in history


@pytest.mark.django_db
def test_cli_engages_and_releases_as_a_named_operator(oncall, viewer) -> None:
    escalated_action(tier=1)
    with pytest.raises(CommandError, match="--as"):
        call_command("killswitch", "engage", "procurement", "--reason", "x", "--as", "")
    with pytest.raises(CommandError, match="may not operate"):
        call_command(
            "killswitch", "engage", "procurement", "--reason", "x", "--as", viewer.username
        )
    with pytest.raises(CommandError, match="say why"):
        call_command("killswitch", "engage", "procurement", "--as", oncall.username)
    with pytest.raises(CommandError, match="no domain 'nowhere'"):
        call_command("killswitch", "engage", "nowhere", "--reason", "x", "--as", oncall.username)
    out = StringIO()
    call_command(
        "killswitch",
        "engage",
        "global",
        "--reason",
        "all stop",
        "--as",
        oncall.username,
        stdout=out,
    )
    assert "kill switch global ENGAGED" in out.getvalue()
    with pytest.raises(CommandError, match="already engaged"):
        call_command("killswitch", "engage", "global", "--reason", "again", "--as", oncall.username)
    status = StringIO()
    call_command("killswitch", "status", stdout=status)
    assert "global           ENGAGED by otto-oncall: all stop" in status.getvalue()
    call_command(
        "killswitch",
        "release",
        "global",
        "--reason",
        "ok",
        "--as",
        oncall.username,
        stdout=StringIO(),
    )
    assert [c.engaged for c in KillSwitchChange.objects.order_by("id")] == [True, False]


@pytest.mark.django_db
def test_quarantine_stops_one_agent_and_revokes_its_tokens(oncall, approver) -> None:
    from approvals.models import Agent, AgentToken

    waiting = escalated_action(tier=1)
    approved = escalated_action(tier=1)
    decide(action_id=approved.pk, user=approver, verdict="approve")
    bystander = escalated_action(tier=1, agent="other-buyer")
    with pytest.raises(CommandError, match="may not quarantine"):
        call_command("quarantine", "buyer", "--reason", "x", "--as", approver.username)
    out = StringIO()
    call_command("quarantine", "buyer", "--reason", "loops", "--as", oncall.username, stdout=out)
    assert "2 actions cancelled" in out.getvalue()
    assert {Action.objects.get(pk=a.pk).status for a in (waiting, approved)} == {S.CANCELLED}
    assert Action.objects.get(pk=bystander.pk).status == S.ESCALATED
    assert not AgentToken.objects.filter(agent__name="buyer", revoked_at=None).exists()
    assert Agent.objects.get(name="buyer").quarantine_reason == "loops"
    assert AuditEvent.objects.filter(action="agent.quarantined", actor=oncall.username).exists()


@pytest.mark.django_db
def test_quarantine_from_the_page_needs_oncall_and_a_confirmation(viewer, oncall, login) -> None:
    escalated_action(tier=1)
    url = reverse("quarantine")
    form = {"agent": "buyer", "reason": "loops", "confirm": "buyer"}
    assert login(viewer).post(url, form).status_code == 403
    client = login(oncall)
    client.post(url, {**form, "confirm": "buye"})
    assert not AuditEvent.objects.filter(action="agent.quarantined").exists()
    assert client.post(url, form).status_code == 302
    assert Action.objects.get().status == S.CANCELLED
    page = client.get(reverse("killswitches")).content.decode()
    assert "<code>buyer</code> since" in page and "loops" in page
