"""Operator accounts: people who use the desk, each holding one role."""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction
from django.utils.crypto import constant_time_compare

from approvals import live
from approvals.audit import Actor, audit_record
from approvals.core import ADMIN, ROLES


@transaction.atomic
def operator_ensure(
    *, username: str, role: str, password: str, actor: Actor
) -> tuple[AbstractUser, bool]:
    """Make `username` an operator holding exactly `role`, with this password.

    Idempotent: running it again leaves the same account and records nothing new unless
    the role changed.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    User = get_user_model()
    user, created = User.objects.select_for_update().get_or_create(username=username)
    user.set_password(password)
    user.is_staff = user.is_superuser = role == ADMIN
    user.save()
    before = sorted(user.groups.values_list("name", flat=True))
    if before != [role]:
        user.groups.set([Group.objects.get(name=role)])
        audit_record(
            actor=actor,
            action="operator.role_set",
            object_type="user",
            object_id=user.pk,
            summary=f"{username} now holds the {role} role",
            data={"username": username, "role": role, "previous": before},
        )
        if before:  # pages opened under the previous role render or close by the new one
            live.operator_access_changed(user.pk)
    return user, created


@transaction.atomic
def operator_signed_out(*, user: AbstractUser) -> None:
    """Record a sign-out (its session is already gone) and close the pages it had open."""
    audit_record(actor=Actor.user(user), action="auth.logout", summary="Signed out")
    live.operator_access_changed(user.pk)


def operator_live_permissions(*, session_key: str | None, user_id: int) -> set[str] | None:
    """What the operator behind an open page may still do, or None once the page's session
    has ended (signed out, expired, password changed, account deactivated)."""
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    if session.get(SESSION_KEY) != str(user_id):
        return None
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None or not constant_time_compare(
        session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()
    ):
        return None
    return user.get_all_permissions()
