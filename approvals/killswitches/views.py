from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from approvals.audit import (
    Actor,
)
from approvals.core import (
    HtmxHttpRequest,
    Refused,
    perm,
    require,
    whole_number,
)
from approvals.killswitches.presence import agents_heard, containment
from approvals.killswitches.quarantine import agent_quarantine, agent_release
from approvals.killswitches.switches import GLOBAL, killswitch_set
from approvals.models import (
    Agent,
    Domain,
    KillSwitch,
    KillSwitchChange,
)


@require_GET
@require("view_desk")
def killswitches(request: HtmxHttpRequest) -> HttpResponse:
    domains = list(Domain.objects.all())
    switches = {s.scope: s for s in KillSwitch.objects.all()}
    rows = [(GLOBAL, "Every domain", switches.get(GLOBAL))] + [
        (d.slug, d.name, switches.get(d.slug)) for d in domains
    ]
    changes = KillSwitchChange.objects.select_related("switch")[:50]
    history = [(c, containment(c) if c.engaged else None) for c in changes]
    show_all = request.GET.get("agents") == "all"
    return render(
        request,
        "approvals/killswitches/killswitches.html",
        {
            "rows": rows,
            "history": history,
            "presence": agents_heard(limit=None if show_all else 50),
            "show_all": show_all,
            "can_operate": request.user.has_perm(perm("operate_killswitch")),
            "agents": Agent.objects.filter(quarantined_at=None).values_list("name", flat=True),
            "quarantined": Agent.objects.exclude(quarantined_at=None).order_by("-quarantined_at"),
        },
    )


@require_POST
@require("operate_killswitch")
def killswitch_change(request: HtmxHttpRequest, scope: str) -> HttpResponse:
    verb = request.POST.get("verb", "")
    if verb not in ("engage", "release"):
        messages.error(request, "Choose engage or release.")
        return redirect("killswitches")
    if request.POST.get("confirm") != scope:
        messages.error(request, f"Type {scope} in the confirmation box to {verb} that switch.")
        return redirect("killswitches")
    try:
        change = killswitch_set(
            scope=scope,
            engaged=verb == "engage",
            actor=Actor.user(request.user),
            reason=request.POST.get("reason", ""),
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return redirect("killswitches")
    state = "ENGAGED" if change.engaged else "released"
    messages.success(request, f"Kill switch {scope} {state}.")
    return redirect("killswitches")


@require_POST
@require("operate_killswitch")
def quarantine(request: HtmxHttpRequest) -> HttpResponse:
    agent = request.POST.get("agent", "")
    if not agent or request.POST.get("confirm") != agent:
        messages.error(request, "Choose the agent and type its name again to confirm.")
        return redirect("killswitches")
    try:
        revoked, cancelled = agent_quarantine(
            agent_name=agent, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return redirect("killswitches")
    messages.success(
        request,
        f"Agent {agent} quarantined: {revoked} tokens revoked, {cancelled} actions cancelled.",
    )
    return redirect("killswitches")


def _back_to_agents(request: HttpRequest, name: str) -> HttpResponse:
    page = whole_number(request.POST.get("page", ""), low=2, high=10**6)
    query = f"?page={page}" if page else ""
    return redirect(f"{reverse('agents')}{query}#agent-{name}")


@require_POST
@require("operate_killswitch")
def agents_quarantine(request: HttpRequest, name: str) -> HttpResponse:
    if request.POST.get("confirm") != name:
        messages.error(request, f"Type {name} in the confirmation box to quarantine it.")
        return _back_to_agents(request, name)
    try:
        revoked, cancelled = agent_quarantine(
            agent_name=name, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return _back_to_agents(request, name)
    messages.success(
        request,
        f"Agent {name} quarantined: {revoked} tokens revoked, {cancelled} actions cancelled.",
    )
    return _back_to_agents(request, name)


@require_POST
@require("release_agent")
def agents_release(request: HttpRequest, name: str) -> HttpResponse:
    try:
        agent_release(
            agent_name=name, actor=Actor.user(request.user), reason=request.POST.get("reason", "")
        )
    except Refused as exc:
        messages.error(request, exc.detail)
        return _back_to_agents(request, name)
    messages.success(
        request, f"Agent {name} released. Its tokens stay revoked: issue new ones for it to act."
    )
    return _back_to_agents(request, name)
