from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.core import Refused
from approvals.killswitches import agent_release
from approvals.management.operators import acting_operator, add_operator_argument


class Command(BaseCommand):
    help = (
        "Release a quarantined agent. Its tokens stay revoked: issue new ones. "
        "Needs an incident commander: --as USERNAME."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent")
        parser.add_argument("--reason", default="")
        add_operator_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        user = acting_operator(
            options["operator"],
            codename="release_agent",
            who="an incident commander",
            may_not="release agents (needs incident_commander)",
        )
        try:
            agent = agent_release(
                agent_name=options["agent"], actor=Actor.user(user), reason=options["reason"]
            )
        except Refused as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(
            f"agent {agent.name} released from quarantine; its tokens stay revoked: "
            "issue new ones with issue_token"
        )
