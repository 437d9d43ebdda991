from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from pydantic import ValidationError

from approvals.audit import Actor
from approvals.models import Domain
from approvals.policy import PolicyDocument, policy_export, policy_publish


class Command(BaseCommand):
    help = "Export a domain's current policy as JSON, or import a file as its next version."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        export = sub.add_parser("export", help="write the current policy as JSON")
        export.add_argument("domain")
        export.add_argument("--output", "-o", help="file (default: standard output)")
        load = sub.add_parser("import", help="publish a JSON file as the next version")
        load.add_argument("file", help="a file written by export, or '-' for standard input")
        load.add_argument("--domain", help="the domain (default: the file's 'domain')")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "export":
            domain = self.domain(options["domain"])
            text = json.dumps(policy_export(domain), indent=2) + "\n"
            if options["output"]:
                Path(options["output"]).write_text(text)
            else:
                self.stdout.write(text, ending="")
            return
        source = sys.stdin if options["file"] == "-" else None
        try:
            raw = json.loads(source.read() if source else Path(options["file"]).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"{options['file']}: {exc}") from None
        if not isinstance(raw, dict):
            raise CommandError(f"{options['file']}: expected a JSON object")
        domain = self.domain(options["domain"] or raw.pop("domain", ""))
        raw.pop("domain", None)
        raw.pop("version", None)
        try:
            document = PolicyDocument.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise CommandError(f"{options['file']}: {problems}") from None
        version = policy_publish(domain=domain, document=document, actor=Actor.system("cli"))
        self.stdout.write(f"{domain.slug}: policy v{version.version} published")

    @staticmethod
    def domain(slug: str) -> Domain:
        domain = Domain.objects.filter(slug=slug).first()
        if domain is None:
            raise CommandError(f"no domain {slug!r}")
        return domain
