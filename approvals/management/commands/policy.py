from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from approvals.audit import Actor
from approvals.policy import (
    document_from,
    domain_named,
    policy_export,
    policy_publish,
    read_json_object,
    write_json,
)


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
            domain = domain_named(options["domain"])
            write_json(policy_export(domain), options["output"], self.stdout)
            return
        raw = read_json_object(options["file"])
        domain = domain_named(options["domain"] or raw.pop("domain", ""))
        raw.pop("domain", None)
        raw.pop("version", None)
        document = document_from(options["file"], raw)
        version = policy_publish(domain=domain, document=document, actor=Actor.system("cli"))
        self.stdout.write(f"{domain.slug}: policy v{version.version} published")
