"""Sign-in throttling: failures are counted per username and client address, a lockout answers
429 with the time to try again and is audited once, and nothing typed into the username field
is kept unless it names an account."""

from __future__ import annotations

import http.client
import re
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from axes.models import AccessAttempt
from django.test import Client, RequestFactory
from django.urls import reverse

from approvals.desk import client_ip
from approvals.models import AuditEvent
from tests.browser import operator_with_real_password
from tests.conftest import PASSWORD
from tests.servers import Desk
from tests.test_production_layout import layout  # noqa: F401 - the fixture, for nginx below

pytestmark = pytest.mark.django_db

LIMIT = 3
TYPED_SECRET = "Tr0ub4dor&3-typed-in-the-wrong-field"


@pytest.fixture(autouse=True)
def small_limit(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def sign_in(client: Client, username: str, password: str, path: str = "", **extra: str) -> Any:
    form = {"username": username, "password": password}
    return client.post(path or reverse("login"), form, **extra)


def everything_kept() -> str:
    """All the audit trail and axes hold, as text."""
    events = AuditEvent.objects.values_list("summary", "data", "object_id")
    attempts = AccessAttempt.objects.values_list("username", "get_data", "post_data")
    return repr(list(events)) + repr(list(attempts))


def test_failed_sign_ins_are_counted_not_audited(client, viewer) -> None:
    for _ in range(LIMIT - 1):
        response = sign_in(client, viewer.username, "wrong")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    assert not AuditEvent.objects.filter(action__startswith="auth.").exists()
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address) == (viewer.username, "127.0.0.1")
    assert attempt.failures_since_start == LIMIT - 1


def test_a_password_typed_as_username_is_kept_nowhere(client, viewer) -> None:
    for _ in range(LIMIT + 2):
        sign_in(client, TYPED_SECRET, "whatever")
    kept = everything_kept()
    assert TYPED_SECRET not in kept
    assert "Tr0ub4dor" not in kept
    # Still counted, under a keyed hash of what was typed, and locked like any other.
    attempt = AccessAttempt.objects.get()
    assert attempt.username.startswith("unknown:") and attempt.failures_since_start == LIMIT
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.data["username"] is None and event.data["ip_address"] == "127.0.0.1"
    assert "an unknown username" in event.summary


