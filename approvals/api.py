"""The agent API, v1: token-authenticated JSON, strictly validated, one error shape (RFC 9457)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from decimal import Decimal
from functools import partial, wraps
from typing import Annotated, Any, Literal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic import Strict as PydanticStrict

from approvals import actions, idempotency
from approvals.actions import ProposalData, StepData
from approvals.errors import Refused, problem
from approvals.inputs import (
    MAX_INTEGER,
    TARGET_ID_MAX,
    TARGET_ID_PATTERN,
    BadJSON,
    OutOfLimits,
    parse_json,
    whole_number,
)
from approvals.killswitches import killswitch_state
from approvals.models import Action, AgentToken
from approvals.policy import AMOUNT_MAX
from approvals.tokens import TokenError, token_authenticate

Verb = Literal["read", "create", "update", "delete", "spend", "execute"]
IDENTIFIER = r"^[A-Za-z0-9_.:-]{1,100}$"
# Strict: a JSON true is not the integer 1, and "3" is not 3.


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema counts one (5 and 5.0), never a boolean or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


JSONInteger = BeforeValidator(_json_integer)
Count = Annotated[int, Field(ge=0, le=MAX_INTEGER), JSONInteger]
StepIndex = Annotated[int, Field(ge=0, le=2**31 - 1), JSONInteger]
Flag = Annotated[bool, PydanticStrict()]
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,13})(\.[0-9]{1,4})?$"


def _amount(value: Any) -> Any:
    """A decimal string is taken exactly; a JSON number (a binary float) to 4 places."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a number")
    if isinstance(value, str):
        if not re.fullmatch(AMOUNT_PATTERN, value):
            raise ValueError("must be a decimal string like 450.00 (up to 4 decimal places)")
        return Decimal(value)
    if isinstance(value, int | float):
        number = Decimal(repr(value))
        if not number.is_finite() or abs(number) > AMOUNT_MAX:  # rounding would overflow
            raise ValueError(f"must be a number from 0 to {AMOUNT_MAX}")
        return round(number, 4)
    raise ValueError("must be a decimal string or a number")


AmountValue = Annotated[
    Decimal,
    BeforeValidator(_amount),
    Field(ge=0, le=AMOUNT_MAX),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": AMOUNT_PATTERN},
                {"type": "number", "minimum": 0, "maximum": AMOUNT_MAX},
            ],
            "description": "a decimal string, taken exactly, or a number, rounded to 4 places",
        }
    ),
]
TargetId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TARGET_ID_MAX,
        pattern=TARGET_ID_PATTERN,
        description="a target's id in its system: one path segment (no control characters, "
        'no "/", not "." or "..")',
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Amount(Strict):
    value: AmountValue
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD")


class BlastRadius(Strict):
    records: Count = Field(description="records the action touches")
    population: Count = Field(gt=0, description="records of that kind in all")

    @model_validator(mode="after")
    def records_within_population(self) -> BlastRadius:
        if self.records > self.population:
            raise ValueError("records cannot exceed population")
        return self


class Compensation(Strict):
    tool: str = Field(pattern=IDENTIFIER, description="the call that undoes this one")
    params: dict[str, Any] = Field(default_factory=dict)


