"""The three incidents of the stories, end to end: the desk (uvicorn, and a Celery worker in
production mode), the demo target system in its own process, a scripted agent on the client,
and operators in headless Chromium making the decisions."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from incidentdesk_client import ActionDenied, Desk, KillSwitchEngaged, OutOfScope
from incidents.stories import AGENTS, DELETE_SCOPE, Acme, Outcome, devops, discount, procurement

from approvals.agents import token_issue
from approvals.audit import Actor, audit_seal, audit_verify_chain
from approvals.desk import demo_connectors
from approvals.models import Action, AgentSession, AuditEvent, RollbackPlan
from tests.agents import demo_domain
from tests.browser import (
    SCREENSHOTS,
    engage_by_keyboard,
    in_sync,
    operator_with_real_password,
    sign_in,
)
from tests.servers import ROOT, _stop, free_port, wait_until
from tests.servers import Desk as RunningDesk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SECRET = "incident-tests-secret"


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[Acme]:
    """The demo target system, in its own process, with the demo accounts and snapshots."""
    port = free_port()
    with open(tmp_path / "target.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "incidents.target",
                "--demo",
                "--port",
                str(port),
                "--secret",
                SECRET,
            ],
            cwd=ROOT / "client",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/_admin/stats", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the demo target system did not start") from None
                time.sleep(0.1)
        for slug in ("billing", "procurement", "devops"):
            demo_domain(slug)
        demo_connectors(target_url=url, secret=SECRET, actor=Actor.system("tests"))
        yield Acme(url)
    finally:
        _stop(process)


class Played(threading.Thread):
    """A story's agent, playing in the background as it would in production."""

    def __init__(
        self,
        desk: RunningDesk,
        story: Callable[..., Outcome],
        token: str,
        acme: Acme,
        **kwargs: Any,
    ) -> None:
        super().__init__(daemon=True)
        self.client = Desk(desk.url, token, max_wait=90, poll_wait=5)
        self.story, self.acme, self.kwargs = story, acme, kwargs
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.said: list[str] = []

    def run(self) -> None:
        try:
            self.outcome = self.story(self.client, self.acme, say=self.said.append, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            self.client.close()

    def finished(self) -> Outcome:
        self.join(timeout=60)
        assert not self.is_alive(), "the agent is still running"
        assert self.error is None, repr(self.error)
        assert self.outcome is not None
        return self.outcome


def token_for(story: str, *extra_scopes: str) -> str:
    agent, domain, scopes = AGENTS[story]
    return token_issue(
        agent_name=agent,
        domain_slug=domain,
        scopes=[*scopes, *extra_scopes],
        ttl=3600,
        actor=Actor.system("tests"),
    ).token


def browser_as(chromium: Any, make_operator: Any, desk: RunningDesk, name: str, role: str) -> Any:
    operator_with_real_password(make_operator, name, role)
    page = chromium.new_context(viewport={"width": 1366, "height": 900}).new_page()
    sign_in(page, desk, name)
    return page


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))  # what the operator sees, one screen


def roll_back_session(page: Any, desk: RunningDesk, session: AgentSession) -> RollbackPlan:
    """From the session's timeline: plan a rollback of it and start it, by keyboard."""
    page.goto(f"{desk.url}/sessions/{session.pk}/")
    page.get_by_role("button", name="Plan a rollback of this session").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    plan = RollbackPlan.objects.get(
        selection__session=f"{session.agent.name}/{session.external_id}"
    )
    page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    page.locator("#plan-start").press("Enter")
    return plan


def assert_recorded(session: AgentSession, wanted: dict[str, int]) -> None:
    """The audit chain verifies, and holds every step of the incident."""
    audit_seal()
    assert audit_verify_chain().intact
    ids = [str(pk) for pk in session.actions.values_list("pk", flat=True)]
    events = Counter(
        AuditEvent.objects.filter(object_type="action", object_id__in=ids).values_list(
            "action", flat=True
        )
    )
    for event, count in wanted.items():
        assert events[event] == count, (event, dict(events))


def test_procurement_runaway_loop_is_stopped_killed_and_its_orders_cancelled(
    desk: RunningDesk, chromium: Any, make_operator: Any, acme: Acme
) -> None:
    agent = Played(desk, procurement, token_for("procurement"), acme, orders=50)
    agent.start()
    # The rate rule holds the fourth order for a person.
    held = wait_until(
        lambda: Action.objects.filter(status="escalated").first(),
        30,
        "the runaway loop to be escalated",
    )
    assert held.rule == "order-rate"
    otto = browser_as(chromium, make_operator, desk, "otto", "oncall")
    otto.goto(f"{desk.url}/queue/")
    otto.locator("ol#tier-1-rows li.item").first.wait_for(timeout=10_000)
    shot(otto, "incident-procurement-queue.png")
    # On-call stops the domain, by keyboard; the waiting agent is told at once.
    engage_by_keyboard(otto, desk, "procurement", "runaway ordering loop")
    otto.locator(".kill-banner").wait_for(timeout=10_000)
    shot(otto, "incident-procurement-kill-switch.png")
    outcome = agent.finished()
    assert isinstance(outcome.stopped_by, KillSwitchEngaged)
    assert len(outcome.done) == 3  # a handful, not the 50 of the story
    orders = acme.call("GET", "/_admin/orders")
    assert sorted(orders) == sorted(outcome.done)

    # The incident commander undoes the orders: cancel_order through the connector.
    cora = browser_as(chromium, make_operator, desk, "cora", "incident_commander")
    session = AgentSession.objects.get(external_id=outcome.session)
    plan = roll_back_session(cora, desk, session)
    cora.locator("#plan-progress[data-state='completed']").wait_for(timeout=30_000)
    shot(cora, "incident-procurement-rollback.png")
    orders = acme.call("GET", "/_admin/orders")
    assert {o["status"] for o in orders.values()} == {"cancelled"}
    assert RollbackPlan.objects.get(pk=plan.pk).state == RollbackPlan.State.COMPLETED
    assert_recorded(
        session,
        {
            "action.allowed": 3,
            "action.succeeded": 3,
            "action.escalated": 1,
            "rollback.step_done": 3,
            "action.rolled_back": 3,
        },
    )
    assert AuditEvent.objects.filter(action="killswitch.engaged", actor="otto").exists()
    for page in (otto, cora):
        page.context.close()


