from __future__ import annotations

from django.db import models

from approvals.models.domains import Domain


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
