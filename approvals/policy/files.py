"""What the policy and tools commands share: the domain named, and JSON files in and out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, OutputWrapper
from pydantic import ValidationError

from approvals.models import Domain
from approvals.policy.documents import PolicyDocument


def domain_named(slug: str) -> Domain:
    domain = Domain.objects.filter(slug=slug).first()
    if domain is None:
        raise CommandError(f"no domain {slug!r}")
    return domain


def write_json(data: Any, output: str | None, stdout: OutputWrapper) -> None:
    """`data` as indented JSON, to the file `output` or to standard output."""
    text = json.dumps(data, indent=2) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        stdout.write(text, ending="")


def read_json_object(name: str) -> dict[str, Any]:
    """The JSON object in the file `name` ('-': standard input), or the error naming it."""
    try:
        raw = json.loads(sys.stdin.read() if name == "-" else Path(name).read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"{name}: {exc}") from None
    if not isinstance(raw, dict):
        raise CommandError(f"{name}: expected a JSON object")
    return raw


def document_from(name: str, raw: dict[str, Any]) -> PolicyDocument:
    """A policy document from a file's contents, or the error naming each bad field."""
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(f"{name}: {problems}") from None
