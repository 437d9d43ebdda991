"""Operator accounts: people who use the desk, each holding one role."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction

from approvals.audit import Actor, audit_record
from approvals.roles import ADMIN, ROLES


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
    return user, created
