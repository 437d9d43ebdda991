"""What the desk's answers mean, the same for the blocking and the async client."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

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
    Unauthorized,
)

RETRYABLE_STATUS = {429, 502, 503, 504}
IN_FLIGHT_PROBLEM = "urn:incidentdesk:problem:request-in-progress"
STATE_CHANGED_PROBLEM = "urn:incidentdesk:problem:state-changed-since-approval"
STEPS_PROBLEMS = {"Steps out of order", "Step already recorded"}
FINAL_STOPS = {
    "denied": ActionDenied,
    "rejected": ActionRejected,
    "expired": ActionExpired,
    "cancelled": ActionCancelled,
}


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=json_default).encode()


def json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
        return value if isinstance(value, dict) else {"detail": value}
    except ValueError:
        return {"detail": raw.decode(errors="replace")}


ERROR_MAX = 10_000  # characters of an error the desk keeps with a result


def error_text(error: BaseException) -> str:
    """A failed run's error as the desk takes it: its repr, cut to what the desk keeps."""
    text = repr(error)
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


def jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=json_default))
    except (TypeError, ValueError):
        return repr(value)


def retry_again(status: int, payload: dict[str, Any], idempotency_key: str | None) -> bool:
    """Whether an answer is worth asking again: the desk was busy or out, or our own earlier
    attempt with this key is still running (a key reused with another body is also 409, but
    asking again cannot help that)."""
    in_flight = (
        status == 409 and idempotency_key is not None and payload.get("type") == IN_FLIGHT_PROBLEM
    )
    return status in RETRYABLE_STATUS or in_flight


def verdict_or_raise(status: int, body: dict[str, Any]) -> dict[str, Any]:
    if status in (200, 201):
        return body
    raise_for(status, body)
    raise AssertionError("unreachable")


def started_or_pending(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The answer to "executing": the started verdict or, when the targets changed since the
    call was approved, the pending verdict to wait on again (the approval no longer holds)."""
    if status == 409 and body.get("type") == STATE_CHANGED_PROBLEM:
        verdict = body.get("verdict")
        if isinstance(verdict, dict) and verdict.get("status") == "pending":
            return verdict
    return verdict_or_raise(status, body)


def raise_killed(verdict: dict[str, Any]) -> None:
    switch = verdict["kill_switch"]
    raise KillSwitchEngaged(
        f"kill switch {switch['scope']} engaged by {switch.get('changed_by')}: "
        f"{switch.get('reason')}",
        {**verdict, "reason": switch.get("reason", "")},
    )


def raise_for(status: int, body: dict[str, Any]) -> None:
    detail = body.get("detail") or body.get("title") or f"HTTP {status}"
    if status == 401:
        raise Unauthorized(detail)
    if status == 403:
        raise OutOfScope(detail)
    if status == 423:
        raise KillSwitchEngaged(detail, body)
    if status in (400, 413, 422):
        raise InvalidRequest(detail, body)
    if status >= 500 or status in RETRYABLE_STATUS:
        raise DeskUnavailable(f"IncidentDesk answered {status}: {detail}")
    raise DeskError(f"IncidentDesk answered {status}: {detail}", body)


def runnable(verdict: dict[str, Any], label: str) -> dict[str, Any]:
    """The decided verdict if the call (`label`: tool:verb) may run now; otherwise the error
    that says why not."""
    stop = FINAL_STOPS.get(verdict["status"])
    if stop is not None:
        why = verdict.get("decision_reason") or verdict.get("reason", "")
        by = f" by {verdict['decided_by']}" if verdict.get("decided_by") else ""
        raise stop(f"{label} {verdict['status']}{by}: {why}", verdict)
    if verdict.get("kill_switch"):
        raise_killed(verdict)
    if not verdict.get("may_execute"):
        raise DeskError(f"{label} may not run: {verdict['status']}", verdict)
    return verdict


def proposal_body(
    *,
    session_id: str,
    step_index: int | None,
    tool: str,
    verb: str | None,
    params: dict[str, Any],
    target_ids: Any = None,
    pre_action_state: Any = None,
    amount: Any = None,
    blast_radius: Any = None,
    compensation: Any = None,
) -> dict[str, Any]:
    """The body of POST /api/v1/actions. `amount` is (value, currency), `blast_radius`
    (records, population)."""
    body: dict[str, Any] = {
        "session_id": session_id,
        "tool": tool,
        "params": params,
        "target_ids": list(target_ids or []),
        "pre_action_state": pre_action_state,
    }
    if step_index is not None:
        body["step_index"] = step_index
    if verb is not None:
        body["verb"] = verb
    if amount is not None:
        value, currency = amount
        body["amount"] = {"value": str(value), "currency": currency}
    if blast_radius is not None:
        records, population = blast_radius
        body["blast_radius"] = {"records": records, "population": population}
    if compensation is not None:
        body["compensation"] = compensation
    return body


def next_step_index(status: int, body: dict[str, Any]) -> int | None:
    """Where a session's steps go on, when the desk refused a step out of place (another
    process, or an earlier run of this one, recorded steps meanwhile)."""
    if status == 409 and body.get("title") in STEPS_PROBLEMS:
        value = body.get("next_index")
        if isinstance(value, int):
            return value
    return None
