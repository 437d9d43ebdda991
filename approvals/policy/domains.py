from __future__ import annotations

from django.db import transaction

from approvals.audit import Actor, audit_record
from approvals.models import Domain


@transaction.atomic
def domain_ensure(*, slug: str, name: str, description: str, actor: Actor) -> tuple[Domain, bool]:
    """Create the domain unless it exists. Returns it and whether it was created."""
    domain, created = Domain.objects.get_or_create(
        slug=slug, defaults={"name": name, "description": description}
    )
    if created:
        audit_record(
            actor=actor,
            action="domain.created",
            domain=slug,
            object_type="domain",
            object_id=domain.pk,
            summary=f"Domain {slug} created",
        )
    return domain, created


@transaction.atomic
def domain_undo_rule_set(*, domain: Domain, raise_tier: bool, actor: Actor) -> Domain:
    """Turn on or off, for one domain, that an escalated action the desk knows no undo for
    waits one tier higher than its policy says."""
    domain = Domain.objects.select_for_update().get(pk=domain.pk)
    if domain.raise_tier_without_undo == raise_tier:
        return domain
    domain.raise_tier_without_undo = raise_tier
    domain.save(update_fields=["raise_tier_without_undo"])
    state = "on" if raise_tier else "off"
    audit_record(
        actor=actor,
        action="domain.undo_rule_changed",
        domain=domain.slug,
        object_type="domain",
        object_id=domain.pk,
        summary=f"Domain {domain.slug}: escalations without a known undo one tier higher: {state}",
        data={"raise_tier_without_undo": raise_tier},
    )
    return domain
