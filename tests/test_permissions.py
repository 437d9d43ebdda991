"""Each role sees and does exactly what it should; the checks live in the views."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from approvals.core import ROLE_ORDER, perm
from approvals.models import ChainVerification

pytestmark = pytest.mark.django_db

# What each role may do, written out by hand (not derived from approvals.roles).
ALLOWED = {
    "viewer": {"view_desk", "view_audit"},
    "approver": {"view_desk", "view_audit", "decide_tier1"},
    "senior_approver": {"view_desk", "view_audit", "decide_tier1", "decide_tier2"},
    "oncall": {"view_desk", "view_audit", "verify_audit", "operate_killswitch"},
    "incident_commander": {
        "view_desk",
        "view_audit",
        "verify_audit",
        "export_audit",
        "decide_tier1",
        "decide_tier2",
        "decide_tier3",
        "operate_killswitch",
        "release_agent",
        "run_rollback",
    },
    "admin": {
        "view_desk",
        "view_audit",
        "verify_audit",
        "export_audit",
        "decide_tier1",
        "decide_tier2",
        "decide_tier3",
        "operate_killswitch",
        "release_agent",
        "run_rollback",
        "manage_desk",
    },
}
EVERY_PERMISSION = set().union(*ALLOWED.values())


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_role_grants_exactly_its_permissions(role, make_operator) -> None:
    user = make_operator(f"someone-{role}", role)
    granted = {codename for codename in EVERY_PERMISSION if user.has_perm(perm(codename))}
    assert granted == ALLOWED[role]


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_every_role_sees_the_dashboard_and_audit(role, make_operator, login) -> None:
    client = login(make_operator(f"someone-{role}", role))
    assert client.get(reverse("dashboard")).status_code == 200
    assert client.get(reverse("audit")).status_code == 200


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_only_oncall_and_above_may_run_the_verifier(role, make_operator, login) -> None:
    client = login(make_operator(f"someone-{role}", role))
    response = client.post(reverse("audit-verify"))
    expected = 302 if "verify_audit" in ALLOWED[role] else 403
    assert response.status_code == expected
    assert ChainVerification.objects.exists() == (expected == 302)


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_only_commanders_and_admins_may_export(role, make_operator, login) -> None:
    client = login(make_operator(f"someone-{role}", role))
    response = client.post(reverse("audit-export"))
    assert response.status_code == (200 if "export_audit" in ALLOWED[role] else 403)


@pytest.mark.parametrize("role", ROLE_ORDER)
def test_only_admins_reach_the_admin_site(role, make_operator, login) -> None:
    client = login(make_operator(f"someone-{role}", role))
    response = client.get(reverse("admin:index"))
    assert (response.status_code == 200) == (role == "admin")


def test_user_without_a_role_is_refused_everywhere(outsider, login) -> None:
    client = login(outsider)
    for name in ("dashboard", "audit"):
        assert client.get(reverse(name)).status_code == 403
    for name in ("audit-verify", "audit-export"):
        assert client.post(reverse(name)).status_code == 403


def test_partial_requested_directly_still_checks_permission(outsider, login) -> None:
    client = login(outsider)
    response = client.get(reverse("audit"), headers={"HX-Request": "true"})
    assert response.status_code == 403
    assert "chain-status" not in response.content.decode()


def test_anonymous_is_sent_to_sign_in(client) -> None:
    for name in ("dashboard", "audit"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    for name in ("audit-verify", "audit-export"):
        assert client.post(reverse(name)).status_code == 302
    assert not ChainVerification.objects.exists()


def test_viewer_is_not_offered_actions_it_may_not_take(viewer, login) -> None:
    page = login(viewer).get(reverse("audit")).content.decode()
    assert "Verify the chain now" not in page
    assert "Export JSON lines" not in page


def test_navigation_shows_only_permitted_pages(viewer, admin_operator, login) -> None:
    assert 'href="/admin/"' not in login(viewer).get(reverse("dashboard")).content.decode()
    assert 'href="/admin/"' in login(admin_operator).get(reverse("dashboard")).content.decode()


def test_role_changes_are_audited(make_operator) -> None:
    from approvals.models import AuditEvent

    user = make_operator("rita", "viewer")
    make_operator("rita", "approver")
    make_operator("rita", "approver")
    events = AuditEvent.objects.filter(action="operator.role_set", object_id=str(user.pk))
    assert [e.data["role"] for e in events.order_by("seq")] == ["viewer", "approver"]
    assert get_user_model().objects.get(pk=user.pk).groups.get().name == "approver"
