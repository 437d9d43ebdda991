"""Outgoing webhooks: new tier 2+ escalations, SLA breaches and expiries, per domain.

A notification is recorded in the transaction of the change it reports and sent after commit
by a Celery task with retries and backoff; a request never waits for it. Deliveries that keep
failing are marked failed and shown on the dashboard and the queue.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from approvals.models import Action, KillSwitchChange, Webhook, WebhookDelivery

MAX_ATTEMPTS = 5
TIMEOUT_SECONDS = 5

EVENTS = {
    "escalation.opened": "needs a decision",
    "escalation.sla_breached": "passed its SLA and moved up",
    "escalation.expired": "expired undecided; the agent was told it is denied",
}


def notify(*, action: Action, event: str) -> int:
    """Queue a delivery of `event` about `action` to each active webhook of its domain."""
    hooks = list(Webhook.objects.filter(domain_id=action.domain_id, active=True))
    link = settings.DESK_URL.rstrip("/") + reverse("review", args=[action.pk])
    amount = f" ({action.amount:.2f} {action.currency})" if action.amount is not None else ""
    text = (
        f"[{action.domain.slug}] {action.agent.name}: {action.tool}:{action.verb}{amount} "
        f"{EVENTS[event]} at tier {action.tier} (rule {action.rule}). {link}"
    )
    body = {
        "text": text,
        "event": event,
        "action_id": str(action.pk),
        "domain": action.domain.slug,
        "tier": action.tier,
    }
    _queue(hooks, event, body, action)
    return len(hooks)


def notify_switch(*, change: KillSwitchChange) -> int:
    """A kill switch was engaged or released: every webhook under it is told."""
    switch = change.switch
    hooks = Webhook.objects.filter(active=True)
    if switch.domain_id is not None:
        hooks = hooks.filter(domain_id=switch.domain_id)
    event = "killswitch.engaged" if change.engaged else "killswitch.released"
    verb = "ENGAGED: agents are stopped" if change.engaged else "released: agents may act again"
    body = {
        "text": f"Kill switch {switch.scope} {verb} (by {change.actor}: {change.reason}). "
        f"{settings.DESK_URL.rstrip('/')}{reverse('killswitches')}",
        "event": event,
        "scope": switch.scope,
        "version": change.pk,
    }
    found = list(hooks)
    _queue(found, event, body, None)
    return len(found)


def _queue(hooks: list[Webhook], event: str, body: dict[str, Any], action: Action | None) -> None:
    from approvals.tasks import webhook_deliver_task

    for hook in hooks:
        delivery = WebhookDelivery.objects.create(webhook=hook, event=event, action=action,
                                                  body=body)  # fmt: skip
        transaction.on_commit(partial(webhook_deliver_task.delay, delivery.pk), robust=True)


def webhook_deliver(*, delivery_id: int) -> bool:
    """Try one delivery. Returns True when it is done (sent, failed for good, or gone); False
    when it should be tried again later."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("webhook")
            .filter(pk=delivery_id, state=WebhookDelivery.State.PENDING)
            .first()
        )
        if delivery is None:
            return True  # sent already, given up on, or another worker has it now
        delivery.attempts += 1
        delivery.attempted_at = timezone.now()
        request = urllib.request.Request(
            delivery.webhook.url,
            data=json.dumps(delivery.body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "IncidentDesk"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                response.read(1024)
            delivery.state, delivery.last_error = WebhookDelivery.State.SENT, ""
        except Exception as exc:  # noqa: BLE001 - any failure of the endpoint is recorded
            delivery.last_error = f"attempt {delivery.attempts}: {exc}"[:1000]
            if delivery.attempts >= MAX_ATTEMPTS:
                delivery.state = WebhookDelivery.State.FAILED
        if delivery.state != WebhookDelivery.State.PENDING:
            delivery.finished_at = timezone.now()
        delivery.save(
            update_fields=["attempts", "attempted_at", "state", "last_error", "finished_at"]
        )
        return delivery.state != WebhookDelivery.State.PENDING


def stalled_deliveries(*, older_than: timedelta = timedelta(minutes=10)) -> list[int]:
    """Pending deliveries nobody has tried for a while (their task was lost): to try again."""
    cutoff = timezone.now() - older_than
    return list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING)
        .filter(Q(attempted_at__lt=cutoff) | Q(attempted_at=None, created_at__lt=cutoff))
        .values_list("pk", flat=True)[:500]
    )


def endpoint_host(url: str) -> str:
    """A webhook URL is a secret (whoever has it may post); people are shown its host only."""
    return urlsplit(url).netloc or "(invalid URL)"


def failed_deliveries(limit: int = 10) -> list[WebhookDelivery]:
    failed = list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.FAILED)
        .select_related("webhook", "webhook__domain")
        .order_by("-finished_at")[:limit]
    )
    for delivery in failed:
        delivery.host = endpoint_host(delivery.webhook.url)  # type: ignore[attr-defined]
    return failed
