from __future__ import annotations

from django.db import models

from approvals.core import PERMISSIONS


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
    # An escalated action the desk knows no undo for (no connector that restores its targets
    # or compensates it) waits one tier higher than its policy says.
    raise_tier_without_undo = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug
