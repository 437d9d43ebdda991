"""Helpers for the headless Chromium tests (the fixtures are in conftest)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.hashers import make_password

from tests.conftest import PASSWORD
from tests.servers import ROOT, Desk

SCREENSHOTS = ROOT / "var" / "screenshots"


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


def engage_by_keyboard(page: Any, desk: Desk, scope: str, reason: str) -> None:
    """On the kill switches page, with the keyboard only: reason, the switch's name to
    confirm, Enter."""
    page.goto(desk.url + "/killswitches/")
    page.locator(f"#reason-{scope}").focus()
    page.keyboard.type(reason)
    page.keyboard.press("Tab")
    page.keyboard.type(scope)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def in_sync(page: Any) -> None:
    """Wait until the page's live connection has caught up: after this, no catch-up swap takes
    a control away from under a key press."""
    page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
