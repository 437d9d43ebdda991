from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals.agents.selectors import agent_rows, agents_listed, agents_summary
from approvals.core import (
    perm,
    require,
)

AGENTS_PAGE_SIZE = 50


@require_GET
@require("view_desk")
def agents(request: HttpRequest) -> HttpResponse:
    page = Paginator(agents_listed(), AGENTS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "approvals/agents/agents.html",
        {
            "page": page,
            "rows": agent_rows(page.object_list),
            "summary": agents_summary(),
            "can_quarantine": request.user.has_perm(perm("operate_killswitch")),
            "can_release": request.user.has_perm(perm("release_agent")),
        },
    )
