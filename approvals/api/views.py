"""The agent API, v1: token-authenticated JSON, strictly validated, one error shape (RFC 9457)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from functools import partial, wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from pydantic import (
    BaseModel,
    ValidationError,
)

from approvals.agents import (
    ACCESS_VERSION,
    TokenError,
    token_authenticate,
    token_forget,
    token_keep,
    token_kept,
)
from approvals.api.idempotency import Claim, request_fingerprint
from approvals.api.lean import propose_lean
from approvals.api.openapi import document
from approvals.api.proposals import action_explain, action_propose, action_verdict
from approvals.api.results import (
    StepData,
    action_for_token,
    action_report_result,
    action_start,
    steps_record,
)
from approvals.api.schemas import IDENTIFIER, ActionIn, ResultIn, StartIn, StepsIn
from approvals.core import (
    BadJSON,
    OutOfLimits,
    Refused,
    parse_json,
    problem,
    whole_number,
)
from approvals.killswitches import killswitch_polled, killswitch_state
from approvals.models import (
    Action,
    AgentToken,
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


def _rate_limited(token: AgentToken, *, read_version: bool) -> tuple[int | None, str | None]:
    """Seconds to wait, if this token has used up its requests for the current minute; and,
    with `read_version`, the access version read in the same round trip (None if unknown).

    Counted in the cache; while that is unreachable, in this process (approvals/ratelimit.py).
    """
    from approvals.api.ratelimit import count_in_cache, requests

    now = time.time()
    window = int(now // 60)
    key = f"api-rate:{token.prefix}:{window}"
    read: dict[str, str] = {}

    def count_shared() -> int:
        used, read["version"] = count_in_cache(key, read=ACCESS_VERSION if read_version else "")
        return used

    used = requests.count(key, count_shared)
    wait = max(1, int((window + 1) * 60 - now) + 1) if used > settings.API_RATE_LIMIT else None
    return wait, read.get("version") or None


def _token(raw: str, *, rate_limited: bool) -> tuple[AgentToken, int | None]:
    """The live token behind `raw` and, when counted, the seconds to wait for the rate.

    A token this process authenticated lately is used without the database while the access
    version (read with the rate count, one Redis round trip) shows no revocation since."""
    from approvals.api.ratelimit import shared_version

    kept = token_kept(raw)
    wait: int | None = None
    if kept is None:
        version = shared_version()  # before the read, so a revocation meanwhile is not missed
    else:
        if rate_limited:
            wait, version = _rate_limited(kept.token, read_version=True)
        else:
            version = shared_version()
        if version == kept.version:
            return kept.token, wait
        token_forget(raw)
    token = token_authenticate(raw)
    if version is not None:  # read before the token: a revocation since is not missed
        token_keep(raw, token, version)
    if rate_limited and kept is None:  # a kept token was counted above
        wait = _rate_limited(token, read_version=False)[0]
    return token, wait


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
        token, retry_after = _token(raw.strip(), rate_limited=rate_limited)
    except TokenError as exc:
        response = problem(401, "Unauthorized", f"the token is not valid: {exc}")
        response["WWW-Authenticate"] = 'Bearer realm="incidentdesk", error="invalid_token"'
        return response
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
    data = proposal.data()
    fingerprint = request_fingerprint(request.method, request.path, request.body)
    proposed = propose_lean(
        token=token, data=data, key=key, fingerprint=fingerprint
    ) or action_propose(token=token, data=data, key=key, fingerprint=fingerprint)
    match proposed.claim:
        case Claim.MISMATCH:
            return problem(
                422,
                "Idempotency-Key reused",
                "this key was used before with another request body",
                [{"field": "Idempotency-Key", "message": "already used with another body"}],
            )
        case Claim.IN_FLIGHT:
            return problem(
                409, "Request in progress", "a request with this Idempotency-Key is still running"
            )
    response = JsonResponse(proposed.body, status=proposed.status)
    if proposed.claim is Claim.REPLAY:
        response["Idempotent-Replayed"] = "true"
    elif proposed.action is not None:
        response["Location"] = f"/api/v1/actions/{proposed.action.pk}"
    return response


@agent_api
def actions_explain(request: HttpRequest, token: AgentToken) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    proposal = parse(ActionIn, request)
    explained = action_explain(token=token, data=proposal.data())
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
    """The verdict; with ?wait=N, a pending verdict is held open (without a thread) until it
    changes or N s pass.

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
        action = await sync_to_async(action_for_token)(token, action_id)
    except Refused as exc:
        return problem(exc.status, exc.title, exc.detail, extra=exc.extra)
    deadline = time.monotonic() + wait
    # Only a pending action is worth waiting on: one decided before the request came is
    # answered at once. Any change ends the wait: a decision, a move, a kill switch freezing it.
    seen = action.updated_at
    pending = Action.Status.ESCALATED
    while action.status == pending and action.updated_at == seen and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        action = await Action.objects.select_related("domain").aget(pk=action.pk)
    verdict = await sync_to_async(action_verdict)(action, check_kill=True)
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


# Never rate-limited: an agent that was allowed to run a call must be able to start it.
@partial(agent_api, rate_limited=False)
def action_executing(request: HttpRequest, token: AgentToken, action_id: str) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    started = action_start(token=token, action_id=action_id, params=parse(StartIn, request).params)
    verdict = action_verdict(started.action)
    if started.reopened:
        changed = [{"target": d.target, "fields": list(d.fields)} for d in started.changed]
        return problem(
            409,
            "State changed since approval",
            "the targets changed since this action was approved: it is back in the queue "
            "and waits for a person again",
            extra={"verdict": verdict, "changed": changed[:50]},
        )
    return JsonResponse(verdict)


# Never rate-limited: an action that ran must always be reportable.
@partial(agent_api, rate_limited=False)
def action_result(request: HttpRequest, token: AgentToken, action_id: str) -> HttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    report = parse(ResultIn, request)
    action = action_report_result(
        token=token,
        action_id=action_id,
        ok=report.ok,
        result=report.result,
        post_state=report.post_state,
        error=report.error,
    )
    return JsonResponse(action_verdict(action))


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
    session = steps_record(
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
    state = killswitch_state([token.domain.slug])
    killswitch_polled(token=token, version=state["version"])
    return JsonResponse(state)


@require_GET
def openapi_json(request: HttpRequest) -> HttpResponse:
    return JsonResponse(document(), json_dumps_params={"indent": 2})


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "approvals/api/api.html", {"spec": document()})
