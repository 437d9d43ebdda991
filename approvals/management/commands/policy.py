from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.core import Refused
from approvals.policy import (
    Backtest,
    document_from,
    domain_named,
    domain_undo_rule_set,
    policy_backtest,
    policy_export,
    policy_publish,
    read_json_object,
    write_json,
)


def window(text: str) -> timedelta:
    """12h or 7d."""
    match = re.fullmatch(r"([0-9]{1,4})([hd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: say 12h or 7d")
    count = int(match.group(1))
    return timedelta(hours=count) if match.group(2) == "h" else timedelta(days=count)


def backtest_text(run: Backtest) -> str:
    verdicts = "verdict would" if run.changed == 1 else "verdicts would"
    lines = [
        f"{run.domain}: {run.replayed} actions replayed, {run.changed} {verdicts} change "
        f"(against version {run.version}, {run.since:%Y-%m-%d %H:%M} to "
        f"{run.until:%Y-%m-%d %H:%M})" + (" - only the newest of the window" if run.cut else "")
    ]
    lines += [f"  {before} -> {after}: {n}" for (before, after), n in run.transitions.most_common()]
    if run.by_rule:
        lines.append("by the new version's rule:")
        lines += [f"  {rule}: {n}" for rule, n in run.by_rule.most_common()]
    lines += [
        f"  {c.created_at:%Y-%m-%d %H:%M:%S} {c.action_id} {c.agent} {c.tool}: "
        f"{c.before} -> {c.after}"
        for c in run.changes_shown
    ]
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Export a domain's current policy as JSON, import a file as its next version, backtest "
        "a file over recent actions, or set the domain's rule for actions with no known undo."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        export = sub.add_parser("export", help="write the current policy as JSON")
        export.add_argument("domain")
        export.add_argument("--output", "-o", help="file (default: standard output)")
        load = sub.add_parser("import", help="publish a JSON file as the next version")
        load.add_argument("file", help="a file written by export, or '-' for standard input")
        load.add_argument("--domain", help="the domain (default: the file's 'domain')")
        backtest = sub.add_parser(
            "backtest",
            help="replay a JSON file over the domain's recent actions: the verdicts that "
            "would change; nothing is written but the audited run",
        )
        backtest.add_argument("file", help="a policy file, as export writes it, or '-'")
        backtest.add_argument("--domain", help="the domain (default: the file's 'domain')")
        backtest.add_argument(
            "--since", default="7d", type=window, help="how far back: 12h, 7d (default 7d)"
        )
        undo = sub.add_parser(
            "undo-rule",
            help="whether escalations the desk knows no undo for wait one tier higher",
        )
        undo.add_argument("domain")
        undo.add_argument("state", choices=["on", "off"])

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "export":
            domain = domain_named(options["domain"])
            write_json(policy_export(domain), options["output"], self.stdout)
            return
        if options["verb"] == "undo-rule":
            domain = domain_undo_rule_set(
                domain=domain_named(options["domain"]),
                raise_tier=options["state"] == "on",
                actor=Actor.system("cli"),
            )
            state = "on" if domain.raise_tier_without_undo else "off"
            self.stdout.write(f"{domain.slug}: no known undo, one tier higher: {state}")
            return
        raw = read_json_object(options["file"])
        if options["verb"] == "backtest":
            domain = domain_named(options["domain"] or raw.pop("domain", ""))
            raw.pop("domain", None)
            raw.pop("version", None)
            try:
                run = policy_backtest(
                    domain=domain,
                    document=document_from(options["file"], raw),
                    since=options["since"],
                    actor=Actor.system("cli"),
                )
            except Refused as exc:
                raise CommandError(f"{exc.field or 'backtest'}: {exc.detail}") from None
            self.stdout.write(backtest_text(run))
            return
        domain = domain_named(options["domain"] or raw.pop("domain", ""))
        raw.pop("domain", None)
        raw.pop("version", None)
        document = document_from(options["file"], raw)
        version = policy_publish(domain=domain, document=document, actor=Actor.system("cli"))
        self.stdout.write(f"{domain.slug}: policy v{version.version} published")