class ActionIn(Strict):
    session_id: str = Field(pattern=IDENTIFIER)
    step_index: StepIndex | None = Field(default=None, description="the reasoning step behind it")
    tool: str = Field(pattern=IDENTIFIER)
    verb: Verb | None = Field(
        default=None,
        description="checked against the tool registry (a mismatch is 422); needed only for a "
        "tool the domain has not registered",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    target_ids: list[TargetId] = Field(default_factory=list, max_length=100_000)
    amount: Amount | None = None
    blast_radius: BlastRadius | None = None
    pre_action_state: Any = Field(default=None, description="snapshot of the targets now")
    compensation: Compensation | None = None

    def data(self) -> ProposalData:
        return ProposalData(
            session_id=self.session_id,
            step_index=self.step_index,
            tool=self.tool,
            verb=self.verb,
            params=self.params,
            target_ids=self.target_ids,
            amount=self.amount.value if self.amount else None,
            currency=self.amount.currency if self.amount else "",
            blast_records=self.blast_radius.records if self.blast_radius else None,
            blast_population=self.blast_radius.population if self.blast_radius else None,
            pre_action_state=self.pre_action_state,
            compensation=self.compensation.model_dump(mode="json") if self.compensation else None,
        )


class ResultIn(Strict):
    ok: Flag
    result: Any = None
    post_state: Any = Field(default=None, description="state of the targets after the call")
    error: str = Field(default="", max_length=10_000)


class StepIn(Strict):
    index: StepIndex
    kind: Literal["thought", "observation", "tool_call", "tool_result"]
    content: str = Field(max_length=100_000)
    data: dict[str, Any] = Field(default_factory=dict)


class StepsIn(Strict):
    steps: list[StepIn] = Field(min_length=1, max_length=1000)


class Verdict(Strict):
    """The desk's answer about one action (responses only)."""

    id: str
    status: str = Field(
        description="allowed | denied | pending, then approved | modified | rejected | expired | "
        "cancelled, then succeeded | failed, then rolled_back | rollback_failed"
    )
    may_execute: bool
    rule: str
    reason: str
    policy_version: int
    tier: int | None
    expires_at: str | None
    run_by: str | None = Field(
        description="an allowed or approved action may start until then (APPROVAL_TTL)"
    )
    params: dict[str, Any] = Field(
        description="the params to run with (an operator's, if modified)"
    )
    modified: bool
    decided_by: str | None = Field(
        description="who decided an escalation: an operator, or escalation-timer when it expired"
    )
    decision_reason: str = Field(description="why, in the decider's words (empty if none given)")
    kill_switch: dict[str, Any] | None = Field(
        default=None,
        description="on reads: the engaged kill switch over the action's domain, if any "
        "(then may_execute is false)",
    )


def validation_problem(error: ValidationError) -> JsonResponse:
    errors = [
        {"field": ".".join(str(part) for part in item["loc"]) or "(body)", "message": item["msg"]}
        for item in error.errors()
    ]
    fields = ", ".join(e["field"] for e in errors)
    return problem(422, "Invalid request", f"invalid fields: {fields}", errors)


def parse[M: BaseModel](model: type[M], request: HttpRequest) -> M:
    return model.model_validate(parse_json(request.body))


def _rate_limited(token: AgentToken) -> int | None:
    """Seconds to wait, if this token has used up its requests for the current minute.

    Counted in the cache; while that is unreachable, in this process (approvals/ratelimit.py).
    """
    from approvals.ratelimit import requests

    now = time.time()
    window = int(now // 60)
    key = f"api-rate:{token.prefix}:{window}"

    def count_in_cache() -> int:
        try:
            return cache.incr(key)
        except ValueError:  # the first request of this window
            return 1 if cache.add(key, 1, timeout=90) else cache.incr(key)

    used = requests.count(key, count_in_cache)
    if used > settings.API_RATE_LIMIT:
        return max(1, int((window + 1) * 60 - now) + 1)
    return None


AgentView = Callable[..., HttpResponse]


def authorize(request: HttpRequest, *, rate_limited: bool = True) -> AgentToken | HttpResponse:
    """The request's live token, or the problem response that refuses it (401, 429, 413).
    Without `rate_limited`, the request is neither counted nor refused for the rate."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw:
        response = problem(401, "Unauthorized", "send Authorization: Bearer <token>")
        response["WWW-Authenticate"] = 'Bearer realm="incidentdesk"'
        return response
    try:
        token = token_authenticate(raw.strip())
    except TokenError as exc:
        response = problem(401, "Unauthorized", f"the token is not valid: {exc}")
        response["WWW-Authenticate"] = 'Bearer realm="incidentdesk", error="invalid_token"'
        return response
    retry_after = _rate_limited(token) if rate_limited else None
    if retry_after is not None:
        response = problem(
            429,
            "Too many requests",
            f"more than {settings.API_RATE_LIMIT} requests a minute with this token",
        )
        response["Retry-After"] = str(retry_after)
        return response
    if _body_too_large(request):
        return problem(
            413,
            "Request too large",
            f"the body is over the limit of {settings.API_MAX_BODY_BYTES} bytes",
        )
    return token


def _body_too_large(request: HttpRequest) -> bool:
    # The declared length first, so an oversized body is refused before it is read.
    declared = whole_number(request.headers.get("Content-Length", ""), high=2**63 - 1)
    if declared is not None and declared > settings.API_MAX_BODY_BYTES:
        return True
    try:
        return len(request.body) > settings.API_MAX_BODY_BYTES
    except RequestDataTooBig:
        return True


def agent_api(view: AgentView, *, rate_limited: bool = True) -> Callable[..., HttpResponse]:
    """Authenticate the bearer token, apply limits, and turn refusals into problem documents."""

    @csrf_exempt
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        token = authorize(request, rate_limited=rate_limited)
        if isinstance(token, HttpResponse):
            return token
        try:
            return view(request, token, *args, **kwargs)
        except BadJSON as exc:
            return problem(400, "Malformed JSON", f"the body is not JSON: {exc}")
        except OutOfLimits as exc:
            return problem(422, "Invalid request", f"invalid fields: {exc}", exc.errors)
        except ValidationError as exc:
            return validation_problem(exc)
        except Refused as exc:
            errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
            return problem(exc.status, exc.title, exc.detail, errors, exc.extra)

    return wrapped


def _method_not_allowed(allowed: str) -> HttpResponse:
    response = problem(405, "Method not allowed", f"use {allowed}")
    response["Allow"] = allowed
    return response


@agent_api
def actions_create(request: HttpRequest, token: AgentToken) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return problem(
            400, "Idempotency-Key required", "send an Idempotency-Key header with every proposal"
        )
    if len(key) > 255:
        return problem(400, "Idempotency-Key too long", "keep Idempotency-Key to 255 characters")
    proposal = parse(ActionIn, request)
    proposed = actions.action_propose(
        token=token,
        data=proposal.data(),
        key=key,
        fingerprint=idempotency.request_fingerprint(request.method, request.path, request.body),
    )
    match proposed.claim:
        case idempotency.Claim.MISMATCH:
            return problem(
                422,
                "Idempotency-Key reused",
                "this key was used before with another request body",
                [{"field": "Idempotency-Key", "message": "already used with another body"}],
            )
        case idempotency.Claim.IN_FLIGHT:
            return problem(
                409, "Request in progress", "a request with this Idempotency-Key is still running"
            )
    response = JsonResponse(proposed.body, status=proposed.status)
    if proposed.claim is idempotency.Claim.REPLAY:
        response["Idempotent-Replayed"] = "true"
    elif proposed.action is not None:
        response["Location"] = f"/api/v1/actions/{proposed.action.pk}"
    return response


@agent_api
def actions_explain(request: HttpRequest, token: AgentToken) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    proposal = parse(ActionIn, request)
    explained = actions.action_explain(token=token, data=proposal.data())
    verdict, trace = explained.verdict, explained.trace
    return JsonResponse(
        {
            "in_scope": explained.in_scope,
            "verb": explained.proposal.verb,
            "registered": explained.proposal.registered,
            "amount": None
            if explained.proposal.amount is None
            else {
                "value": f"{explained.proposal.amount:f}",
                "currency": explained.proposal.currency,
            },
            "target_ids": list(explained.proposal.target_ids),
            "outcome": verdict.outcome,
            "rule": verdict.rule,
            "reason": verdict.reason,
            "tier": verdict.tier,
            "policy_version": verdict.version,
            "trace": [{"rule": t.rule, "applies": t.matched, "why": t.why} for t in trace],
        }
    )


@csrf_exempt
async def action_detail(request: HttpRequest, action_id: str) -> HttpResponse:
    """The verdict; with ?wait=N, held open (without a thread) until it changes or N s pass.

    Asynchronous, so that waiting agents cost no worker thread: the production layout sends
    these requests to the ASGI server.
    """
    if request.method != "GET":
        return _method_not_allowed("GET")
    token = await sync_to_async(authorize)(request)
    if isinstance(token, HttpResponse):
        return token
    wait = _wait_seconds(request.GET.get("wait", "0"))
    if isinstance(wait, HttpResponse):
        return wait
    try:
        action = await sync_to_async(actions.action_for_token)(token, action_id)
    except Refused as exc:
        return problem(exc.status, exc.title, exc.detail, extra=exc.extra)
    deadline = time.monotonic() + wait
    seen = action.updated_at  # a decision, a move, or a kill switch freezing it
    while action.updated_at == seen and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        action = await Action.objects.select_related("domain").aget(pk=action.pk)
    verdict = await sync_to_async(actions.action_verdict)(action, check_kill=True)
    return JsonResponse(verdict)


def _wait_seconds(raw: str) -> int | HttpResponse:
    """?wait=N as whole seconds (ASCII digits only), or the 422 that names it."""
    if re.fullmatch(r"[0-9]{1,4}", raw) and int(raw) <= settings.API_MAX_WAIT:
        return int(raw)
    shown = raw[:20].encode("unicode_escape").decode("ascii")
    return problem(
        422,
        "Invalid request",
        f"wait must be a whole number of seconds from 0 to {settings.API_MAX_WAIT}",
        [{"field": "wait", "message": f"{shown!r} is not 0-{settings.API_MAX_WAIT}"}],
    )


# Never rate-limited: an action that ran must always be reportable.
@partial(agent_api, rate_limited=False)
def action_result(request: HttpRequest, token: AgentToken, action_id: str) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    report = parse(ResultIn, request)
    action = actions.action_report_result(
        token=token,
        action_id=action_id,
        ok=report.ok,
        result=report.result,
        post_state=report.post_state,
        error=report.error,
    )
    return JsonResponse(actions.action_verdict(action))


@agent_api
def session_steps(request: HttpRequest, token: AgentToken, session_id: str) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    if not re.fullmatch(IDENTIFIER, session_id):
        message = "a session id is 1-100 letters, digits, and _ . : -"
        return problem(
            422, "Invalid session id", message, [{"field": "session_id", "message": message}]
        )
    payload = parse(StepsIn, request)
    session = actions.steps_record(
        token=token,
        session_id=session_id,
        steps=[StepData(s.index, s.kind, s.content, s.data) for s in payload.steps],
    )
    return JsonResponse({"session_id": session_id, "steps": session.steps.count()}, status=201)


@agent_api
def killswitches(request: HttpRequest, token: AgentToken) -> HttpResponse:
    """The switches over this token's domain (its own and the global one), with their version:
    what /ws/agent/ pushes, for clients whose socket is down."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    return JsonResponse(killswitch_state([token.domain.slug]))
