"""The operator a command acts as: `--as USERNAME`, or $INCIDENTDESK_OPERATOR."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from approvals.core import perm


def add_operator_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--as",
        dest="operator",
        default=os.environ.get("INCIDENTDESK_OPERATOR", ""),
        help="the operator acting (default: $INCIDENTDESK_OPERATOR)",
    )


def acting_operator(username: str, *, codename: str, who: str, may_not: str) -> Any:
    """The active operator named, if they hold `codename`; otherwise the CommandError that says
    who is needed (`who`) or what they may not do (`may_not`)."""
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"say who acts: --as USERNAME ({who})")
    if not user.has_perm(perm(codename)):
        raise CommandError(f"{user.get_username()} may not {may_not}")
    return user
