from __future__ import annotations

from django.db import models


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
