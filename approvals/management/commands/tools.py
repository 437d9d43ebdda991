from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from pydantic import ValidationError

from approvals.audit import Actor
from approvals.models import Domain
from approvals.policy import PolicyDocument, policy_current, policy_publish


class Command(BaseCommand):
    help = (
        "Export a domain's tool registry as JSON, or import a file as the registry of its "
        "policy's next version (the rules stay as they are)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        export = sub.add_parser("export", help="write the current registry as JSON")
        export.add_argument("domain")
        export.add_argument("--output", "-o", help="file (default: standard output)")
        load = sub.add_parser("import", help="publish a registry file with the current rules")
        load.add_argument("file", help="a file written by export, or '-' for standard input")
        load.add_argument("--domain", help="the domain (default: the file's 'domain')")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "export":
            domain = self.domain(options["domain"])
            document, number = policy_current(domain)
            registry = {
                "domain": domain.slug,
                "policy_version": number,
                "unregistered": document.unregistered,
                "tools": [t.model_dump(mode="json", exclude_none=True) for t in document.tools],
            }
            text = json.dumps(registry, indent=2) + "\n"
            if options["output"]:
                Path(options["output"]).write_text(text)
            else:
                self.stdout.write(text, ending="")
            return
        name = options["file"]
        try:
            raw = json.loads(sys.stdin.read() if name == "-" else Path(name).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"{name}: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("tools"), list):
            raise CommandError(f"{name}: expected a JSON object with a 'tools' list")
        domain = self.domain(options["domain"] or raw.get("domain", ""))
        current, _ = policy_current(domain)
        merged = {
            **current.model_dump(mode="json"),
            "tools": raw["tools"],
            "unregistered": raw.get("unregistered", current.unregistered),
            "comment": f"tool registry imported from {Path(name).name if name != '-' else 'stdin'}",
        }
        try:
            document = PolicyDocument.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise CommandError(f"{name}: {problems}") from None
        version = policy_publish(domain=domain, document=document, actor=Actor.system("cli"))
        self.stdout.write(
            f"{domain.slug}: policy v{version.version} published with "
            f"{len(document.tools)} registered tools"
        )

    @staticmethod
    def domain(slug: str) -> Domain:
        domain = Domain.objects.filter(slug=slug).first()
        if domain is None:
            raise CommandError(f"no domain {slug!r}")
        return domain
