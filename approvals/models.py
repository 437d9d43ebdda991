from __future__ import annotations

import json
import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from approvals.roles import PERMISSIONS


class Desk(models.Model):
    """Holds the desk-wide permissions that roles grant; it has no table."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = PERMISSIONS

    def __str__(self) -> str:
        return "IncidentDesk"


class Domain(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class AuditEvent(models.Model):
    """One link of the append-only, hash-chained audit trail.

    An event is written, unsealed, in the transaction of the change it records; right after
    that commits it is sealed into the chain: `seq` numbers the chain without gaps, and `hash`
    is the SHA-256 of the previous event's hash and this event's canonical content
    (approvals.audit.canonical_content). On PostgreSQL a trigger refuses DELETE, and any UPDATE
    but the one that seals an event.
    """

    class ActorKind(models.TextChoices):
        USER = "user"
        AGENT = "agent"
        SYSTEM = "system"

    seq = models.PositiveBigIntegerField(unique=True, null=True, blank=True)
    created_at = models.DateTimeField()
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=100)
    domain = models.CharField(max_length=50, blank=True)
    object_type = models.CharField(max_length=50, blank=True)
    object_id = models.CharField(max_length=100, blank=True)
    summary = models.CharField(max_length=500, blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["action", "id"]),
            models.Index(fields=["domain", "id"]),
            models.Index(fields=["actor", "id"]),
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["id"], condition=models.Q(seq=None), name="audit_unsealed"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq or '?'} {self.action}"


class ChainVerification(models.Model):
    """One run of the audit chain verifier, with its progress and outcome."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        INTACT = "intact"
        BROKEN = "broken"
        FAILED = "failed"

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    requested_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    checked = models.PositiveBigIntegerField(default=0)
    total = models.PositiveBigIntegerField(default=0)
    # The last link this run found intact: later runs check it is still there, so cutting
    # events off the end of the chain is detected too.
    head_seq = models.PositiveBigIntegerField(null=True, blank=True)
    head_hash = models.CharField(max_length=64, blank=True)
    first_broken_seq = models.PositiveBigIntegerField(null=True, blank=True)
    problem = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"verification {self.pk}: {self.state}"

    @property
    def is_finished(self) -> bool:
        return self.state in {self.State.INTACT, self.State.BROKEN, self.State.FAILED}

    @property
    def percent(self) -> int:
        if self.is_finished:
            return 100
        return int(100 * self.checked / self.total) if self.total else 0


class Agent(models.Model):
    """An AI agent's identity. It acts only through tokens."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    # The person answerable for the agent; four-eyes rules keep them from approving its actions.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Quarantined: its tokens are revoked and its open work stopped, as a kill switch would.
    quarantined_at = models.DateTimeField(null=True, blank=True)
    quarantine_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AgentToken(models.Model):
    """A scoped, short-lived credential. Only an HMAC of the secret is stored."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="tokens")
    prefix = models.CharField(max_length=20, unique=True)
    digest = models.CharField(max_length=64, unique=True)
    # `tool:verb` patterns, shell-style: "create_order:create", "*:read".
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.prefix


class AgentSession(models.Model):
    """One reasoning run of an agent; the id is the client's."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="sessions")
    external_id = models.CharField(max_length=100)
    ran_during_kill = models.BooleanField(
        default=False, help_text="an action of this session ran while a kill switch was engaged"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "external_id"], name="session_per_agent")
        ]

    def __str__(self) -> str:
        return f"{self.agent.name}/{self.external_id}"


class ReasoningStep(models.Model):
    class Kind(models.TextChoices):
        THOUGHT = "thought"
        OBSERVATION = "observation"
        TOOL_CALL = "tool_call"
        TOOL_RESULT = "tool_result"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    content = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "index"]
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="step_position")]

    def __str__(self) -> str:
        return f"{self.session} #{self.index} {self.kind}"


class PolicyVersion(models.Model):
    """One immutable version of a domain's policy: ordered rules and a closing default."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="policy_versions")
    version = models.PositiveIntegerField()
    rules = models.JSONField(default=list)
    default_outcome = models.CharField(max_length=10, default="escalate")
    default_tier = models.PositiveSmallIntegerField(default=1)
    # The tool registry, versioned with the rules: each tool's verb, amount, targets and undo.
    tools = models.JSONField(default=list, blank=True)
    unregistered = models.CharField(
        max_length=10, default="escalate", help_text="the least caution for a tool not registered"
    )
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    comment = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["domain", "-version"]
        constraints = [models.UniqueConstraint(fields=["domain", "version"], name="policy_version")]

    def __str__(self) -> str:
        return f"{self.domain.slug} policy v{self.version}"


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
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="actions")
    token = models.ForeignKey(AgentToken, on_delete=models.PROTECT, related_name="actions")
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="actions")
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
    # An allowed or approved action may start until then (APPROVAL_TTL after the yes).
    run_by = models.DateTimeField(null=True, blank=True)
    # Its result was reported while a kill switch over it was engaged.
    ran_during_kill = models.BooleanField(default=False)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
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
        ]

    def __str__(self) -> str:
        return f"{self.tool}:{self.verb} ({self.status})"

    def settle(self, status: str, *, by: str, reason: str, at: datetime | None = None) -> None:
        """End its wait (a decision, an expiry, a cancellation): who, when and why; any timer
        still queued for it is stale from now on."""
        self.status = status
        self.decided_by, self.decided_at = by, at or timezone.now()
        self.decision_reason = reason
        self.timer_id = ""
        self.save(update_fields=["status", "decided_by", "decided_at", "decision_reason",
                                 "timer_id", "updated_at"])  # fmt: skip


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


class IdempotencyRecord(models.Model):
    """The stored answer to a request made with an Idempotency-Key, per agent."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "key"], name="idempotency_key_per_agent")
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.agent_id}:{self.key}"


class Webhook(models.Model):
    """An outgoing notification endpoint of a domain (Slack-compatible JSON body)."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain", "id"]

    def __str__(self) -> str:
        from urllib.parse import urlsplit

        return f"{self.domain_id}: {urlsplit(self.url).netloc}"


class WebhookDelivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"  # claimed by a worker (attempted_at: when)
        SENT = "sent"
        FAILED = "failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    action = models.ForeignKey(Action, on_delete=models.CASCADE, null=True, blank=True)
    body = models.JSONField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    attempted_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"{self.event} -> {self.webhook_id} ({self.state})"


class KillSwitch(models.Model):
    """One per domain, and one global (no domain). While engaged, nothing in scope is admitted."""

    GLOBAL = "global"

    scope = models.CharField(max_length=50, unique=True, help_text="a domain's slug, or global")
    domain = models.OneToOneField(
        Domain, on_delete=models.CASCADE, null=True, blank=True, related_name="kill_switch"
    )
    engaged = models.BooleanField(default=False)
    changed_by = models.CharField(max_length=150, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["scope"]

    def __str__(self) -> str:
        return f"{self.scope} ({'engaged' if self.engaged else 'released'})"


class KillSwitchChange(models.Model):
    """A switch's history. Its id is the version agents see: it only grows."""

    switch = models.ForeignKey(KillSwitch, on_delete=models.PROTECT, related_name="changes")
    engaged = models.BooleanField()
    actor = models.CharField(max_length=150)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    effects_done_at = models.DateTimeField(null=True, blank=True)
    effects_summary = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.switch.scope} {'engaged' if self.engaged else 'released'} by {self.actor}"


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
