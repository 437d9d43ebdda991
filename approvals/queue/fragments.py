from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.template.loader import render_to_string

from approvals.core import Permissions
from approvals.models import Action
from approvals.queue.selectors import (
    QueueFilters,
    decision_context,
    frozen_context,
    open_escalations,
    queue_count,
    queue_groups,
)


@dataclass(frozen=True)
class QueueChange:
    """One escalation change, loaded once per message for every page in this process."""

    action: Action | None  # None once it left the queue
    queue_count: int
    frozen: dict[str, Any]


def queue_change(action_id: str) -> QueueChange:
    return QueueChange(
        open_escalations().filter(pk=action_id).first(), queue_count(), frozen_context()
    )


def queue_push_html(
    action_id: str, change: QueueChange, *, rows: bool, insert: bool, count: bool
) -> str:
    return render_to_string(
        "approvals/queue/queue_push.html",
        {
            "action_id": action_id,
            "a": change.action,
            "rows": rows,
            "insert": insert,
            "count": count,
            "queue_count": change.queue_count,
            "oob": True,
            **change.frozen,
        },
    )


def queue_groups_html(filters: QueueFilters) -> str:
    groups, total = queue_groups(filters)
    context = {
        "groups": groups,
        "total": total,
        "filters": filters,
        "oob": True,
        **frozen_context(),
    }
    return render_to_string("approvals/queue/queue.html#groups", context)


def count_html() -> str:
    return render_to_string(
        "approvals/queue/queue_count.html", {"queue_count": queue_count(), "oob": True}
    )


def decision_html(action_id: str, permissions: Permissions) -> str:
    action = Action.objects.select_related("agent", "domain").filter(pk=action_id).first()
    if action is None:
        return ""
    context = {**decision_context(action, permissions), "oob": True}
    return render_to_string("approvals/queue/review.html#decision", context)
