"""Live updates: the channel group names and event types, sending after commit, and the
base socket that survives a channel layer outage."""

from __future__ import annotations

from approvals.live.groups import (
    AUDIT_GROUP,
    AUDIT_VERIFICATION,
    KILLSWITCH_CHANGED,
    KILLSWITCH_GROUP,
    PRESENCE_CHANGED,
    PRESENCE_GROUP,
    QUEUE_GROUP,
    action_group,
    agent_access_changed,
    agent_group,
    audit_verification_changed,
    bind_server_loop,
    escalation_changed,
    killswitch_changed,
    message,
    operator_access_changed,
    operator_group,
    presence_changed,
    rollback_changed,
    rollback_group,
    send,
)

__all__ = [
    "AUDIT_GROUP",
    "AUDIT_VERIFICATION",
    "KILLSWITCH_CHANGED",
    "KILLSWITCH_GROUP",
    "PRESENCE_CHANGED",
    "PRESENCE_GROUP",
    "QUEUE_GROUP",
    "action_group",
    "agent_access_changed",
    "agent_group",
    "audit_verification_changed",
    "bind_server_loop",
    "escalation_changed",
    "killswitch_changed",
    "message",
    "operator_access_changed",
    "operator_group",
    "presence_changed",
    "rollback_changed",
    "rollback_group",
    "send",
]
