"""Webhooks: which events reach which endpoints, queued after commit and delivered at most
once per claim, with retries and a sweep for the lost ones; the endpoints saved and deleted,
audited with their host only."""

from __future__ import annotations

from approvals.notifications.webhooks import (
    MAX_ATTEMPTS,
    claim_lease,
    endpoint_host,
    failed_deliveries,
    notify,
    notify_switch,
    stalled_deliveries,
    webhook_delete,
    webhook_deliver,
    webhook_save,
)

__all__ = [
    "MAX_ATTEMPTS",
    "claim_lease",
    "endpoint_host",
    "failed_deliveries",
    "notify",
    "notify_switch",
    "stalled_deliveries",
    "webhook_delete",
    "webhook_deliver",
    "webhook_save",
]
