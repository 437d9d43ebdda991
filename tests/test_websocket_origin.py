"""The operators' websocket opens only for a page of the desk's own origin: scheme, host and
port, not the host alone."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from incidentdesk.origins import origin_allowed
from tests.conftest import session_cookie
from tests.servers import Desk
from tests.test_live import open_socket
from tests.test_production_layout import layout  # noqa: F401 - the fixture, for nginx below

pytestmark = pytest.mark.django_db(transaction=True)


def refused(desk: Desk, cookies: dict[str, str], origin: str) -> int:
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(desk, cookies, origin=origin)
    return refusal.value.response.status_code


def port_of(desk: Desk) -> int:
    return int(desk.url.rsplit(":", 1)[1])


def test_the_desks_own_origin_is_accepted(desk: Desk, viewer) -> None:
    with open_socket(desk, session_cookie(viewer), origin=desk.url) as ws:
        assert 'id="chain-status"' in str(ws.recv(timeout=10))


def test_same_host_on_another_port_is_refused(desk: Desk, viewer) -> None:
    other = f"http://127.0.0.1:{port_of(desk) + 1}"
    assert refused(desk, session_cookie(viewer), other) == 403


def test_same_host_and_port_under_another_scheme_is_refused(desk: Desk, viewer) -> None:
    other = f"https://127.0.0.1:{port_of(desk)}"
    assert refused(desk, session_cookie(viewer), other) == 403


def test_another_allowed_host_name_is_another_origin(desk: Desk, viewer) -> None:
    # localhost is in ALLOWED_HOSTS too, but the page was not served from it.
    other = f"http://localhost:{port_of(desk)}"
    assert refused(desk, session_cookie(viewer), other) == 403


def test_no_origin_or_a_null_origin_is_refused(desk: Desk, viewer) -> None:
    cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(viewer).items())
    for origin in (None, "null"):
        headers = {"Cookie": cookie} if origin is None else {"Cookie": cookie, "Origin": origin}
        with pytest.raises(InvalidStatus) as refusal:
            connect(f"{desk.ws_url}/ws/desk/", additional_headers=headers, proxy=None)
        assert refusal.value.response.status_code == 403


def test_through_nginx_the_browsers_host_decides(
    layout: Desk,  # noqa: F811 - the fixture imported above
    viewer: Any,
) -> None:
    """nginx passes the Host the browser sent; the desk's origin is that, on nginx's port."""
    cookies = session_cookie(viewer)
    with open_socket(layout, cookies, origin=layout.url) as ws:
        assert 'id="chain-status"' in str(ws.recv(timeout=10))
    assert refused(layout, cookies, f"http://127.0.0.1:{port_of(layout) + 1}") == 403
    assert refused(layout, cookies, f"https://127.0.0.1:{port_of(layout)}") == 403


def scope(origin: str | None, host: str = "desk.example.com", **extra: Any) -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": "ws", "headers": headers, **extra}


def test_origin_rules(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["desk.example.com", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.HTTPS = False
    assert origin_allowed(scope("http://desk.example.com"))
    assert origin_allowed(scope("http://DESK.example.com:80"))  # the default port, spelled out
    assert origin_allowed(scope("http://desk.example.com:8000", host="desk.example.com:8000"))
    assert not origin_allowed(scope("http://desk.example.com:8001", host="desk.example.com:8000"))
    assert not origin_allowed(scope("https://desk.example.com"))
    assert not origin_allowed(scope("http://evil.example", host="evil.example"))  # not allowed
    assert not origin_allowed(scope("http://desk.example.com/path"))
    assert not origin_allowed(scope(None))
    assert origin_allowed(scope("http://[::1]:8000", host="[::1]:8000"))
    # Sent twice, a header says nothing.
    doubled = scope("http://desk.example.com")
    doubled["headers"].append((b"origin", b"http://evil.example"))
    assert not origin_allowed(doubled)

    # Over TLS (HTTPS, or a secure connection) the desk's pages are https.
    assert origin_allowed(scope("https://desk.example.com", scheme="wss"))
    settings.HTTPS = True
    assert origin_allowed(scope("https://desk.example.com"))
    assert not origin_allowed(scope("http://desk.example.com"))

    # CSRF_TRUSTED_ORIGINS, when set, are the desk's origins, whatever the Host.
    settings.CSRF_TRUSTED_ORIGINS = ["https://desk.example.com", "https://*.ops.example.com"]
    assert origin_allowed(scope("https://desk.example.com", host="internal:8002"))
    assert origin_allowed(scope("https://eu.ops.example.com"))
    assert not origin_allowed(scope("https://desk.example.com:8443"))
    assert not origin_allowed(scope("http://eu.ops.example.com"))
    assert not origin_allowed(scope("https://evil-ops.example.com"))
