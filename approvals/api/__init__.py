"""The agent API under /api/v1/: strict request schemas, token and rate checks, idempotency
keys, proposals and their verdicts, results, reasoning steps, and the OpenAPI document."""

from __future__ import annotations

from approvals.api.idempotency import Claim, idempotency_claim, idempotency_purge
from approvals.api.lean import propose_lean
from approvals.api.proposals import ProposalData, action_propose
from approvals.api.results import StepData, action_report_result, steps_record
from approvals.api.schemas import ActionIn

__all__ = [
    "ActionIn",
    "Claim",
    "ProposalData",
    "StepData",
    "action_propose",
    "action_report_result",
    "idempotency_claim",
    "idempotency_purge",
    "propose_lean",
    "steps_record",
]
