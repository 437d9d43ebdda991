"""An incident commander starts a rollback and watches it live in headless Chromium."""

from __future__ import annotations

from typing import Any

import pytest
from incidents.target import Target

from approvals.audit import Actor
from approvals.models import RollbackPlan
from approvals.rollbacks import plan_create
from tests.browser import SCREENSHOTS, operator_with_real_password, sign_in
from tests.rollback_helpers import executed, records_domain, records_token, session_of
from tests.servers import Desk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
ACTIONS, TARGETS_EACH = 8, 10


def test_progress_is_live_and_a_drifted_step_waits_for_a_person(
    desk: Desk, chromium: Any, make_operator: Any, target: tuple[Target, str]
) -> None:
    served, url = target
    served.write_delay = 0.02  # slow enough to watch
    records_domain(url)
    token = records_token()
    original = {}
    for n in range(ACTIONS):
        targets = [f"acct-{n}-{i}" for i in range(TARGETS_EACH)]
        executed(
            token,
            targets=targets,
            pre={t: {"discount": 0} for t in targets},
            post={t: {"discount": 50} for t in targets},
        )
        original.update({t: {"discount": 0} for t in targets})
        served.seed({t: {"discount": 50} for t in targets})
    served.seed({"acct-7-3": {"discount": 15}})  # a person changed this one meanwhile
    total = ACTIONS * TARGETS_EACH
    plan = plan_create(actor=Actor("user", "cora"), selection=session_of(), reason="spring sale")
    operator_with_real_password(make_operator, "cora", "incident_commander")
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, desk, "cora")
        page.goto(f"{desk.url}/rollbacks/{plan.pk}/")
        page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
        # The steps table reads every target now and marks the drifted one.
        page.locator("#plan-steps tr.drift").wait_for(timeout=10_000)
        assert "DRIFT" in page.locator("#plan-steps").inner_text()

        page.evaluate("window.notReloaded = true")
        page.locator("#plan-start").press("Enter")
        # Live: the counts move without a reload, until only the drifted step is left.
        page.locator("#count-done:not([data-n='0'])").wait_for(timeout=20_000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "rollback-progress.png"), full_page=True)
        page.locator("#plan-progress[data-state='waiting']").wait_for(timeout=60_000)
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("#count-done").get_attribute("data-n") == str(total - 1)
        assert page.locator("#count-drift").get_attribute("data-n") == "1"
        waiting = page.locator("#step-0, .waiting-steps li").first.inner_text()
        assert "15" in waiting and "50" in waiting  # now and after the action, side by side
        page.screenshot(path=str(SCREENSHOTS / "rollback-drift.png"), full_page=True)

        # Keep the person's change: skip the step, by keyboard.
        page.locator(".waiting-steps button[value='skip']").press("Enter")
        page.locator("#plan-progress[data-state='completed']").wait_for(timeout=10_000)
    finally:
        context.close()
    assert RollbackPlan.objects.get(pk=plan.pk).state == RollbackPlan.State.COMPLETED
    assert served.data["records"] == {**original, "acct-7-3": {"discount": 15}}
