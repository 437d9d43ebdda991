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
