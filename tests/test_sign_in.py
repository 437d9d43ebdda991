from __future__ import annotations

import pytest
from django.urls import reverse

from approvals.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_sign_in_lands_on_the_dashboard_and_is_audited(client, viewer) -> None:
    response = client.post(reverse("login"), {"username": viewer.username, "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor == viewer.username


def test_failed_sign_in_says_so_and_is_counted_not_audited(client, viewer) -> None:
    # What was typed may be a password: failures are counted (tests/test_login_throttle.py),
    # and only a lockout reaches the audit trail.
    response = client.post(reverse("login"), {"username": viewer.username, "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert not AuditEvent.objects.filter(action__startswith="auth.").exists()


def test_sign_out_is_a_post_and_is_audited(viewer, login) -> None:
    client = login(viewer)
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="auth.logout", actor=viewer.username).exists()
    assert client.get(reverse("dashboard")).status_code == 302


def test_pages_carry_a_csp_with_a_nonce_on_every_script(viewer, login) -> None:
    response = login(viewer).get(reverse("dashboard"))
    policy = response["Content-Security-Policy"]
    assert "script-src 'self' 'nonce-" in policy
    nonce = policy.split("'nonce-")[1].split("'")[0]
    html = response.content.decode()
    scripts = html.count("<script")
    assert scripts >= 2  # htmx, its websocket extension, the desk's own script
    assert html.count(f'nonce="{nonce}"') == scripts
    assert "/static/django_htmx/htmx-2.min.js" in html
    assert "/static/django_htmx/ext/hx-ws-2.min.js" in html
