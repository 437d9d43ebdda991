from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals.agents import VERBS
from approvals.core import (
    MAX_INTEGER,
    HtmxHttpRequest,
    require,
    whole_number,
)
from approvals.models import (
    Domain,
)
from approvals.policy.claims import Proposal
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


@require_GET
@require("view_desk")
def policies(request: HtmxHttpRequest) -> HttpResponse:
    domains = list(Domain.objects.all())
    selected = next((d for d in domains if d.slug == request.GET.get("domain")), None)
    selected = selected or (domains[0] if domains else None)
    context: dict[str, Any] = {
        "domains": domains,
        "domain": selected,
        "form": request.GET,
        "verbs": VERBS,
    }
    if selected is not None:
        document, version = policy_current(selected)
        context.update(
            document=document,
            version=version,
            history=selected.policy_versions.order_by("-version")[:10],
        )
        if "tool" in request.GET:
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
