from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from approvals.models.domains import Domain


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
    # Its last poll of the kill switch state (GET /api/v1/killswitches) and the version it got.
    polled_at = models.DateTimeField(null=True, blank=True)
    polled_version = models.PositiveBigIntegerField(default=0)

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


def links_open() -> models.Q:
    """Sockets still open: not closed, and confirmed by their process lately."""
    fresh = timezone.now() - timedelta(seconds=settings.AGENT_LINK_STALE_SECONDS)
    return models.Q(closed_at=None, seen_at__gte=fresh)


class AgentLinkQuerySet(models.QuerySet["AgentLink"]):
    def open(self) -> AgentLinkQuerySet:
        return self.filter(links_open())


class AgentLink(models.Model):
    """One socket an agent holds open on /ws/agent/: the kill switch state version it last
    acknowledged, and when the desk last knew the socket to be open."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="links")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="agent_links")
    channel = models.CharField(max_length=200, unique=True)
    connected_at = models.DateTimeField()
    # The serving process confirms its open sockets every LIVE_RECHECK_SECONDS; a link not
    # confirmed for longer than AGENT_LINK_STALE_SECONDS belonged to a process that died.
    seen_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    acked_version = models.PositiveBigIntegerField(default=0)
    acked_at = models.DateTimeField(null=True, blank=True)

    objects = AgentLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-connected_at"]
        indexes = [
            models.Index(
                fields=["domain", "seen_at"],
                name="open_agent_links",
                condition=models.Q(closed_at__isnull=True),
            ),
            models.Index(fields=["agent", "acked_version"]),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} on {self.channel}"
