from __future__ import annotations

import json
import uuid

from django.db import models

from approvals.models.domains import Domain
from approvals.models.queue import Action


class Connector(models.Model):
    """How the desk reaches a target system itself, without the agent: read a target's current
    state, restore it to a snapshot, or call a compensating action. Per domain and tool."""

    class Kind(models.TextChoices):
        HTTP = "http"
        PYTHON = "python"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="connectors")
    tool = models.CharField(max_length=100, help_text="the agent tool whose effects it undoes")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.HTTP)
    # HTTP: {"read": {"method", "url", "body"}, "restore": {...}, "compensate": {..., "expect"}};
    # Python: {"function": "package.module.function"}. Checked by approvals.connectors.
    spec = models.JSONField(default=dict)
    secret = models.CharField(
        max_length=200, blank=True, help_text="HMAC-SHA256 key for signing HTTP requests"
    )
    timeout_seconds = models.FloatField(default=5.0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain", "tool"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "tool"], name="one_connector_per_tool")
        ]

    def __str__(self) -> str:
        return f"{self.domain_id}:{self.tool} ({self.kind})"


class RollbackPlan(models.Model):
    """A set of executed actions to undo, newest first, one step per action and target."""

    class State(models.TextChoices):
        DRAFT = "draft"
        AWAITING_CONFIRMATION = "awaiting_confirmation"
        RUNNING = "running"
        PAUSED = "paused"
        WAITING = "waiting"  # only steps that need a person are left
        COMPLETED = "completed"
        FAILED = "failed"  # finished, with steps that failed
        CANCELLED = "cancelled"

    class Scope(models.TextChoices):
        SESSION = "session"
        AGENT = "agent"
        DOMAIN = "domain"
        ACTIONS = "actions"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    description = models.CharField(max_length=300)
    selection = models.JSONField(default=dict)
    domain = models.ForeignKey(
        Domain, on_delete=models.PROTECT, null=True, blank=True, related_name="rollback_plans"
    )
    state = models.CharField(max_length=25, choices=State.choices, default=State.DRAFT)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_by = models.CharField(max_length=150, blank=True)
    started_by = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    total = models.PositiveIntegerField(default=0)
    # Bumped on every change of state and every batch of steps; live pages compare it.
    progress_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "progress_at"])]

    def __str__(self) -> str:
        return f"rollback {self.pk} ({self.state})"


class RollbackStep(models.Model):
    """Undo one action's effect on one target: restore a snapshot, compensate, or by hand."""

    class Method(models.TextChoices):
        RESTORE = "restore"
        COMPENSATE = "compensate"
        MANUAL = "manual"

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DRIFT = "drift"  # the target changed since the action: a person decides
        MANUAL = "manual"  # irreversible: a person does it and says so
        DONE = "done"
        SKIPPED = "skipped"
        FAILED = "failed"

    plan = models.ForeignKey(RollbackPlan, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField(help_text="0 is the newest action: undone first")
    action = models.ForeignKey(Action, on_delete=models.PROTECT, related_name="rollback_steps")
    target = models.CharField(max_length=200, blank=True)
    method = models.CharField(max_length=10, choices=Method.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    # What the action left (drift is measured against it) and what the step will restore.
    expected_state = models.JSONField(null=True, blank=True)
    restore_state = models.JSONField(null=True, blank=True)
    # Run without the drift check: a person saw the drift and said so.
    force = models.BooleanField(default=False)
    current_state = models.JSONField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Bumped when a person asks for a new write (edit, retry): part of the idempotency key.
    revision = models.PositiveSmallIntegerField(default=0)
    claimed_by = models.CharField(max_length=100, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["plan", "position"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "position"], name="rollback_step_position")
        ]
        indexes = [models.Index(fields=["plan", "state", "position"])]

    # Set by the worker that claims it: what later steps on the same target restore.
    later_restores: list[object] = []

    def __str__(self) -> str:
        return f"{self.plan_id} #{self.position} {self.method} {self.target} ({self.state})"

    @property
    def idempotency_key(self) -> str:
        key = f"rollback:{self.plan_id}:{self.position}"
        return f"{key}:{self.revision}" if self.revision else key

    @property
    def restore_state_json(self) -> str:
        return "" if self.restore_state is None else json.dumps(self.restore_state, indent=2)
