"""Policies and the tool registry: the documents, their versions, the engine that allows,
denies or escalates a call, the explain trace, the demo defaults and the policies page."""

from __future__ import annotations

from approvals.policy.backtest import Backtest, policy_backtest
from approvals.policy.claims import CallClaim, ClaimRefused, Proposal, proposal_from
from approvals.policy.defaults import DEFAULT_POLICIES
from approvals.policy.documents import AMOUNT_MAX, Match, PolicyDocument, Rule
from approvals.policy.domains import domain_ensure, domain_undo_rule_set
from approvals.policy.engine import (
    DEFAULT_RULE,
    FLAPPING_RULE,
    Facts,
    Trace,
    Verdict,
    decide,
    evaluate,
    policy_decide,
    policy_explain,
    rate_windows,
    rolled_back_on,
)
from approvals.policy.files import document_from, domain_named, read_json_object, write_json
from approvals.policy.versions import (
    NewestPolicy,
    policy_current,
    policy_export,
    policy_newest,
    policy_publish,
)

__all__ = [
    "Backtest",
    "AMOUNT_MAX",
    "CallClaim",
    "ClaimRefused",
    "DEFAULT_POLICIES",
    "DEFAULT_RULE",
    "FLAPPING_RULE",
    "NewestPolicy",
    "Facts",
    "PolicyDocument",
    "Proposal",
    "Match",
    "Rule",
    "Trace",
    "Verdict",
    "document_from",
    "domain_ensure",
    "domain_undo_rule_set",
    "domain_named",
    "decide",
    "evaluate",
    "policy_backtest",
    "policy_current",
    "policy_decide",
    "policy_newest",
    "policy_explain",
    "policy_export",
    "policy_publish",
    "proposal_from",
    "rate_windows",
    "read_json_object",
    "rolled_back_on",
    "write_json",
]
