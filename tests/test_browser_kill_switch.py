"""On-call engages a kill switch from the page; every open page shows the banner at once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from incidentdesk_client import Desk as AgentDesk

from approvals.models import KillSwitchChange
from tests.agents import agent_token, demo_domain
from tests.browser import (
    SCREENSHOTS,
    engage_by_keyboard,
    in_sync,
    operator_with_real_password,
    sign_in,
)
from tests.servers import Desk, agent_socket

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


def test_the_page_shows_live_which_agents_acknowledged_an_engage(
    desk: Desk, chromium: Any, make_operator: Any
) -> None:
    demo_domain("procurement")
    operator_with_real_password(make_operator, "otto", "oncall")
    operator_with_real_password(make_operator, "vera", "viewer")
    otto, vera = (chromium.new_context(viewport={"width": 1366, "height": 900}) for _ in "ov")
    otto_page, vera_page = otto.new_page(), vera.new_page()
    sign_in(otto_page, desk, "otto")
    sign_in(vera_page, desk, "vera")
    vera_page.goto(desk.url + "/killswitches/")
    in_sync(vera_page)
    client = AgentDesk(desk.url, agent_token("buyer", "procurement", "*:read"))
    try:
        with agent_socket(desk, agent_token("mute-bot", "procurement", "*:read")) as silent:
            json.loads(silent.recv(timeout=10))  # the state on connect, not acknowledged
            # Both sockets appear on the open page without a reload.
            vera_page.locator("#told-buyer[data-state='acknowledged']").wait_for(timeout=10_000)
            vera_page.locator("#told-mute-bot[data-state='silent']").wait_for(timeout=10_000)
            engage_by_keyboard(otto_page, desk, "procurement", "runaway orders")
            waiting = vera_page.locator(".containment[data-contained='no']")
            waiting.wait_for(timeout=10_000)
            assert "Waiting for 1 of 2 agents: mute-bot" in waiting.inner_text()
            vera_page.locator("#told-buyer[data-state='acknowledged']").wait_for(timeout=10_000)
            assert vera_page.locator("#told-mute-bot").get_attribute("data-state") == "silent"
            version = KillSwitchChange.objects.get().pk
            silent.send(json.dumps({"type": "killswitch.ack", "version": version}))
            contained = vera_page.locator(".containment[data-contained='yes']")
            contained.wait_for(timeout=10_000)
            change = KillSwitchChange.objects.get()
            assert f"Contained in {change.time_to_contain:.3f} s" in contained.inner_text()
            assert vera_page.locator("#told-mute-bot").get_attribute("data-state") == "acknowledged"
            # Loaded again, the page shows the switch engaged and the engage's time to contain.
            vera_page.reload()
            history = vera_page.locator("table.events").last.inner_text()
            assert f"{change.time_to_contain:.3f} s (2 agents)" in history
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            vera_page.screenshot(
                path=str(SCREENSHOTS / "kill-switch-acknowledgements.png"), full_page=True
            )
    finally:
        client.close()
    otto.close()
    vera.close()
