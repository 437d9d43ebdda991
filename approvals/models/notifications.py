from __future__ import annotations

from django.db import models

from approvals.models.domains import Domain
from approvals.models.queue import Action


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

        # The host only: a URL may carry a password before it, and secrets in its path.
        return f"{self.domain_id}: {urlsplit(self.url).hostname or ''}"


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
