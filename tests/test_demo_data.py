from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import RequestFactory

from approvals.core import ROLE_ORDER
from approvals.models import AuditEvent, Domain

pytestmark = pytest.mark.django_db


def load(**options) -> str:
    from io import StringIO

    out = StringIO()
    call_command("load_demo", "--allow-production", stdout=out, **options)
    return out.getvalue()


def test_demo_creates_domains_and_one_login_per_role() -> None:
    output = load(password="pw-for-tests")
    assert sorted(Domain.objects.values_list("slug", flat=True)) == [
        "billing",
        "devops",
        "procurement",
    ]
    for role in ROLE_ORDER:
        assert role in output
        # A sign-in comes with its request: sign-in throttling counts by it.
        request = RequestFactory().post("/login/")
        user = authenticate(request, username=role, password="pw-for-tests")
        assert user is not None, role
        assert [g.name for g in user.groups.all()] == [role]
    assert "pw-for-tests" in output


def test_demo_is_idempotent() -> None:
    load(password="pw")
    events = AuditEvent.objects.count()
    load(password="pw")
    assert AuditEvent.objects.count() == events
    assert Domain.objects.count() == 3


def test_demo_refuses_production_mode_without_the_flag(settings) -> None:
    settings.DATABASE_URL = "postgres://somewhere/desk"
    with pytest.raises(CommandError, match="production mode"):
        call_command("load_demo")
