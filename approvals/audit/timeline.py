"""The forensic timeline of a session: what the agent thought, proposed and did, what the desk
and people decided, the kill switches that changed meanwhile, and the rollback of it, in order.

The audit trail is its source for everything but the reasoning steps: every transition writes
an audit event with who and why, so the timeline cannot say more (or less) than the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q

from approvals.audit.record import Actor, audit_record
from approvals.models import AgentSession, AuditEvent, KillSwitch, RollbackStep


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str  # reasoning.thought, action.allowed, killswitch.engaged, rollback.step_done ...
    actor: str
    summary: str
    action_id: str = ""
    seq: int | None = None  # the audit event's place in the chain
    data: dict[str, Any] | None = None

    @property
    def group(self) -> str:
        return self.kind.split(".", 1)[0]


def session_timeline(session: AgentSession) -> list[Entry]:
    entries = [
        Entry(
            at=step.created_at,
            kind=f"reasoning.{step.kind}",
            actor=session.agent.name,
            summary=f"#{step.index} {step.content}",
            data=step.data or None,
        )
        for step in session.steps.all()
    ]
    action_ids = [str(pk) for pk in session.actions.values_list("pk", flat=True)]
    plan_ids = [
        str(pk)
        for pk in RollbackStep.objects.filter(action_id__in=action_ids)
        .values_list("plan_id", flat=True)
        .distinct()
    ]
    about = (
        Q(object_type="action", object_id__in=action_ids)
        # Refused before any action was recorded: out of scope, or under a kill switch.
        | Q(object_type="token", actor=session.agent.name, data__session=session.external_id)
        | Q(object_type="session", object_id=session.external_id, domain=session.domain.slug)
        | Q(object_type="rollback", object_id__in=plan_ids)
        | Q(
            object_type="agent", object_id=str(session.agent_id), created_at__gte=session.created_at
        )  # quarantined, say
        | Q(
            object_type="kill_switch",
            object_id__in=[session.domain.slug, KillSwitch.GLOBAL],
            created_at__gte=session.created_at,
        )
    )
    # The steps themselves are shown; the events that recorded them would say it twice.
    events = AuditEvent.objects.filter(about).exclude(action="session.steps_recorded")
    for event in events.order_by("created_at", "id"):
        entries.append(
            Entry(
                at=event.created_at,
                kind=event.action,
                actor=f"{event.actor_kind}:{event.actor}",
                summary=event.summary,
                action_id=event.object_id if event.object_type == "action" else "",
                seq=event.seq,
                data=event.data or None,
            )
        )
    entries.sort(key=lambda e: (e.at, e.seq or 0))
    return entries


def timeline_lines(entries: list[Entry]) -> Iterator[str]:
    for entry in entries:
        yield json.dumps(asdict(entry), cls=DjangoJSONEncoder, sort_keys=True) + "\n"


def timeline_export(*, session: AgentSession, actor: Actor) -> Iterator[str]:
    """The timeline as JSON lines; the export itself is recorded."""
    entries = session_timeline(session)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="session.exported",
            domain=session.domain.slug,
            object_type="session",
            object_id=session.external_id,
            summary=f"Timeline of session {session.agent.name}/{session.external_id} exported "
            f"({len(entries)} entries)",
        )
    return timeline_lines(entries)
