from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.core import Refused
from approvals.killswitches import agent_quarantine
from approvals.management.operators import acting_operator, add_operator_argument


class Command(BaseCommand):
    help = (
        "Quarantine one agent: revoke its tokens and cancel its open and unexecuted actions. "
        "Needs an operator with the oncall role or above: --as USERNAME."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent")
        parser.add_argument("--reason", default="")
        add_operator_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        user = acting_operator(
            options["operator"],
            codename="operate_killswitch",
            who="an operator with the oncall role",
            may_not="quarantine agents (needs oncall)",
        )
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
