"""Outgoing webhooks: new tier 2+ escalations, SLA breaches and expiries, per domain.

A notification is recorded in the transaction of the change it reports and sent after commit
by a Celery task with retries and backoff; a request never waits for it. Deliveries that keep
failing are marked failed and shown on the dashboard and the queue.

A worker claims a delivery with a conditional UPDATE, sends it with no transaction open (a
slow endpoint holds no lock and no connection in a transaction), then writes the outcome for
the claim it still holds. A claim older than the longest a send may take is a dead worker's:
the periodic sweep hands it to another.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from approvals.audit import Actor, audit_record
from approvals.models import Action, KillSwitchChange, Webhook, WebhookDelivery
from incidentdesk import outbound
from incidentdesk.celery import enqueue_on_commit

# Task names stay as they were when every task lived in approvals/tasks.py: messages
# already queued (timers waiting for their time, retries) carry them.
DELIVER_TASK = "approvals.tasks.webhook_deliver_task"


S = WebhookDelivery.State


MAX_ATTEMPTS = 5


# A claim this much older than the longest a send may take belongs to a worker that died.
CLAIM_GRACE = timedelta(seconds=60)


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

    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook, event=event, action=action, body=body
        )
        enqueue_on_commit(DELIVER_TASK, delivery.pk)


def claim_lease() -> timedelta:
    return timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS) + CLAIM_GRACE


def _claim(delivery_id: int) -> WebhookDelivery | None:
    """Take the delivery if it waits to be sent, or its claim is a dead worker's."""
    now = timezone.now()
    stale = now - claim_lease()
    deliveries = WebhookDelivery.objects.filter(pk=delivery_id)
    # A delivery whose worker died with it every time is not tried forever.
    deliveries.filter(state=S.SENDING, attempted_at__lt=stale, attempts__gte=MAX_ATTEMPTS).update(
        state=S.FAILED,
        finished_at=now,
        last_error=f"gave up: the worker sending it stopped {MAX_ATTEMPTS} times",
    )
    claimable = Q(state=S.PENDING) | Q(state=S.SENDING, attempted_at__lt=stale)
    taken = deliveries.filter(claimable).update(
        state=S.SENDING, attempts=F("attempts") + 1, attempted_at=now
    )
    return deliveries.select_related("webhook").first() if taken else None


def _send(url: str, body: dict[str, Any]) -> None:
    """POST the body to the webhook, within the limits. Raises outbound.OutboundError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise outbound.OutboundError("the webhook URL is not an http(s) URL")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = outbound.connection(parts.scheme, parts.netloc)
    try:
        answer = outbound.exchange(
            conn,
            "POST",
            target,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "IncidentDesk"},
            seconds=settings.WEBHOOK_TIMEOUT_SECONDS,
            max_bytes=settings.WEBHOOK_MAX_RESPONSE_BYTES,
        )
    finally:
        conn.close()
    if answer.status >= 400:
        raise outbound.Unanswered(f"answered {answer.status}")


def _record(delivery: WebhookDelivery, failure: outbound.OutboundError | None) -> bool:
    """Write the outcome of this worker's attempt. Returns whether the delivery is done."""
    now = timezone.now()
    deliveries = WebhookDelivery.objects.filter(pk=delivery.pk)
    if failure is None:
        # Sent is sent, even if another worker took the claim over meanwhile.
        deliveries.filter(state__in=[S.PENDING, S.SENDING]).update(
            state=S.SENT, last_error="", finished_at=now
        )
        return True
    # A redirect or an oversized answer comes back the same however often it is sent.
    final = delivery.attempts >= MAX_ATTEMPTS or isinstance(
        failure, outbound.Redirected | outbound.TooLarge
    )
    mine = deliveries.filter(state=S.SENDING, attempts=delivery.attempts)
    written = mine.update(
        state=S.FAILED if final else S.PENDING,
        last_error=f"attempt {delivery.attempts}: {failure}"[:1000],
        finished_at=now if final else None,
    )
    return final or not written  # not written: another worker holds the delivery now


def webhook_deliver(*, delivery_id: int) -> bool:
    """Try one delivery. Returns True when it is done (sent, failed for good, gone, or held by
    another worker); False when it should be tried again later. Call it outside a transaction
    (Celery tasks are): the send must not hold one open."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return True  # sent already, given up on, or another worker has it now
    try:
        _send(delivery.webhook.url, delivery.body)
    except outbound.OutboundError as failure:
        return _record(delivery, failure)
    return _record(delivery, None)


def stalled_deliveries(*, older_than: timedelta = timedelta(minutes=10)) -> list[int]:
    """Deliveries whose task was lost (pending, not tried for a while) or whose worker died
    while sending (a claim older than the lease): to try again."""
    now = timezone.now()
    cutoff = now - older_than
    lost = Q(state=S.PENDING) & (
        Q(attempted_at__lt=cutoff) | Q(attempted_at=None, created_at__lt=cutoff)
    )
    abandoned = Q(state=S.SENDING, attempted_at__lt=now - claim_lease())
    return list(WebhookDelivery.objects.filter(lost | abandoned).values_list("pk", flat=True)[:500])


def endpoint_host(url: str) -> str:
    """A webhook URL is a secret (whoever has it may post); people are shown its host only
    (and port, never a user or password written before it)."""
    return urlsplit(url).netloc.rpartition("@")[2] or "(invalid URL)"


WEBHOOK_FIELDS = ("domain", "url", "active")


def _raw(webhook: Webhook) -> dict[str, Any]:
    return {"domain": webhook.domain_id, "url": webhook.url, "active": webhook.active}


def _shown(webhook: Webhook) -> dict[str, Any]:
    """What the audit trail, which viewers read, may say of a webhook: its URL's host only."""
    return {
        "domain": webhook.domain.slug,
        "url": endpoint_host(webhook.url),
        "active": webhook.active,
    }


def webhook_save(
    *, webhook: Webhook, actor: Actor, changed: Iterable[str] | None = None
) -> Webhook:
    """Create or change a webhook, audited with its host (never the URL). `changed` names the
    fields the caller changed (an admin form's changed_data), which are saved and recorded;
    by default, those that differ from the stored row. A change of nothing is not saved."""
    created = webhook.pk is None
    with transaction.atomic():
        if created:
            names = list(WEBHOOK_FIELDS)
        elif changed is not None:
            wanted = set(changed)
            names = [name for name in WEBHOOK_FIELDS if name in wanted]
        else:
            stored = _raw(Webhook.objects.select_for_update().get(pk=webhook.pk))
            names = [name for name in WEBHOOK_FIELDS if stored[name] != _raw(webhook)[name]]
        if not names:
            return webhook
        webhook.save(update_fields=None if created else names)
        shown = _shown(webhook)
        what = "created" if created else f"changed: {', '.join(names)}"
        audit_record(
            actor=actor,
            action="webhook.created" if created else "webhook.changed",
            domain=shown["domain"],
            object_type="webhook",
            object_id=webhook.pk,
            summary=f"Webhook to {shown['url']} for {shown['domain']} {what}",
            data={name: shown[name] for name in names},
        )
    return webhook


def webhook_delete(*, webhook: Webhook, actor: Actor) -> None:
    """Delete a webhook and its deliveries, audited with its host. A webhook deleted meanwhile
    is left alone."""
    pk, shown = webhook.pk, _shown(webhook)
    with transaction.atomic():
        deleted, _ = Webhook.objects.filter(pk=pk).delete()
        if not deleted:
            return
        audit_record(
            actor=actor,
            action="webhook.deleted",
            domain=shown["domain"],
            object_type="webhook",
            object_id=pk,
            summary=f"Webhook to {shown['url']} for {shown['domain']} deleted",
            data=shown,
        )


def failed_deliveries(limit: int = 10) -> list[WebhookDelivery]:
    failed = list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.FAILED)
        .select_related("webhook", "webhook__domain")
        .order_by("-finished_at")[:limit]
    )
    for delivery in failed:
        delivery.host = endpoint_host(delivery.webhook.url)  # type: ignore[attr-defined]
    return failed
