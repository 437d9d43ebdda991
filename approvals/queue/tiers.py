"""A domain's own tiers: checked, saved and deleted, each change audited. A domain without
tiers uses the default ones (approvals.queue.escalations.DEFAULT_TIERS)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from approvals.audit import Actor, audit_record
from approvals.core import PERMISSIONS, Refused
from approvals.models import Tier

DECIDE_PERMISSIONS = tuple(name for name, _ in PERMISSIONS if name.startswith("decide_"))


TIER_FIELDS = (
    "domain",
    "level",
    "approvals_needed",
    "decide_permission",
    "senior_permission",
    "sla_seconds",
)


def tier_check(
    *,
    approvals_needed: int,
    sla_seconds: int,
    decide_permission: str,
    senior_permission: str = "",
) -> None:
    """Refuse (422) a tier that cannot work, naming the field."""
    if not 1 <= approvals_needed <= 5:
        detail = "a tier needs from 1 to 5 approvals"
        raise Refused(422, "Invalid tier", detail, field="approvals_needed")
    if sla_seconds < 60:
        detail = "an SLA shorter than a minute leaves no time to decide"
        raise Refused(422, "Invalid tier", detail, field="sla_seconds")
    choices = ", ".join(DECIDE_PERMISSIONS)
    if decide_permission not in DECIDE_PERMISSIONS:
        detail = f"{decide_permission!r} is not a deciding permission ({choices})"
        raise Refused(422, "Invalid tier", detail, field="decide_permission")
    if senior_permission and senior_permission not in DECIDE_PERMISSIONS:
        detail = f"{senior_permission!r} is not a deciding permission ({choices}, or none)"
        raise Refused(422, "Invalid tier", detail, field="senior_permission")


def _values(tier: Tier) -> dict[str, Any]:
    values = {name: getattr(tier, name) for name in TIER_FIELDS if name != "domain"}
    return {"domain": tier.domain.slug, **values}


def tier_save(*, tier: Tier, actor: Actor, changed: Iterable[str] | None = None) -> Tier:
    """Create or change a tier, checked and audited. `changed` names the fields the caller
    changed (an admin form's changed_data), which are saved and recorded; by default, those
    that differ from the stored row. A change of nothing is not saved."""
    tier_check(
        approvals_needed=tier.approvals_needed,
        sla_seconds=tier.sla_seconds,
        decide_permission=tier.decide_permission,
        senior_permission=tier.senior_permission,
    )
    created = tier.pk is None
    with transaction.atomic():
        others = Tier.objects.filter(domain_id=tier.domain_id, level=tier.level)
        if others.exclude(pk=tier.pk).exists():
            detail = f"{tier.domain.slug} has a tier {tier.level} already"
            raise Refused(409, "Tier exists", detail, field="level")
        values = _values(tier)
        if created:
            names = list(TIER_FIELDS)
        elif changed is not None:
            wanted = set(changed)
            names = [name for name in TIER_FIELDS if name in wanted]
        else:
            stored = _values(Tier.objects.select_for_update().get(pk=tier.pk))
            names = [name for name in TIER_FIELDS if stored[name] != values[name]]
        if not names:
            return tier
        tier.save(update_fields=None if created else names)
        what = "created" if created else f"changed: {', '.join(names)}"
        audit_record(
            actor=actor,
            action="tier.created" if created else "tier.changed",
            domain=tier.domain.slug,
            object_type="tier",
            object_id=tier.pk,
            summary=f"Tier {tier.level} of {tier.domain.slug} {what}",
            data={name: values[name] for name in names},
        )
    return tier


def tier_delete(*, tier: Tier, actor: Actor) -> None:
    """Delete a tier, audited with what it was. A tier deleted meanwhile is left alone."""
    pk, values = tier.pk, _values(tier)
    with transaction.atomic():
        deleted, _ = Tier.objects.filter(pk=pk).delete()
        if not deleted:
            return
        audit_record(
            actor=actor,
            action="tier.deleted",
            domain=values["domain"],
            object_type="tier",
            object_id=pk,
            summary=f"Tier {values['level']} of {values['domain']} deleted",
            data=values,
        )
