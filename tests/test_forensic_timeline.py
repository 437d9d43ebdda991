"""A session's forensic timeline: everything that happened, in order, with who and why."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse
from incidents.target import Target

from approvals.api import StepData, steps_record
from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import AgentSession, AuditEvent
from tests.rollback_helpers import executed, records_domain, records_token, run_plan, session_of

pytestmark = pytest.mark.django_db


def test_the_timeline_shows_the_session_in_order_and_exports_it(
    target: tuple[Target, str], login: Any, commander: Any, viewer: Any
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    steps_record(
        token=token,
        session_id="run-1",
        steps=[
            StepData(index=0, kind="thought", content="Stock is low: set the record", data={}),
        ],
    )
    executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    killswitch_set(scope="records", engaged=True, actor=Actor("user", "otto"), reason="runaway")
    served.seed({"a": {"v": 2}})
    run_plan(session_of())
    session = AgentSession.objects.get(external_id="run-1")

    page = login(viewer).get(reverse("session", args=[session.pk]))
    assert page.status_code == 200
    kinds = [e.kind for e in page.context["entries"]]
    wanted = [
        "reasoning.thought",
        "action.allowed",
        "action.succeeded",
        "killswitch.engaged",
        "rollback.planned",
        "rollback.started",
        "rollback.step_done",
        "action.rolled_back",
        "rollback.completed",
    ]
    assert [k for k in kinds if k in wanted] == wanted
    html = page.content.decode()
    assert "Stock is low" in html and "otto" in html and "runaway" in html
    # Viewers read it; exporting is for those who may export the audit trail, and is audited.
    assert login(viewer).post(reverse("session-export", args=[session.pk])).status_code == 403
    response = login(commander).post(reverse("session-export", args=[session.pk]))
    assert response.status_code == 200
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [e["kind"] for e in lines if e["kind"] in wanted] == wanted
    assert all(e["actor"] for e in lines)
    assert AuditEvent.objects.filter(action="session.exported", actor=commander.username).exists()
    listing = login(viewer).get(reverse("sessions")).content.decode()
    assert reverse("session", args=[session.pk]) in listing
