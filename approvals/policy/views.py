from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST
from pydantic import ValidationError

from approvals.agents import VERBS
from approvals.audit import Actor
from approvals.core import (
    MAX_INTEGER,
    BadJSON,
    HtmxHttpRequest,
    OutOfLimits,
    Refused,
    parse_json,
    perm,
    require,
    whole_number,
)
from approvals.models import (
    Domain,
)
from approvals.policy.backtest import MAX_WINDOW, policy_backtest
from approvals.policy.claims import Proposal
from approvals.policy.documents import PolicyDocument
from approvals.policy.engine import policy_explain
from approvals.policy.versions import policy_current


def _explain_form(query: Any) -> tuple[Proposal | None, dict[str, str]]:
    """A proposal from the explain form's fields, or the errors naming the bad ones."""
    errors: dict[str, str] = {}
    tool, verb = query.get("tool", "").strip(), query.get("verb", "").strip()
    if not tool:
        errors["tool"] = "name the tool, e.g. create_order"
    if verb not in VERBS:
        errors["verb"] = f"choose one of {', '.join(VERBS)}"
    amount = None
    if query.get("amount", "").strip():
        try:
            amount = Decimal(query["amount"].strip())
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or abs(amount) >= 10**14:
            errors["amount"] = f"{query['amount']!r} is not an amount"
            amount = None
    counts: dict[str, int | None] = {}
    for name in ("records", "population"):
        raw = query.get(name, "").strip()
        counts[name] = whole_number(raw, high=MAX_INTEGER)
        if raw and counts[name] is None:
            errors[name] = f"{raw!r} is not a whole number"
    if errors:
        return None, errors
    targets = tuple(t.strip() for t in query.get("targets", "").split(",") if t.strip())
    proposal = Proposal(
        agent=query.get("agent", "").strip() or "*",
        tool=tool,
        verb=verb,
        amount=amount,
        blast_records=counts["records"],
        blast_population=counts["population"],
        target_ids=targets,
        has_snapshot=bool(query.get("snapshot")),
        has_compensation=bool(query.get("compensation")),
    )
    return proposal, errors


def _policies_context(request: HtmxHttpRequest, slug: str | None) -> dict[str, Any]:
    domains = list(Domain.objects.all())
    selected = next((d for d in domains if d.slug == slug), None)
    selected = selected or (domains[0] if domains else None)
    context: dict[str, Any] = {
        "domains": domains,
        "domain": selected,
        "form": request.GET,
        "verbs": VERBS,
        "can_backtest": request.user.has_perm(perm("manage_desk")),
        "backtest_form": {"since": "7", "unit": "days"},
    }
    if selected is not None:
        document, version = policy_current(selected)
        context.update(
            document=document,
            version=version,
            history=selected.policy_versions.order_by("-version")[:10],
            current_json=json.dumps(document.model_dump(mode="json"), indent=2),
        )
    return context


@require_GET
@require("view_desk")
def policies(request: HtmxHttpRequest) -> HttpResponse:
    context = _policies_context(request, request.GET.get("domain"))
    selected = context["domain"]
    if selected is not None and "tool" in request.GET:
        proposal, errors = _explain_form(request.GET)
        context["errors"] = errors
        if proposal is not None:
            context["verdict"], context["trace"] = policy_explain(
                domain=selected, proposal=proposal
            )
    template = (
        "approvals/policy/policies.html#explain"
        if request.htmx
        else "approvals/policy/policies.html"
    )
    return render(request, template, context, status=400 if context.get("errors") else 200)


BACKTEST_UNITS = {"hours": timedelta(hours=1), "days": timedelta(days=1)}


@require_POST
@require("manage_desk")
def policy_backtest_view(request: HtmxHttpRequest) -> HttpResponse:
    """Replay a candidate policy (pasted as JSON) over the domain's recent actions."""
    domain = get_object_or_404(Domain, slug=request.POST.get("domain", ""))
    context = _policies_context(request, domain.slug)
    form = {k: request.POST.get(k, "") for k in ("document", "since", "unit")}
    context["backtest_form"] = form
    errors: list[str] = []
    document = None
    try:
        raw = parse_json(form["document"].encode())
        if isinstance(raw, dict):  # a file `policy export` wrote names its domain and version
            raw = {k: v for k, v in raw.items() if k not in ("domain", "version")}
        document = PolicyDocument.model_validate(raw)
    except (BadJSON, OutOfLimits) as exc:
        errors.append(f"document: not JSON ({exc})")
    except ValidationError as exc:
        errors.extend(
            f"document.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
    count = whole_number(form["since"], low=1, high=MAX_WINDOW.days * 24)
    unit = BACKTEST_UNITS.get(form["unit"])
    if count is None or unit is None:
        errors.append(f"since: a whole number of hours or days, at most {MAX_WINDOW.days} days")
    if not errors and document is not None and count is not None and unit is not None:
        try:
            context["backtest"] = policy_backtest(
                domain=domain,
                document=document,
                since=count * unit,
                actor=Actor.user(request.user),
            )
        except Refused as exc:
            errors.append(f"{exc.field or 'backtest'}: {exc.detail}")
    context["backtest_errors"] = errors
    return render(request, "approvals/policy/policies.html", context, status=422 if errors else 200)
