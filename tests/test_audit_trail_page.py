from __future__ import annotations

import json

import pytest
from django.db import transaction
from django.urls import reverse

from approvals.audit import Actor, audit_record, verification_run
from approvals.audit.tasks import audit_verify_task
from approvals.audit.views import AUDIT_PAGE_SIZE
from approvals.models import AuditEvent, ChainVerification

pytestmark = pytest.mark.django_db


def record(action: str, *, actor: str = "agent-7", domain: str = "billing") -> AuditEvent:
    with transaction.atomic():
        return audit_record(actor=Actor("agent", actor), action=action, domain=domain)


def test_filters_narrow_the_list(viewer, login) -> None:
    record("action.proposed", domain="billing")
    record("action.proposed", domain="devops")
    record("killswitch.engaged", domain="devops", actor="otto")
    client = login(viewer)
    page = client.get(reverse("audit"), {"domain": "devops", "action": "action."}).content.decode()
    assert page.count("<code>action.proposed</code>") == 1
    assert "killswitch.engaged" not in page
    page = client.get(reverse("audit"), {"actor": "otto"}).content.decode()
    assert "killswitch.engaged" in page and "action.proposed" not in page


def test_htmx_filter_renders_only_the_events_partial(viewer, login) -> None:
    record("action.proposed")
    response = login(viewer).get(
        reverse("audit"), {"action": "action"}, headers={"HX-Request": "true"}
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="events"')
    assert "<html" not in html


def test_bad_date_filter_names_the_field(viewer, login) -> None:
    response = login(viewer).get(reverse("audit"), {"since": "yesterday"})
    assert response.status_code == 400
    assert "since: &#x27;yesterday&#x27; is not a date" in response.content.decode()


def test_older_events_page_by_sequence(viewer, login) -> None:
    for n in range(AUDIT_PAGE_SIZE + 5):
        record(f"test.n{n}")
    client = login(viewer)
    first = client.get(reverse("audit"), {"action": "test."})
    assert first.context["older"] is not None
    ids = [e.id for e in first.context["events"]]
    assert len(ids) == AUDIT_PAGE_SIZE
    second = client.get(reverse("audit"), {"action": "test.", "before": first.context["older"]})
    more = [e.id for e in second.context["events"]]
    assert len(more) == 5 and max(more) < min(ids)
    assert second.context["older"] is None


def test_verify_request_queues_a_task_on_commit(oncall, login, django_capture_on_commit_callbacks):
    client = login(oncall)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("audit-verify"), headers={"HX-Request": "true"})
    assert "Verification queued" in response.content.decode()
    verification = ChainVerification.objects.get()
    assert verification.state == "queued"
    assert len(callbacks) == 2  # the live push and the task
    assert AuditEvent.objects.filter(action="audit.verification_requested").exists()


def test_verification_task_is_safe_to_run_twice(oncall, login) -> None:
    login(oncall).post(reverse("audit-verify"))
    verification = ChainVerification.objects.get()
    audit_verify_task.apply(args=[verification.pk])
    audit_verify_task.apply(args=[verification.pk])
    verification.refresh_from_db()
    assert verification.state == "intact"
    assert AuditEvent.objects.filter(action="audit.chain_intact").count() == 1
    assert verification_run(verification_id=verification.pk) is None


def test_broken_chain_shows_on_the_page(oncall, login) -> None:
    record("a")
    record("b")
    ChainVerification.objects.create(
        requested_by="x", state="broken", first_broken_seq=2, problem="event #2 was altered"
    )
    page = login(oncall).get(reverse("audit")).content.decode()
    assert "Chain BROKEN at event #2: event #2 was altered" in page


def test_web_export_streams_json_lines_and_is_audited(commander, login) -> None:
    record("action.proposed", domain="billing")
    record("action.proposed", domain="devops")
    response = login(commander).post(reverse("audit-export") + "?domain=devops")
    assert response["Content-Type"] == "application/jsonl"
    assert "attachment" in response["Content-Disposition"]
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [line["domain"] for line in lines] == ["devops"]
    assert {"seq", "hash", "prev_hash", "created_at", "data"} <= lines[0].keys()
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor == commander.username
    assert exported.data == {"domain": "devops"}
