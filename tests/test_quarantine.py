"""Quarantine is a state of the agent: every request is refused until an incident commander
releases it, new tokens included, and a proposal waiting on the agent's lock too."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.agents import Quarantined, TokenError, access_changed, token_authenticate
from approvals.api import ActionIn, ProposalData, StepData, action_propose, steps_record
from approvals.audit import Actor
from approvals.core import Refused
from approvals.killswitches import agent_quarantine, agent_release
from approvals.models import Action, Agent, AgentToken, AuditEvent, ReasoningStep
from tests.agents import agent_token, call, order, propose
from tests.servers import Desk

ORDERS = ("create_order:create", "*:read")
ONCALL = Actor("user", "otto-oncall")


def quarantine(agent: str = "buyer", reason: str = "loops") -> None:
    agent_quarantine(agent_name=agent, actor=ONCALL, reason=reason)


def small_order() -> ProposalData:
    """The order the API would propose for tests.agents.order()."""
    return ActionIn.model_validate(order()).data()


@pytest.mark.django_db
def test_no_token_is_issued_to_a_quarantined_agent_until_it_is_released() -> None:
    agent_token("buyer", "procurement", *ORDERS)
    quarantine()
    with pytest.raises(ValueError, match="quarantined since .* \\(loops\\); an incident commander"):
        agent_token("buyer", "procurement", *ORDERS)
    command = ["issue_token", "buyer", "--domain", "procurement", "--scope", "*:read"]
    with pytest.raises(CommandError, match="buyer is quarantined"):
        call_command(*command, stdout=StringIO(), stderr=StringIO())
    assert not AgentToken.objects.filter(agent__name="buyer", revoked_at=None).exists()
    agent_release(agent_name="buyer", actor=Actor("user", "cora-commander"), reason="fixed")
    token = token_authenticate(agent_token("buyer", "procurement", *ORDERS))
    assert token.agent.name == "buyer"
    # The release gave back no token of before the quarantine.
    assert AgentToken.objects.filter(agent__name="buyer", revoked_at=None).count() == 1


@pytest.mark.django_db
def test_a_token_is_refused_once_its_agent_is_quarantined() -> None:
    raw = agent_token("buyer", "procurement", *ORDERS)
    Agent.objects.filter(name="buyer").update(quarantined_at=timezone.now(), quarantine_reason="x")
    with pytest.raises(TokenError, match="buyer is quarantined"):
        token_authenticate(raw)


@pytest.mark.django_db(transaction=True)
def test_an_unrevoked_token_of_a_quarantined_agent_gets_401(desk: Desk) -> None:
    token = agent_token("buyer", "procurement", *ORDERS)
    assert propose(desk, token, order()).status == 201
    # The agent's state alone, its token left live: the state is what is checked.
    Agent.objects.filter(name="buyer").update(
        quarantined_at=timezone.now(), quarantine_reason="runaway orders"
    )
    access_changed()  # announced as a quarantine announces it: no process trusts what it kept
    assert AgentToken.objects.get(agent__name="buyer").revoked_at is None
    refused = propose(desk, token, order())
    assert refused.status == 401
    assert "buyer is quarantined" in refused.json()["detail"]
    assert "runaway orders" in refused.json()["detail"]
    assert call(desk, token, "GET", "/killswitches").status == 401
    steps = {"steps": [{"index": 0, "kind": "thought", "content": "again"}]}
    assert call(desk, token, "POST", "/sessions/run-1/steps", steps).status == 401
    assert Action.objects.count() == 1


@pytest.mark.django_db
def test_a_proposal_reads_the_agent_after_its_lock_and_is_refused_and_audited() -> None:
    # The token was authenticated before the quarantine, as by a request already in flight.
    token = token_authenticate(agent_token("buyer", "procurement", *ORDERS))
    Agent.objects.filter(name="buyer").update(quarantined_at=timezone.now(), quarantine_reason="x")
    with pytest.raises(Quarantined) as refused:
        action_propose(token=token, data=small_order(), key="k-1", fingerprint="")
    assert refused.value.status == 423 and refused.value.title == "Agent quarantined"
    assert refused.value.extra["quarantine"]["reason"] == "x"
    assert not Action.objects.exists()
    assert AuditEvent.objects.filter(action="action.refused_quarantined", actor="buyer").exists()
    with pytest.raises(Quarantined):
        steps_record(token=token, session_id="run-1", steps=[StepData(0, "thought", "again", {})])
    assert not ReasoningStep.objects.exists()
    assert AuditEvent.objects.filter(action="session.refused_quarantined").exists()


def _blocked_by(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))",
            [pid],
        )
        return bool(cursor.fetchone()[0])


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: on SQLite write transactions take turns, so no proposal waits "
    "on the agent's row lock",
)
@pytest.mark.django_db(transaction=True)
def test_a_proposal_waiting_on_the_agents_lock_is_refused_when_the_quarantine_commits(
    desk: Desk,
) -> None:
    token = agent_token("racer", "procurement", *ORDERS)
    locked, quarantine_now = threading.Event(), threading.Event()
    holder: dict[str, int] = {}
    replies: list[int] = []

    def lock_then_quarantine() -> None:
        try:
            with transaction.atomic():
                Agent.objects.select_for_update().get(name="racer")
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    holder["pid"] = cursor.fetchone()[0]
                locked.set()
                assert quarantine_now.wait(timeout=30)
                quarantine("racer", reason="caught in the act")
        finally:
            connection.close()

    locker = threading.Thread(target=lock_then_quarantine)
    locker.start()
    assert locked.wait(timeout=10)
    proposer = threading.Thread(target=lambda: replies.append(propose(desk, token, order()).status))
    proposer.start()
    deadline = time.monotonic() + 20
    while not _blocked_by(holder["pid"]):
        assert time.monotonic() < deadline, "the proposal never waited on the agent's lock"
        assert proposer.is_alive(), f"the proposal was answered without waiting: {replies}"
        time.sleep(0.05)
    quarantine_now.set()
    locker.join(timeout=30)
    proposer.join(timeout=30)
    assert replies == [423]
    assert not Action.objects.filter(agent__name="racer").exists()
    assert AuditEvent.objects.filter(action="action.refused_quarantined", actor="racer").exists()


@pytest.mark.django_db
def test_release_needs_a_quarantined_agent_and_a_reason() -> None:
    agent_token("buyer", "procurement", *ORDERS)
    commander = Actor("user", "cora-commander")
    for name, reason, status in (("buyer", "ok", 409), ("nobody", "ok", 404), ("buyer", " ", 422)):
        with pytest.raises(Refused) as refused:
            agent_release(agent_name=name, actor=commander, reason=reason)
        assert refused.value.status == status
    quarantine()
    Agent.objects.filter(name="buyer").update(quarantined_at=timezone.now() - timedelta(hours=2))
    agent_release(agent_name="buyer", actor=commander, reason="loop fixed")
    agent = Agent.objects.get(name="buyer")
    assert agent.quarantined_at is None and agent.quarantine_reason == ""
    event = AuditEvent.objects.get(action="agent.released")
    assert event.actor == "cora-commander" and event.object_id == str(agent.pk)
    assert event.data["reason"] == "loop fixed" and event.data["quarantine_reason"] == "loops"
    assert 7200 <= event.data["quarantined_seconds"] < 7300
    assert "after 2 h" in event.summary


@pytest.mark.django_db
def test_only_an_incident_commander_releases_from_the_page(
    viewer, oncall, commander, login
) -> None:
    agent_token("buyer", "procurement", *ORDERS)
    quarantine()
    url = reverse("agents-release", args=["buyer"])
    for user in (viewer, oncall):
        assert login(user).post(url, {"reason": "fixed"}).status_code == 403
    client = login(commander)
    response = client.post(url, {"reason": " "}, follow=True)
    assert "say why you release it" in response.content.decode()
    assert Agent.objects.get(name="buyer").quarantined_at is not None
    response = client.post(url, {"reason": "loop fixed", "page": "1"})
    assert response.status_code == 302 and response["Location"] == "/agents/#agent-buyer"
    assert Agent.objects.get(name="buyer").quarantined_at is None
    assert AuditEvent.objects.filter(action="agent.released", actor=commander.username).exists()
    assert not AgentToken.objects.filter(agent__name="buyer", revoked_at=None).exists()
    again = client.post(url, {"reason": "again"}, follow=True).content.decode()
    assert "buyer is not quarantined" in again


@pytest.mark.django_db
def test_the_release_command_needs_an_incident_commander(oncall, commander) -> None:
    agent_token("buyer", "procurement", *ORDERS)
    quarantine()
    with pytest.raises(CommandError, match="--as"):
        call_command("release_agent", "buyer", "--reason", "x", "--as", "")
    with pytest.raises(CommandError, match="may not release"):
        call_command("release_agent", "buyer", "--reason", "x", "--as", oncall.username)
    with pytest.raises(CommandError, match="say why"):
        call_command("release_agent", "buyer", "--as", commander.username)
    assert Agent.objects.get(name="buyer").quarantined_at is not None
    out = StringIO()
    call_command(
        "release_agent", "buyer", "--reason", "fixed", "--as", commander.username, stdout=out
    )
    assert "released" in out.getvalue() and "issue new ones" in out.getvalue()
    assert Agent.objects.get(name="buyer").quarantined_at is None
    assert AuditEvent.objects.filter(action="agent.released", actor=commander.username).exists()
    with pytest.raises(CommandError, match="not quarantined"):
        call_command("release_agent", "buyer", "--reason", "x", "--as", commander.username)


@pytest.mark.django_db
def test_the_agents_page_shows_the_quarantine_and_only_the_forms_one_may_use(
    viewer, oncall, commander, login
) -> None:
    agent_token("buyer", "procurement", *ORDERS)
    agent_token("janitor", "devops", "restart_service:execute")
    agent_token("janitor", "procurement", "*:read")
    agent_quarantine(agent_name="buyer", actor=Actor.user(oncall), reason="runaway orders")
    quarantine_form = 'action="/agents/janitor/quarantine"'
    release_form = 'action="/agents/buyer/release"'

    page = login(viewer).get(reverse("agents")).content.decode()
    assert 'href="/agents/"' in page  # in the navigation
    assert "2 agents, 1 quarantined." in page
    buyer = page[page.index('id="agent-buyer"') : page.index('id="agent-janitor"')]
    assert "QUARANTINED" in buyer and "by otto-oncall" in buyer and "runaway orders" in buyer
    janitor = page[page.index('id="agent-janitor"') :]
    assert "2 in <code>devops</code>, <code>procurement</code>" in janitor
    assert "active" in janitor
    assert quarantine_form not in page and release_form not in page

    page = login(oncall).get(reverse("agents")).content.decode()
    assert quarantine_form in page and release_form not in page
    page = login(commander).get(reverse("agents")).content.decode()
    assert quarantine_form in page and release_form in page


@pytest.mark.django_db
def test_quarantine_from_the_agents_page_needs_oncall_a_reason_and_a_confirmation(
    viewer, oncall, login
) -> None:
    agent_token("buyer", "procurement", *ORDERS)
    url = reverse("agents-quarantine", args=["buyer"])
    form = {"reason": "loops", "confirm": "buyer", "page": "2"}
    assert login(viewer).post(url, form).status_code == 403
    client = login(oncall)
    client.post(url, {**form, "confirm": "buye"})
    client.post(url, {**form, "reason": " "})
    assert Agent.objects.get(name="buyer").quarantined_at is None
    response = client.post(url, form)
    assert response.status_code == 302 and response["Location"] == "/agents/?page=2#agent-buyer"
    assert Agent.objects.get(name="buyer").quarantine_reason == "loops"
    assert AuditEvent.objects.filter(action="agent.quarantined", actor=oncall.username).exists()
    page = client.get(reverse("agents")).content.decode()
    assert "Agent buyer quarantined: 1 tokens revoked" in page


@pytest.mark.django_db
def test_the_agents_page_is_paginated_in_the_same_queries_however_many_agents(
    viewer, login
) -> None:
    client = login(viewer)
    agent_token("agent-000", "procurement", "*:read")
    quarantine("agent-000")
    with CaptureQueriesContext(connection) as one:
        assert client.get(reverse("agents")).status_code == 200
    Agent.objects.bulk_create(Agent(name=f"agent-{n:03}") for n in range(1, 60))
    for n in range(1, 60, 3):
        agent_token(f"agent-{n:03}", "devops", "*:read")
    for n in range(1, 60, 7):
        quarantine(f"agent-{n:03}")
    with CaptureQueriesContext(connection) as many:
        page = client.get(reverse("agents")).content.decode()
    assert len(many) == len(one)
    assert page.count('<tr id="agent-') == 50
    assert "Page 1 of 2." in page and 'href="?page=2"' in page
    assert "60 agents, 10 quarantined." in page
    second = client.get(reverse("agents"), {"page": "2"}).content.decode()
    assert second.count('<tr id="agent-') == 10
