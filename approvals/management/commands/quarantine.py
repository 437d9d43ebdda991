from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.core import Refused, perm
from approvals.killswitches import agent_quarantine


class Command(BaseCommand):
    help = (
        "Quarantine one agent: revoke its tokens and cancel its open and unexecuted actions. "
        "Needs an operator with the oncall role or above: --as USERNAME."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent")
        parser.add_argument("--reason", default="")
        parser.add_argument(
            "--as",
            dest="operator",
            default=os.environ.get("INCIDENTDESK_OPERATOR", ""),
            help="the operator acting (default: $INCIDENTDESK_OPERATOR)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["operator"], is_active=True).first()
        if user is None:
            raise CommandError("say who acts: --as USERNAME (an operator with the oncall role)")
        if not user.has_perm(perm("operate_killswitch")):
            raise CommandError(f"{user.get_username()} may not quarantine agents (needs oncall)")
        try:
            revoked, cancelled = agent_quarantine(
                agent_name=options["agent"], actor=Actor.user(user), reason=options["reason"]
            )
        except Refused as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(
            f"agent {options['agent']} quarantined: {revoked} tokens revoked, "
            f"{cancelled} actions cancelled"
        )
