"""Agents and their tokens: who may call the desk, with which scopes, until when, and the
agents page. A quarantined agent is refused here, whatever its token says."""

from __future__ import annotations

from approvals.agents.tokens import (
    VERBS,
    Quarantined,
    TokenError,
    agent_admission_check,
    agent_save,
    token_allows,
    token_authenticate,
    token_digest,
    token_issue,
    token_revoke,
)

__all__ = [
    "Quarantined",
    "TokenError",
    "VERBS",
    "agent_admission_check",
    "agent_save",
    "token_allows",
    "token_authenticate",
    "token_digest",
    "token_issue",
    "token_revoke",
]
