"""The approval queue: a domain's tiers, escalations by tier with SLA timers, decisions
(approve, modify, reject) under the four-eyes rules, and the queue and review pages."""

from __future__ import annotations

from approvals.queue.decisions import AlreadyDecided, escalation_decide
from approvals.queue.escalations import (
    effective_params,
    escalation_open,
    escalation_opened,
    escalation_raise_without_undo,
    params_diff_text,
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
from approvals.queue.runs import (
    RECONCILE_OUTCOMES,
    Outcomes,
    action_reconcile,
    approval_binds_state,
    escalation_reopen,
    execute_by,
    executions_overdue_sweep,
    expected_after,
    reconcile_queue,
    run_outcomes,
    targets_now,
)
from approvals.queue.selectors import JsonPart, QueueFilters, json_parts, queue_count
from approvals.queue.tiers import TIER_FIELDS, tier_check, tier_delete, tier_save
from approvals.queue.timers import escalation_resume, escalation_timer_fired, escalations_sweep

__all__ = [
    "RECONCILE_OUTCOMES",
    "TIER_FIELDS",
    "AlreadyDecided",
    "JsonPart",
    "Outcomes",
    "QueueChange",
    "QueueFilters",
    "action_reconcile",
    "approval_binds_state",
    "count_html",
    "decision_html",
    "effective_params",
    "escalation_decide",
    "escalation_open",
    "escalation_reopen",
    "escalation_opened",
    "escalation_raise_without_undo",
    "escalation_resume",
    "escalation_timer_fired",
    "escalations_sweep",
    "execute_by",
    "executions_overdue_sweep",
    "expected_after",
    "json_parts",
    "params_diff_text",
    "params_fingerprint",
    "queue_change",
    "queue_count",
    "queue_groups_html",
    "queue_push_html",
    "reconcile_queue",
    "run_deadline",
    "run_outcomes",
    "targets_now",
    "tier_check",
    "tier_delete",
    "tier_save",
]
