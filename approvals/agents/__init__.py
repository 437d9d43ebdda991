"""Agents and their tokens: who may call the desk, with which scopes, until when, and the
agents page. A quarantined agent is refused here, whatever its token says."""

from __future__ import annotations

from approvals.agents.tokens import (
    ACCESS_VERSION,
    VERBS,
    Quarantined,
    TokenError,
    access_changed,
    access_version,
    agent_admission_check,
    agent_save,
    token_allows,
    token_authenticate,
    token_digest,
    token_forget,
    token_issue,
    token_keep,
    token_kept,
    token_revoke,
)

__all__ = [
    "ACCESS_VERSION",
    "Quarantined",
    "TokenError",
    "VERBS",
    "access_changed",
    "access_version",
    "agent_admission_check",
    "agent_save",
    "token_allows",
    "token_authenticate",
    "token_digest",
    "token_forget",
    "token_issue",
    "token_keep",
    "token_kept",
    "token_revoke",
]
