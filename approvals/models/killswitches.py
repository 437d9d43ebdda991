from __future__ import annotations

import hashlib
from collections.abc import Iterable

from django.db import connection, models

from approvals.models.domains import Domain


def _lock_key(scope: str) -> int:
    digest = hashlib.blake2b(f"kill-switch:{scope}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class KillSwitchQuerySet(models.QuerySet["KillSwitch"]):
    """What every capability asks of the switches: is a domain stopped, and hold it so."""

    def lock(self, scopes: Iterable[str], *, shared: bool) -> None:
        """Take the switches' advisory locks for `scopes` until the transaction ends: an engage
        takes them exclusively, whoever acts on a switch's answer takes them shared."""
        if connection.vendor != "postgresql":
            return  # SQLite: write transactions begin IMMEDIATE and take turns
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        keys = [_lock_key(scope) for scope in scopes]
        with connection.cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(f"{function}(%s)" for _ in keys), keys)

    def engaged_over(self, domain_slug: str) -> KillSwitch | None:
        """The engaged switch over a domain (its own, or the global one), if any."""
        scopes = [domain_slug, KillSwitch.GLOBAL]
        return self.filter(scope__in=scopes, engaged=True).order_by("-changed_at").first()

    def held_over(self, domain_slug: str) -> KillSwitch | None:
        """The engaged switch over a domain, read under the switches' shared locks: an engage
        waits until the calling transaction commits, so nothing it admits or decides escapes
        the engage's effects. Call inside the transaction that acts on the answer."""
        self.lock([domain_slug, KillSwitch.GLOBAL], shared=True)
        return self.engaged_over(domain_slug)

    def killed_domain_ids(self) -> set[int] | None:
        """Domains under an engaged switch; None means all of them (the global switch)."""
        engaged = list(self.filter(engaged=True).values_list("scope", "domain_id"))
        if any(scope == KillSwitch.GLOBAL for scope, _ in engaged):
            return None
        return {domain_id for _, domain_id in engaged if domain_id is not None}


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

    objects = KillSwitchQuerySet.as_manager()

    class Meta:
        ordering = ["scope"]

    def __str__(self) -> str:
        return f"{self.scope} ({'engaged' if self.engaged else 'released'})"

    @staticmethod
    def lock_key(scope: str) -> int:
        """The advisory lock that `KillSwitch.objects.lock` takes for `scope`."""
        return _lock_key(scope)


class KillSwitchChangeQuerySet(models.QuerySet["KillSwitchChange"]):
    def current_version(self) -> int:
        """The version agents compare: the newest change's id (0 before any)."""
        return self.aggregate(v=models.Max("id"))["v"] or 0


class KillSwitchChange(models.Model):
    """A switch's history. Its id is the version agents see: it only grows."""

    switch = models.ForeignKey(KillSwitch, on_delete=models.PROTECT, related_name="changes")
    engaged = models.BooleanField()
    actor = models.CharField(max_length=150)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    effects_done_at = models.DateTimeField(null=True, blank=True)
    effects_summary = models.TextField(blank=True)
    # An engage waits for every socket open under it then to acknowledge this version, and
    # records when the last one did (the time to contain is the difference).
    awaited = models.JSONField(default=list, blank=True)  # AgentLink ids: sockets
    awaited_agents = models.PositiveIntegerField(default=0)  # the agents holding them
    contained_at = models.DateTimeField(null=True, blank=True)

    objects = KillSwitchChangeQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.switch.scope} {'engaged' if self.engaged else 'released'} by {self.actor}"

    @property
    def time_to_contain(self) -> float | None:
        """Seconds from the engage to the last awaited acknowledgement."""
        if self.contained_at is None:
            return None
        return max(0.0, (self.contained_at - self.created_at).total_seconds())
