"""Webhooks: which events reach which endpoints, queued after commit and delivered at most
once per claim, with retries and a sweep for the lost ones."""

from __future__ import annotations

from approvals.notifications.webhooks import (
    MAX_ATTEMPTS,
    claim_lease,
    endpoint_host,
    failed_deliveries,
    notify,
    notify_switch,
    stalled_deliveries,
    webhook_deliver,
)

__all__ = [
    "MAX_ATTEMPTS",
    "claim_lease",
    "endpoint_host",
    "failed_deliveries",
    "notify",
    "notify_switch",
    "stalled_deliveries",
    "webhook_deliver",
]
