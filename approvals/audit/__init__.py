"""The tamper-evident trail: events recorded in the change's own transaction, sealed into a
hash chain after commit, verified, exported, and read back as a session's timeline."""

from __future__ import annotations

from approvals.audit.export import AuditFilters, audit_export
from approvals.audit.fragments import chain_status_html
from approvals.audit.record import (
    GENESIS_HASH,
    Actor,
    Entry,
    action_entry,
    audit_action_event,
    audit_record,
    audit_record_many,
    audit_seal,
    event_hash,
    seal_after_commit,
    seal_in_background,
)
from approvals.audit.verify import (
    audit_verify_chain,
    last_intact_head,
    latest_verification,
    verification_run,
)

__all__ = [
    "Actor",
    "AuditFilters",
    "Entry",
    "action_entry",
    "GENESIS_HASH",
    "audit_action_event",
    "audit_export",
    "audit_record",
    "audit_record_many",
    "audit_seal",
    "audit_verify_chain",
    "chain_status_html",
    "event_hash",
    "last_intact_head",
    "latest_verification",
    "seal_after_commit",
    "seal_in_background",
    "verification_run",
]
