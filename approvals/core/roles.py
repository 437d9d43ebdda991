"""Roles are groups of desk permissions. This module is the one place that says who may do what."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction

PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("view_desk", "See the dashboard, queue, sessions and kill switches"),
    ("view_audit", "Read the audit trail"),
    ("verify_audit", "Run the audit chain verifier"),
    ("export_audit", "Export the audit trail"),
    ("decide_tier1", "Decide tier 1 escalations"),
    ("decide_tier2", "Give the senior approval of tier 2 escalations"),
    ("decide_tier3", "Decide tier 3 escalations"),
    ("operate_killswitch", "Engage and release kill switches"),
    ("release_agent", "Release a quarantined agent"),
    ("run_rollback", "Plan and run rollbacks"),
    ("manage_desk", "Manage agents, tokens, domains, policies and users"),
)


VIEWER = "viewer"


APPROVER = "approver"


SENIOR_APPROVER = "senior_approver"


ONCALL = "oncall"


INCIDENT_COMMANDER = "incident_commander"


ADMIN = "admin"


_READ = {"view_desk", "view_audit"}


ROLES: dict[str, set[str]] = {
    VIEWER: _READ,
    APPROVER: _READ | {"decide_tier1"},
    SENIOR_APPROVER: _READ | {"decide_tier1", "decide_tier2"},
    ONCALL: _READ | {"verify_audit", "operate_killswitch"},
    INCIDENT_COMMANDER: _READ
    | {
        "verify_audit",
        "export_audit",
        "decide_tier1",
        "decide_tier2",
        "decide_tier3",
        "operate_killswitch",
        "release_agent",
        "run_rollback",
    },
    ADMIN: {codename for codename, _ in PERMISSIONS},
}


ROLE_ORDER = [VIEWER, APPROVER, SENIOR_APPROVER, ONCALL, INCIDENT_COMMANDER, ADMIN]


def perm(codename: str) -> str:
    """The full permission name for user.has_perm()."""
    return f"approvals.{codename}"


@transaction.atomic
def roles_sync() -> None:
    """Create the role groups and set exactly their permissions. Safe to run any number of times."""
    by_codename = {
        p.codename: p
        for p in Permission.objects.filter(
            content_type__app_label="approvals", codename__in=[c for c, _ in PERMISSIONS]
        )
    }
    for role, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set([by_codename[c] for c in codenames])


def roles_sync_after_migrate(**kwargs: Any) -> None:
    roles_sync()


def role_names(user: Any) -> list[str]:
    names = {g.name for g in user.groups.all()}
    return [role for role in ROLE_ORDER if role in names]