def test_lockout_answers_429_and_says_when_to_try_again(client, viewer) -> None:
    for _ in range(LIMIT - 1):
        assert sign_in(client, viewer.username, "wrong").status_code == 200
    locked = sign_in(client, viewer.username, "wrong")
    assert locked.status_code == 429
    retry_after = int(locked["Retry-After"])
    assert 14 * 60 < retry_after <= 15 * 60
    page = locked.content.decode()
    assert "Too many failed sign-ins" in page and "Try again after" in page
    assert "in 15 minutes" in page
    # The right password does not get in while the lock holds.
    assert sign_in(client, viewer.username, PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session


def test_lockout_is_per_username_and_address(client, viewer, approver) -> None:
    for _ in range(LIMIT):
        sign_in(client, viewer.username, "wrong")
    assert sign_in(client, viewer.username, PASSWORD).status_code == 429
    # Another account from the same address, and the same account from elsewhere, sign in.
    assert sign_in(Client(), approver.username, PASSWORD).status_code == 302
    elsewhere = sign_in(Client(), viewer.username, PASSWORD, REMOTE_ADDR="192.0.2.44")
    assert elsewhere.status_code == 302


def test_lockout_is_audited_once_with_the_accounts_username(client, viewer) -> None:
    for _ in range(LIMIT + 3):
        sign_in(client, viewer.username, "wrong")
    sign_in(client, viewer.username, PASSWORD)
    [event] = AuditEvent.objects.filter(action="auth.locked_out")
    assert event.actor == "login"
    assert event.data["username"] == viewer.username
    assert event.data["ip_address"] == "127.0.0.1"
    assert f"Sign-in locked for {viewer.username!r} from 127.0.0.1" in event.summary
    # Attempts while locked are not counted: the lock ends when it said it would.
    assert AccessAttempt.objects.get().failures_since_start == LIMIT


def test_after_the_cool_off_one_can_sign_in_and_a_new_lockout_is_audited(
    client, viewer, settings
) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    for _ in range(LIMIT):
        sign_in(client, viewer.username, "wrong")
    locked = sign_in(client, viewer.username, PASSWORD)
    assert locked.status_code == 429 and locked["Retry-After"] == "1"
    time.sleep(1.1)
    assert sign_in(client, viewer.username, PASSWORD).status_code == 302
    # A success clears the count; a new run of failures locks (and is audited) again.
    assert not AccessAttempt.objects.exists()
    for _ in range(LIMIT):
        sign_in(Client(), viewer.username, "wrong")
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 2


def test_admin_login_is_throttled(client, admin_operator) -> None:
    path = reverse("admin:login")
    for _ in range(LIMIT - 1):
        assert sign_in(client, admin_operator.username, "wrong", path).status_code == 200
    assert sign_in(client, admin_operator.username, "wrong", path).status_code == 429
    assert sign_in(client, admin_operator.username, PASSWORD, path).status_code == 429
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 1


def test_a_client_cannot_name_its_own_address(client, viewer) -> None:
    """With no trusted proxy, X-Forwarded-For is the client's word and changes nothing."""
    for _ in range(LIMIT):
        sign_in(client, viewer.username, "wrong", HTTP_X_FORWARDED_FOR="198.51.100.1")
    retry = sign_in(client, viewer.username, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert retry.status_code == 429
    assert AccessAttempt.objects.get().ip_address == "127.0.0.1"


def address(remote: str, forwarded: str | None = None) -> str | None:
    headers = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(RequestFactory().post("/login/", **headers))


def test_forwarded_address_is_believed_only_from_a_trusted_proxy(settings: Any) -> None:
    settings.TRUSTED_PROXIES = []
    assert address("203.0.113.9", "198.51.100.1") == "203.0.113.9"
    assert address("127.0.0.1", "198.51.100.1") == "127.0.0.1"

    settings.TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    # nginx appends the address it saw: the right-most entry that is not a proxy is the client,
    # whatever the client wrote to the left of it.
    assert address("127.0.0.1", "198.51.100.1") == "198.51.100.1"
    assert address("127.0.0.1", "6.6.6.6, 198.51.100.1") == "198.51.100.1"
    assert address("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3") == "198.51.100.1"
    assert address("127.0.0.1", "not-an-address, 10.1.2.3") == "10.1.2.3"
    assert address("127.0.0.1", "2001:db8::7") == "2001:db8::7"
    assert address("127.0.0.1") == "127.0.0.1"
    assert address("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # not a proxy of ours


def sign_in_from(
    desk: Desk,
    source: str,
    username: str,
    password: str,
    forwarded: str,
    seen: list[str] | None = None,
) -> int:
    """A sign-in through a running desk, connecting from the loopback address `source`; the
    answer's Retry-After and page are added to `seen`."""
    parts = urlsplit(desk.url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", "/login/")
        page = conn.getresponse()
        html = page.read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        cookie = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie") or "")
        assert token and cookie, html[:500]
        form = {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password}
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookie.group(1)}",
            "X-Forwarded-For": forwarded,
        }
        conn.request("POST", "/login/", body=urlencode(form), headers=headers)
        answer = conn.getresponse()
        body = answer.read().decode()
        if seen is not None:
            seen += [answer.getheader("Retry-After") or "", body]
        return answer.status
    finally:
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_the_desk_as_served_locks_out_with_its_page(desk: Desk, make_operator: Any) -> None:
    user = operator_with_real_password(make_operator, "lars", "viewer")
    limit, seen = 5, []  # the server's LOGIN_FAILURE_LIMIT
    statuses = [
        sign_in_from(desk, "127.0.0.4", user.username, "wrong", "", seen) for _ in range(limit)
    ]
    assert statuses == [200] * (limit - 1) + [429]
    retry_after, page = seen[-2:]
    assert 890 < int(retry_after) <= 900
    assert "Too many failed sign-ins" in page and "Try again after" in page


@pytest.mark.django_db(transaction=True)
def test_behind_nginx_the_address_is_the_one_nginx_saw(
    layout: Desk,  # noqa: F811 - the fixture imported above
    make_operator: Any,
) -> None:
    """In the production layout nginx (a trusted proxy) appends the address it saw; what a
    client writes into X-Forwarded-For itself neither escapes a lockout nor causes one."""
    user = operator_with_real_password(make_operator, "lena", "viewer")
    limit = 5  # the layout's LOGIN_FAILURE_LIMIT
    statuses = [
        sign_in_from(layout, "127.0.0.2", user.username, "wrong", forwarded=f"198.51.100.{n}")
        for n in range(limit)
    ]
    assert statuses == [200] * (limit - 1) + [429]
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.2"}
    # Locked from there, whatever it claims; another client, claiming to be it, is not.
    assert sign_in_from(layout, "127.0.0.2", user.username, PASSWORD, "192.0.2.1") == 429
    assert sign_in_from(layout, "127.0.0.3", user.username, PASSWORD, "127.0.0.2") == 302
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.data["ip_address"] == "127.0.0.2" and event.data["username"] == "lena"
