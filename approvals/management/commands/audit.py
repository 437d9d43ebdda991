from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from approvals import audit
from approvals.audit import Actor, AuditFilters


class Command(BaseCommand):
    help = "Verify the audit chain, or export audit events as JSON lines."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        sub.add_parser("verify", help="walk the chain and name the first broken event")
        export = sub.add_parser("export", help="write events as JSON lines, oldest first")
        export.add_argument("--output", "-o", help="file to write (default: standard output)")
        export.add_argument("--action", default="", help="only actions starting with this")
        export.add_argument("--actor", default="")
        export.add_argument("--domain", default="")
        export.add_argument("--since", default="", help="ISO 8601 time, inclusive")
        export.add_argument("--until", default="", help="ISO 8601 time, exclusive")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "verify":
            self.verify()
        else:
            self.export(options)

    def verify(self) -> None:
        def progress(checked: int, total: int) -> None:
            self.stderr.write(f"verified {checked} of {total} events", ending="\r")

        report = audit.audit_verify_chain(expected_head=audit.last_intact_head(), progress=progress)
        self.stderr.write("")
        if not report.intact:
            raise CommandError(
                f"audit chain BROKEN at event #{report.first_broken_seq}: {report.problem}"
            )
        self.stdout.write(f"audit chain intact: {report.checked} events, head #{report.head_seq}")

    def export(self, options: dict[str, Any]) -> None:
        filters = AuditFilters(
            action=options["action"],
            actor=options["actor"],
            domain=options["domain"],
            since=self.parse_time("--since", options["since"]),
            until=self.parse_time("--until", options["until"]),
        )
        lines = audit.audit_export(actor=Actor.system("cli"), filters=filters)
        out = open(options["output"], "w") if options["output"] else sys.stdout  # noqa: SIM115
        count = 0
        try:
            for line in lines:
                out.write(line)
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        self.stderr.write(f"exported {count} events")

    @staticmethod
    def parse_time(flag: str, value: str) -> Any:
        if not value:
            return None
        parsed = parse_datetime(value)
        if parsed is None or parsed.tzinfo is None:
            raise CommandError(f"{flag}: {value!r} is not an ISO 8601 time with a time zone")
        return parsed