def test_discount_batch_is_escalated_and_once_approved_rolled_back_with_drift_shown(
    desk: RunningDesk, chromium: Any, make_operator: Any, acme: Acme
) -> None:
    agent = Played(desk, discount, token_for("discount"), acme)
    agent.start()
    held = wait_until(
        lambda: Action.objects.filter(status="escalated").first(), 60, "the batch to be escalated"
    )
    assert held.rule == "blast-radius" and held.tier == 2 and len(held.target_ids) == 200
    accounts = acme.call("GET", "/_admin/accounts")
    assert not [a for a in accounts.values() if a["discount_rate"]]  # nothing changed yet

    # Approved anyway: tier 2 needs two people, one of them senior.
    for name, role in (("ann", "approver"), ("ben", "senior_approver")):
        page = browser_as(chromium, make_operator, desk, name, role)
        page.goto(f"{desk.url}/actions/{held.pk}/")
        page.locator("#decision").wait_for()
        in_sync(page)
        if name == "ann":
            shot(page, "incident-discount-review.png")
        page.keyboard.press("a")
        page.locator("#decision").filter(has_text=name).wait_for(timeout=10_000)
        page.context.close()
    outcome = agent.finished()
    assert outcome.stopped_by is None, outcome.stop
    accounts = acme.call("GET", "/_admin/accounts")
    changed = sorted(k for k, a in accounts.items() if a["discount_rate"] == 0.5)
    assert changed == sorted(held.target_ids)
    # Meanwhile a person fixes one account by hand.
    touched = held.target_ids[7]
    acme.call("PUT", f"/_admin/accounts/{touched}", {**accounts[touched], "discount_rate": 0.1})

    cora = browser_as(chromium, make_operator, desk, "cora", "incident_commander")
    session = AgentSession.objects.get(external_id=outcome.session)
    plan = roll_back_session(cora, desk, session)
    # 200 steps is over the size limit: a second incident commander confirms.
    cora.locator("#plan-progress[data-state='awaiting_confirmation']").wait_for(timeout=10_000)
    ian = browser_as(chromium, make_operator, desk, "ian", "incident_commander")
    ian.goto(f"{desk.url}/rollbacks/{plan.pk}/")
    ian.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    ian.locator("#plan-confirm").press("Enter")
    cora.locator("#plan-progress[data-state='waiting']").wait_for(timeout=60_000)
    shot(cora, "incident-discount-drift.png")
    drifted = cora.locator(".waiting-steps li")
    assert drifted.count() == 1, drifted.all_inner_texts()
    assert touched in drifted.inner_text()
    # Keep the person's fix.
    cora.locator(".waiting-steps button[value='skip']").press("Enter")
    cora.locator("#plan-progress[data-state='completed']").wait_for(timeout=10_000)
    accounts = acme.call("GET", "/_admin/accounts")
    assert accounts[touched]["discount_rate"] == 0.1
    assert [k for k, a in accounts.items() if a["discount_rate"] and k != touched] == []
    # The read of the accounts, allowed, and the batch, escalated; both ran.
    assert_recorded(
        session,
        {
            "action.allowed": 1,
            "action.escalated": 1,
            "action.succeeded": 2,
            "rollback.step_done": 199,
            "rollback.step_drift": 1,
            "rollback.step_skip": 1,
            "action.rolled_back": 1,
        },
    )
    for page in (cora, ian):
        page.context.close()


def test_devops_deletion_of_a_critical_snapshot_is_refused_twice(
    desk: RunningDesk, chromium: Any, make_operator: Any, acme: Acme
) -> None:
    first = devops(
        Desk(desk.url, token_for("devops"), watch_kill_switches=False), acme, say=lambda _: None
    )
    assert isinstance(first.stopped_by, OutOfScope)
    assert "scopes" in str(first.stopped_by)
    # A token that may delete still hits the protected-target rule.
    second = devops(
        Desk(desk.url, token_for("devops", DELETE_SCOPE), watch_kill_switches=False),
        acme,
        say=lambda _: None,
    )
    assert isinstance(second.stopped_by, ActionDenied)
    assert second.stopped_by.rule == "protected-targets"
    assert acme.snapshot("snap-staging-critical-db") is not None

    vera = browser_as(chromium, make_operator, desk, "vera", "viewer")
    session = AgentSession.objects.get(external_id=second.session)
    vera.goto(f"{desk.url}/sessions/{session.pk}/")
    timeline = vera.locator("#timeline")
    assert "protected target" in timeline.inner_text()
    shot(vera, "incident-devops-timeline.png")
    # The first attempt is on its session's timeline too, though no action was recorded.
    refused = AgentSession.objects.get(external_id=first.session)
    vera.goto(f"{desk.url}/sessions/{refused.pk}/")
    assert "outside the token's scopes" in vera.locator("#timeline").inner_text()
    vera.context.close()
    assert AuditEvent.objects.filter(action="action.out_of_scope", actor="cleanup-bot").exists()
    assert_recorded(session, {"action.denied": 1})
