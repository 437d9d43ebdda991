from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.agents import token_issue
from approvals.audit import Actor


class Command(BaseCommand):
    help = "Issue a scoped agent token (creating the agent if needed); prints the token alone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="agent name, e.g. procurement-bot")
        parser.add_argument("--domain", required=True, help="the one domain the token acts in")
        parser.add_argument(
            "--scope",
            action="append",
            required=True,
            help="tool:verb pattern, repeatable: --scope create_order:create --scope '*:read'",
        )
        parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            issued = token_issue(
                agent_name=options["agent"],
                domain_slug=options["domain"],
                scopes=options["scope"],
                ttl=options["ttl"],
                actor=Actor.system("cli"),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(issued.token)
        self.stderr.write(
            f"token {issued.record.prefix} for {options['agent']} in {options['domain']}, "
            f"expires {issued.record.expires_at:%Y-%m-%d %H:%M:%S %Z}; it is not shown again"
        )
