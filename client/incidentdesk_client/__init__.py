"""IncidentDesk client: ask the desk before an agent runs a risky tool call.

Standard library only, Python 3.9+.

    from incidentdesk_client import Desk

    desk = Desk("https://desk.example.com", token)
    session = desk.session("restock-2026-11-24")
    session.thought("A100 stock is below the floor of 4.")

    @session.guard("create_order", "create", snapshot=read_open_orders,
                   amount=lambda sku, qty: (qty * 90, "USD"))
    def create_order(sku, qty, idempotency_key):
        return vendor.order(sku, qty, idempotency_key=idempotency_key)

    create_order(sku="A100", qty=2)   # runs only if allowed or approved
"""

from __future__ import annotations

from incidentdesk_client.aio import AsyncDesk, AsyncProposal, AsyncSession
from incidentdesk_client.client import Desk, Proposal, Session
from incidentdesk_client.errors import (
    ActionCancelled,
    ActionDenied,
    ActionExpired,
    ActionRejected,
    DeskError,
    DeskUnavailable,
    InvalidRequest,
    KillSwitchEngaged,
    OutOfScope,
    ReportFailed,
    Unauthorized,
)

__all__ = [
    "ActionCancelled",
    "AsyncDesk",
    "AsyncProposal",
    "AsyncSession",
    "ActionDenied",
    "ActionExpired",
    "ActionRejected",
    "Desk",
    "DeskError",
    "DeskUnavailable",
    "InvalidRequest",
    "KillSwitchEngaged",
    "OutOfScope",
    "Proposal",
    "ReportFailed",
    "Session",
    "Unauthorized",
]
