"""What can stop a guarded tool call. Each carries the desk's reason."""

from __future__ import annotations

from typing import Any


class DeskError(Exception):
    """Base class: the tool did not run."""

    def __init__(self, message: str, verdict: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict or {}

    @property
    def action_id(self) -> str | None:
        return self.verdict.get("id")

    @property
    def rule(self) -> str | None:
        return self.verdict.get("rule")

    @property
    def reason(self) -> str:
        """Why: the operator's words if a person decided, else the policy rule's reason."""
        return str(self.verdict.get("decision_reason") or self.verdict.get("reason") or self)


class ActionDenied(DeskError):
    """The policy denied the call."""


class ActionRejected(DeskError):
    """An operator rejected the call."""


class ActionExpired(DeskError):
    """Nobody decided in time; an expired escalation counts as denied."""


class ActionCancelled(DeskError):
    """The call was cancelled after it was approved (for example by a kill switch)."""


class KillSwitchEngaged(DeskError):
    """The domain is stopped: no action is admitted until on-call releases it."""


class OutOfScope(DeskError):
    """The token does not cover this tool and verb."""


class InvalidRequest(DeskError):
    """The desk refused the request as malformed; `problem` names the fields."""

    def __init__(self, message: str, problem: dict[str, Any]) -> None:
        super().__init__(message)
        self.problem = problem


class Unauthorized(DeskError):
    """The token is wrong, expired or revoked."""


class DeskUnavailable(DeskError):
    """The desk could not be reached; the call was not run (fail closed)."""


class ReportFailed(Exception):
    """The tool ran, but the desk did not get its report; `.result` is what the tool returned.

    Not a DeskError: the call happened. Report it again with `Desk.report` once the desk is
    back (the desk accepts the same report twice), or tell a person.
    """

    def __init__(
        self, message: str, *, verdict: dict[str, Any], result: Any, post_state: Any
    ) -> None:
        super().__init__(message)
        self.verdict, self.result, self.post_state = verdict, result, post_state


REFUSALS = (
    ActionDenied,
    ActionRejected,
    ActionExpired,
    ActionCancelled,
    KillSwitchEngaged,
    OutOfScope,
)
"""The desk's answers that say no to a call (a model may be told why), as against the errors
that mean the desk could not be asked or could not take the request (a run should stop)."""
