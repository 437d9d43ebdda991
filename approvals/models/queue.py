from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from approvals.models.agents import Agent, AgentSession, AgentToken
from approvals.models.domains import Domain


class Action(models.Model):
    """One proposed tool call and everything that happens to it."""

    class Status(models.TextChoices):
        ALLOWED = "allowed"
        DENIED = "denied"
        ESCALATED = "escalated"
        APPROVED = "approved"
        MODIFIED = "modified"
        REJECTED = "rejected"
        EXPIRED = "expired"
        CANCELLED = "cancelled"
        EXECUTING = "executing"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        ROLLED_BACK = "rolled_back"
        ROLLBACK_FAILED = "rollback_failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # agent and domain lead the composite indexes below, which serve their lookups too: every
    # index is written on each proposal.
    agent = models.ForeignKey(
        Agent, on_delete=models.PROTECT, related_name="actions", db_index=False
    )
    token = models.ForeignKey(AgentToken, on_delete=models.PROTECT, related_name="actions")
    domain = models.ForeignKey(
        Domain, on_delete=models.PROTECT, related_name="actions", db_index=False
    )
    session = models.ForeignKey(
        AgentSession, on_delete=models.PROTECT, related_name="actions", null=True, blank=True
    )
    step_index = models.PositiveIntegerField(null=True, blank=True)
    tool = models.CharField(max_length=100)
    verb = models.CharField(max_length=10)
    params = models.JSONField(default=dict)
    target_ids = models.JSONField(default=list)
    amount = models.DecimalField(max_digits=18, decimal_places=4, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    blast_records = models.PositiveBigIntegerField(null=True, blank=True)
    blast_population = models.PositiveBigIntegerField(null=True, blank=True)
    pre_action_state = models.JSONField(null=True, blank=True)  # the agent's word
    # The desk's own read of the targets at proposal time, where the domain's connector reads.
    desk_snapshot = models.JSONField(null=True, blank=True)
    snapshot_differs = models.BooleanField(default=False)
    compensation = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    rule = models.CharField(max_length=100)
    reason = models.CharField(max_length=500, blank=True)
    policy_version = models.PositiveIntegerField()
    # While escalated: the tier it waits at, when that tier's SLA ends (then it moves up a tier),
    # and when it expires past the last tier. `timer_id` names the one timer task that may act
    # on it; a task carrying another id is stale and does nothing.
    tier = models.PositiveSmallIntegerField(null=True, blank=True)
    sla_due_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    timer_id = models.CharField(max_length=32, blank=True)
    modified_params = models.JSONField(null=True, blank=True)
    # Who modified the params: someone else must approve the modified version.
    modified_by = models.CharField(max_length=150, blank=True)
    decided_by = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    # The kill switch version when a person's yes was given (under the switches' lock): an
    # engage's effects spare a yes given after it, which only a release can have allowed.
    decided_version = models.PositiveBigIntegerField(default=0)
    # An allowed or approved action may start until then (APPROVAL_TTL after the yes).
    run_by = models.DateTimeField(null=True, blank=True)
    # Its result was reported while a kill switch over it was engaged.
    ran_during_kill = models.BooleanField(default=False)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    # The agent said it was starting the call (executing): when, the params it said it would
    # run, whether those differ from the params it was allowed, and when a result is overdue.
    executing_at = models.DateTimeField(null=True, blank=True)
    execute_by = models.DateTimeField(null=True, blank=True)
    ran_params = models.JSONField(null=True, blank=True)
    params_mismatch = models.BooleanField(default=False)
    # No result by execute_by: the outcome is unknown, and a person settles it (reconcile).
    reconcile_since = models.DateTimeField(null=True, blank=True)
    reconciled_by = models.CharField(max_length=150, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)
    # An approval covers the targets' state the approver was shown (desk_snapshot then). When
    # a read before the run finds them changed, the action goes back to the queue: the state
    # that was approved is kept here, and desk_snapshot becomes the new read.
    approved_state = models.JSONField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    post_state = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "tool", "created_at"]),
            models.Index(fields=["domain", "status"]),
            # The flapping guard's question on every proposal: this agent's rolled-back calls.
            models.Index(
                fields=["agent", "tool", "rolled_back_at"],
                name="rolled_back_calls",
                condition=models.Q(rolled_back_at__isnull=False),
            ),
            # The queue: open escalations, most urgent first.
            models.Index(
                fields=["tier", "sla_due_at", "created_at"],
                name="open_escalations",
                condition=models.Q(status="escalated"),
            ),
            models.Index(
                fields=["domain", "tier", "sla_due_at", "created_at"],
                name="open_escalations_by_domain",
                condition=models.Q(status="escalated"),
            ),
            # Runs in progress, by when their result is due; the reconcile queue.
            models.Index(
                fields=["execute_by"],
                name="executing_actions",
                condition=models.Q(status="executing"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tool}:{self.verb} ({self.status})"

    @property
    def state_before(self) -> Any:
        """The targets' state before the action: the desk's own read where it has one, else
        the agent's claim."""
        return self.desk_snapshot if self.desk_snapshot is not None else self.pre_action_state

    def settle(self, status: str, *, by: str, reason: str, at: datetime | None = None) -> None:
        """End its wait (a decision, an expiry, a cancellation): who, when and why; any timer
        still queued for it is stale from now on."""
        self.status = status
        self.decided_by, self.decided_at = by, at or timezone.now()
        self.decision_reason = reason
        self.timer_id = ""
        self.save(
            update_fields=[
                "status",
                "decided_by",
                "decided_at",
                "decision_reason",
                "timer_id",
                "updated_at",
            ]
        )


# What an agent may run: the policy said yes, or a person did. Until a result comes back, an
# action in one of these is unexecuted: an engage or a quarantine cancels it, however old.
EXECUTABLE = frozenset({Action.Status.ALLOWED, Action.Status.APPROVED, Action.Status.MODIFIED})


class Approval(models.Model):
    """One operator's yes to an escalated action at one tier (a tier may need several)."""

    action = models.ForeignKey(Action, on_delete=models.CASCADE, related_name="approvals")
    tier = models.PositiveSmallIntegerField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    senior = models.BooleanField(default=False, help_text="given with the senior permission")
    modified_params = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["action", "tier", "user"], name="one_approval_per_person_and_tier"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} approved {self.action_id} at tier {self.tier}"


class Tier(models.Model):
    """An approval level of a domain. Without rows, a domain uses the default tiers."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="tiers")
    level = models.PositiveSmallIntegerField()
    approvals_needed = models.PositiveSmallIntegerField(default=1)
    decide_permission = models.CharField(
        max_length=50, help_text="codename every approver at this tier needs"
    )
    senior_permission = models.CharField(
        max_length=50, blank=True, help_text="codename at least one approver needs, if any"
    )
    sla_seconds = models.PositiveIntegerField(
        help_text="time to decide before the item moves up a tier (or expires, at the last)"
    )

    class Meta:
        ordering = ["domain", "level"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "level"], name="one_tier_per_level")
        ]

    def __str__(self) -> str:
        return f"{self.domain_id} tier {self.level}"
