"""Webhooks for tier 2+ escalations, SLA breaches and expiries: sent after commit, retried,
and shown when they keep failing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse

from approvals.models import Action, Webhook, WebhookDelivery
from approvals.notifications import MAX_ATTEMPTS, webhook_deliver
from approvals.queue import escalation_timer_fired
from tests.agents import demo_domain, escalated_action

pytestmark = pytest.mark.django_db


class Receiver:
    """A real HTTP endpoint in the test: records bodies, answers with `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status, self.bodies = status, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


def deliver_all() -> None:
    for pk in (
        WebhookDelivery.objects.filter(state="pending").order_by("pk").values_list("pk", flat=True)
    ):
        webhook_deliver(delivery_id=pk)


def test_tier_two_escalation_is_sent_after_commit(receiver, django_capture_on_commit_callbacks):
    Webhook.objects.create(domain=demo_domain("devops"), url=receiver.url)
    with django_capture_on_commit_callbacks() as queued:
        action = escalated_action(tier=2, agent="janitor")
    assert receiver.bodies == []  # nothing is sent inside the request's transaction
    assert any("webhook_deliver_task" in repr(callback) for callback in queued)
    deliver_all()
    [body] = receiver.bodies
    assert body["event"] == "escalation.opened" and body["action_id"] == str(action.pk)
    assert "janitor: delete_snapshot:delete" in body["text"] and "tier 2" in body["text"]
    assert f"/actions/{action.pk}/" in body["text"]
    assert WebhookDelivery.objects.get().state == "sent"


def test_tier_one_escalations_are_not_sent(receiver) -> None:
    Webhook.objects.create(domain=demo_domain("procurement"), url=receiver.url)
    escalated_action(tier=1)
    assert not WebhookDelivery.objects.exists()


def test_sla_breach_and_expiry_are_sent(receiver) -> None:
    Webhook.objects.create(domain=demo_domain("procurement"), url=receiver.url)
    action = escalated_action(tier=1)
    while action.status == Action.Status.ESCALATED:
        escalation_timer_fired(
            action_id=action.pk,
            timer_id=action.timer_id,
            now=action.sla_due_at + timedelta(seconds=1),
        )
        action.refresh_from_db()
    deliver_all()
    events = [body["event"] for body in receiver.bodies]
    assert events == ["escalation.sla_breached", "escalation.sla_breached", "escalation.expired"]


def test_failing_endpoint_is_retried_then_shown_as_failed(approver, login) -> None:
    failing = Receiver(status=500)
    try:
        Webhook.objects.create(domain=demo_domain("devops"), url=failing.url)
        escalated_action(tier=2, agent="janitor")
        delivery = WebhookDelivery.objects.get()
        for attempt in range(1, MAX_ATTEMPTS):
            assert webhook_deliver(delivery_id=delivery.pk) is False  # try again later
            delivery.refresh_from_db()
            assert (delivery.state, delivery.attempts) == ("pending", attempt)
            assert "500" in delivery.last_error
        assert webhook_deliver(delivery_id=delivery.pk) is True
        delivery.refresh_from_db()
        assert delivery.state == "failed" and len(failing.bodies) == MAX_ATTEMPTS
        page = login(approver).get(reverse("queue")).content.decode()
        assert "could not be delivered" in page
        # The URL is a secret: people see the host, not the path that works as a password.
        assert f"127.0.0.1:{failing.server.server_port}" in page and failing.url not in page
        # A late duplicate of the task finds nothing to do.
        assert webhook_deliver(delivery_id=delivery.pk) is True
        assert len(failing.bodies) == MAX_ATTEMPTS
    finally:
        failing.server.shutdown()
