from __future__ import annotations

from typing import Any, NamedTuple

from django.db import transaction

from approvals.audit import Actor, audit_record
from approvals.models import Domain, PolicyVersion
from approvals.policy.documents import PolicyDocument

# Parsed policy versions by id. Versions never change once written, so this never goes stale.
_parsed: dict[tuple[int, Any], PolicyDocument] = {}


class NewestPolicy(NamedTuple):
    version_id: int
    created_at: Any
    version: int
    document: PolicyDocument


def policy_newest(domain_id: int) -> NewestPolicy | None:
    """The domain's newest policy version, parsed; None if it has none."""
    latest = (
        PolicyVersion.objects.filter(domain_id=domain_id)
        .order_by("-version")
        .values_list("id", "created_at", "version")
        .first()
    )
    if latest is None:
        return None
    version_id, created_at, version = latest
    return NewestPolicy(version_id, created_at, version, policy_document(version_id, created_at))


def policy_current(domain: Domain) -> tuple[PolicyDocument, int]:
    """The domain's newest policy version; a domain without one escalates everything to tier 1."""
    newest = policy_newest(domain.pk)
    if newest is None:
        return PolicyDocument(rules=[], comment="no policy published"), 0
    return newest.document, newest.version


def policy_document(version_id: int, created_at: Any) -> PolicyDocument:
    """The parsed document of a stored policy version, parsed once per process."""
    # Keyed by creation time too: SQLite may give a new row the id of one rolled back.
    key = (version_id, created_at)
    document = _parsed.get(key)
    if document is None:
        document = _parsed[key] = document_of(PolicyVersion.objects.get(pk=version_id))
    return document


def document_of(version: PolicyVersion) -> PolicyDocument:
    return PolicyDocument.model_validate(
        {
            "rules": version.rules,
            "default_outcome": version.default_outcome,
            "default_tier": version.default_tier if version.default_outcome == "escalate" else None,
            "tools": version.tools,
            "unregistered": version.unregistered,
            "comment": version.comment,
        }
    )


@transaction.atomic
def policy_publish(*, domain: Domain, document: PolicyDocument, actor: Actor) -> PolicyVersion:
    """Store the document as the domain's next policy version."""
    Domain.objects.select_for_update().get(pk=domain.pk)
    latest = PolicyVersion.objects.filter(domain=domain).order_by("-version").first()
    version = PolicyVersion.objects.create(
        domain=domain,
        version=(latest.version + 1) if latest else 1,
        rules=document.model_dump(mode="json")["rules"],
        default_outcome=document.default_outcome,
        default_tier=document.default_tier or 1,
        tools=[tool.model_dump(mode="json", exclude_none=True) for tool in document.tools],
        unregistered=document.unregistered,
        created_by=actor.name,
        comment=document.comment,
    )
    audit_record(
        actor=actor,
        action="policy.published",
        domain=domain.slug,
        object_type="policy",
        object_id=f"{domain.slug}:v{version.version}",
        summary=f"Policy v{version.version} for {domain.slug} published"
        + (f": {document.comment}" if document.comment else ""),
        data={
            "version": version.version,
            "rules": [r.id for r in document.rules],
            "tools": [t.name for t in document.tools],
            "unregistered": document.unregistered,
        },
    )
    return version


def policy_export(domain: Domain) -> dict[str, object]:
    document, version = policy_current(domain)
    return {"domain": domain.slug, "version": version, **document.model_dump(mode="json")}
