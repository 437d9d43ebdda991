"""The desk as it runs: a real ASGI server, real websocket clients, a real Celery worker."""

from __future__ import annotations

import contextlib
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import session_cookie
from tests.servers import Browser, Desk

pytestmark = pytest.mark.django_db(transaction=True)


def open_socket(desk: Desk, cookies: dict[str, str], origin: str | None = None) -> ClientConnection:
    header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return connect(
        f"{desk.ws_url}/ws/desk/?topics=audit",
        origin=origin or desk.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": header} if header else None,
        open_timeout=10,
        proxy=None,
    )


def receive_until(ws: ClientConnection, text: str, timeout: float = 20) -> list[str]:
    """Messages received until one contains `text`; fails if none does in time."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        seen.append(str(message))
        if text in str(message):
            return seen
    raise AssertionError(f"no message containing {text!r} within {timeout} s; got {seen}")


def test_anonymous_websocket_is_refused(desk: Desk) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(desk, {})
    assert refused.value.response.status_code == 403


def test_websocket_from_a_foreign_origin_is_refused(desk: Desk, oncall) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(desk, session_cookie(oncall), origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_websocket_for_a_user_without_desk_access_is_refused(desk: Desk, outsider) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(desk, session_cookie(outsider))
    assert refused.value.response.status_code == 403


def test_signed_in_socket_gets_current_state_on_connect(desk: Desk, viewer) -> None:
    with open_socket(desk, session_cookie(viewer)) as ws:
        first = str(ws.recv(timeout=10))
    assert 'id="chain-status"' in first
    assert "has not been verified yet" in first
    # A viewer may read the chain status but is not offered the verify button.
    assert "Verify the chain now" not in first


def test_verification_runs_on_the_worker_and_pushes_progress_to_the_socket(
    desk: Desk, oncall
) -> None:
    cookies = session_cookie(oncall)
    browser = Browser(desk.url, cookies)
    status, page = browser.request("GET", "/audit/")
    assert status == 200 and "csrftoken" in browser.cookies

    with open_socket(desk, browser.cookies) as ws:
        receive_until(ws, "has not been verified yet", timeout=10)
        started = time.monotonic()
        status, fragment = browser.htmx_post("/audit/verify/")
        answered = time.monotonic() - started
        # The request only queues the run; the worker does it.
        assert status == 200, fragment
        assert "Verification queued by otto-oncall" in fragment
        messages = receive_until(ws, "Chain intact")

    assert answered < 2
    final = messages[-1]
    assert 'id="chain-status"' in final
    assert "requested by otto-oncall" in final
    # Only the worker sets the intact state: this message came from the Celery task.
    from approvals.models import ChainVerification

    verification = ChainVerification.objects.get()
    assert verification.state == ChainVerification.State.INTACT
    assert verification.checked >= 1


def test_request_without_csrf_token_is_refused(desk: Desk, oncall) -> None:
    browser = Browser(desk.url, session_cookie(oncall))
    status, _ = browser.request("POST", "/audit/verify/", data=b"", headers={"HX-Request": "true"})
    assert status == 403
    from approvals.models import ChainVerification

    assert not ChainVerification.objects.exists()


def test_a_page_gets_only_the_topics_it_asks_for(desk: Desk, viewer) -> None:
    """Without topics a page hears nothing but that it is in sync and the kill switch banner,
    which every page shows (a switch changed by an earlier test may still be on its way)."""
    header = "; ".join(f"{k}={v}" for k, v in session_cookie(viewer).items())
    url = f"{desk.ws_url}/ws/desk/"
    received: list[str] = []
    with connect(url, origin=desk.url, additional_headers={"Cookie": header}, proxy=None) as ws:
        deadline = time.monotonic() + 1
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                received.append(str(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
    assert received and 'id="live-status"' in received[0] and 'data-state="open"' in received[0]
    assert all(message.startswith('<div id="kill-banner"') for message in received[1:]), received
