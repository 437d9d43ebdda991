"""The database tables, one module per capability; all in the one `approvals` app, so the
migrations stay where they are."""

from __future__ import annotations

from approvals.models.agents import (
    Agent,
    AgentLink,
    AgentSession,
    AgentToken,
    IdempotencyRecord,
    ReasoningStep,
    links_open,
)
from approvals.models.audit import AuditEvent, ChainVerification
from approvals.models.domains import Desk, Domain
from approvals.models.killswitches import KillSwitch, KillSwitchChange, KillSwitchQuerySet
from approvals.models.notifications import Webhook, WebhookDelivery
from approvals.models.policy import PolicyVersion
from approvals.models.queue import EXECUTABLE, Action, Approval, Tier
from approvals.models.rollbacks import Connector, RollbackPlan, RollbackStep

__all__ = [
    "Action",
    "Agent",
    "AgentLink",
    "AgentSession",
    "AgentToken",
    "Approval",
    "AuditEvent",
    "ChainVerification",
    "Connector",
    "Desk",
    "Domain",
    "EXECUTABLE",
    "IdempotencyRecord",
    "KillSwitch",
    "KillSwitchChange",
    "KillSwitchQuerySet",
    "PolicyVersion",
    "ReasoningStep",
    "RollbackPlan",
    "RollbackStep",
    "Tier",
    "Webhook",
    "WebhookDelivery",
    "links_open",
]
