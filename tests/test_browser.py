"""Headless Chromium against the desk served by a real ASGI server.

These run in their own pytest process (`-m browser`): Playwright's sync API keeps an event
loop on the main thread, which Django would otherwise refuse to touch the database from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import make_password

from approvals.audit import Actor
from approvals.demo import DEMO_DOMAINS
from approvals.domains import domain_ensure
from tests.conftest import PASSWORD
from tests.servers import ROOT, Desk, free_port, running_desk

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    page.csp_violations = []
    page.on(
        "console",
        lambda msg: (
            page.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
        ),
    )
    yield page
    context.close()


def operator_with_real_password(make_operator: Any, username: str, role: str) -> Any:
    """An operator the separately running server can sign in (PBKDF2, not the tests' MD5)."""
    user = make_operator(username, role)
    user.password = make_password(PASSWORD, hasher="pbkdf2_sha256")
    user.save(update_fields=["password"])
    return user


def sign_in(page: Any, desk: Desk, username: str) -> None:
    page.goto(desk.url + "/")
    assert "/login/" in page.url
    # The username field takes the focus by itself; the rest is typed.
    page.wait_for_function("document.activeElement?.id === 'id_username'")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == desk.url + "/", page.content()[:3000]


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
