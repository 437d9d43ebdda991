"""The approval queue: a domain's tiers, escalations by tier with SLA timers, decisions
(approve, modify, reject) under the four-eyes rules, and the queue and review pages."""

from __future__ import annotations

from approvals.queue.decisions import AlreadyDecided, escalation_decide
from approvals.queue.escalations import (
    effective_params,
    escalation_open,
    escalation_opened,
    params_fingerprint,
    run_deadline,
)
from approvals.queue.fragments import (
    QueueChange,
    count_html,
    decision_html,
    queue_change,
    queue_groups_html,
    queue_push_html,
)
from approvals.queue.selectors import JsonPart, QueueFilters, json_parts, queue_count
from approvals.queue.tiers import TIER_FIELDS, tier_check, tier_delete, tier_save
from approvals.queue.timers import escalation_resume, escalation_timer_fired, escalations_sweep

__all__ = [
    "TIER_FIELDS",
    "AlreadyDecided",
    "JsonPart",
    "QueueChange",
    "QueueFilters",
    "count_html",
    "decision_html",
    "effective_params",
    "escalation_decide",
    "escalation_open",
    "escalation_opened",
    "escalation_resume",
    "escalation_timer_fired",
    "escalations_sweep",
    "json_parts",
    "params_fingerprint",
    "queue_change",
    "queue_count",
    "queue_groups_html",
    "queue_push_html",
    "run_deadline",
    "tier_check",
    "tier_delete",
    "tier_save",
]
