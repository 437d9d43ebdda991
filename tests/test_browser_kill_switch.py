"""On-call engages a kill switch from the page; every open page shows the banner at once."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import KillSwitchChange
from tests.agents import demo_domain
from tests.browser import SCREENSHOTS, engage_by_keyboard, operator_with_real_password, sign_in
from tests.servers import Desk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_engage_with_confirmation_and_the_banner_reaches_other_pages_live(
    desk: Desk, chromium: Any, make_operator: Any
) -> None:
    demo_domain("procurement")
    operator_with_real_password(make_operator, "otto", "oncall")
    operator_with_real_password(make_operator, "vera", "viewer")
    pages = []
    for name in ("otto", "vera"):
        context = chromium.new_context(viewport={"width": 1366, "height": 800})
        page = context.new_page()
        sign_in(page, desk, name)
        pages.append(page)
    otto, vera = pages
    vera.goto(desk.url + "/queue/")
    vera.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
    assert vera.locator(".kill-banner").count() == 0
    engage_by_keyboard(otto, desk, "procurement", "runaway orders")
    assert "Kill switch procurement ENGAGED" in otto.content()
    banner = vera.locator(".kill-banner")
    banner.wait_for(timeout=10_000)
    assert "runaway orders" in banner.inner_text() and "otto" in banner.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    otto.screenshot(path=str(SCREENSHOTS / "kill-switch.png"), full_page=True)
    assert KillSwitchChange.objects.get().actor == "otto"
    # The viewer's page offers no engage or release.
    vera.goto(desk.url + "/killswitches/")
    assert vera.locator("form.switch-form").count() == 0
    for page in pages:
        page.context.close()
