from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.policy import (
    document_from,
    domain_named,
    policy_current,
    policy_publish,
    read_json_object,
    write_json,
)


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
            domain = domain_named(options["domain"])
            document, number = policy_current(domain)
            registry = {
                "domain": domain.slug,
                "policy_version": number,
                "unregistered": document.unregistered,
                "tools": [t.model_dump(mode="json", exclude_none=True) for t in document.tools],
            }
            write_json(registry, options["output"], self.stdout)
            return
        name = options["file"]
        raw = read_json_object(name)
        if not isinstance(raw.get("tools"), list):
            raise CommandError(f"{name}: expected a JSON object with a 'tools' list")
        domain = domain_named(options["domain"] or raw.get("domain", ""))
        current, _ = policy_current(domain)
        merged = {
            **current.model_dump(mode="json"),
            "tools": raw["tools"],
            "unregistered": raw.get("unregistered", current.unregistered),
            "comment": f"tool registry imported from {Path(name).name if name != '-' else 'stdin'}",
        }
        document = document_from(name, merged)
        version = policy_publish(domain=domain, document=document, actor=Actor.system("cli"))
        self.stdout.write(
            f"{domain.slug}: policy v{version.version} published with "
            f"{len(document.tools)} registered tools"
        )
