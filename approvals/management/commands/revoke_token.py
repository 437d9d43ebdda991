from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.agents import token_revoke
from approvals.audit import Actor


class Command(BaseCommand):
    help = "Revoke an agent token by its prefix (idk_...)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix", help="the token's public prefix, or the whole token")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = "_".join(options["prefix"].split("_")[:2])
        try:
            token = token_revoke(prefix=prefix, actor=Actor.system("cli"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"token {token.prefix} revoked at {token.revoked_at:%Y-%m-%d %H:%M:%S %Z}"
        )
