"""Headless Chromium against the desk served by a real ASGI server.

These run in their own pytest process (`-m browser`): Playwright's sync API keeps an event
loop on the main thread, which Django would otherwise refuse to touch the database from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from approvals.audit import Actor
from approvals.desk import DEMO_DOMAINS
from approvals.policy import domain_ensure
from tests.browser import SCREENSHOTS, operator_with_real_password, sign_in
from tests.servers import Desk, free_port, running_desk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operator_signs_in_with_the_keyboard_and_sees_the_dashboard(
    desk: Desk, page: Any, make_operator: Any
) -> None:
    for slug, name, description in DEMO_DOMAINS:
        domain_ensure(slug=slug, name=name, description=description, actor=Actor.system("t"))
    operator_with_real_password(make_operator, "vera", "viewer")
    sign_in(page, desk, "vera")
    assert page.locator("h1").inner_text() == "Dashboard"
    for _, name, _ in DEMO_DOMAINS:
        assert page.get_by_text(name, exact=True).is_visible()
    assert "vera" in page.locator(".who .user").inner_text()
    page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    assert page.csp_violations == []


def test_chain_verification_progress_arrives_live_in_the_browser(
    desk: Desk, page: Any, make_operator: Any
) -> None:
    operator_with_real_password(make_operator, "otto", "oncall")
    sign_in(page, desk, "otto")
    page.goto(desk.url + "/audit/")
    page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    page.get_by_role("button", name="Verify the chain now").click()
    status = page.locator("#chain-status[data-state='intact']")
    status.wait_for(timeout=15_000)
    assert "requested by otto" in status.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "audit.png"), full_page=True)
    assert page.csp_violations == []


def test_a_dropped_connection_is_shown_and_recovers(
    page: Any, make_operator: Any, tmp_path: Path
) -> None:
    operator_with_real_password(make_operator, "vera", "viewer")
    port = free_port()
    with running_desk(tmp_path / "first", port=port) as desk:
        sign_in(page, desk, "vera")
        page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    # The server is gone: the page must say so rather than look live.
    page.locator("#live-status[data-state='closed']").wait_for(timeout=10_000)
    with running_desk(tmp_path / "second", port=port):
        page.locator("#live-status[data-state='open']").wait_for(timeout=30_000)
        # On reconnect the server sends the current state again.
        page.locator("#chain-status").wait_for(state="attached", timeout=10_000)
