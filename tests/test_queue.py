"""The queue page and the review page: what operators see and who may decide."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from approvals.models import Action, AuditEvent
from approvals.queue import effective_params, params_fingerprint
from tests.agents import decide, escalated_action

pytestmark = pytest.mark.django_db

S = Action.Status


def test_queue_groups_open_escalations_by_tier_most_urgent_first(approver, login) -> None:
    first = escalated_action(tier=1)
    second = escalated_action(tier=1, agent="other-buyer")
    deletion = escalated_action(tier=2, agent="janitor")
    Action.objects.filter(pk=second.pk).update(sla_due_at=first.sla_due_at.replace(year=2020))
    page = login(approver).get(reverse("queue")).content.decode()
    tier1 = page.index('id="tier-1-rows"')
    tier2 = page.index('id="tier-2-rows"')
    assert tier1 < page.index(f"esc-{second.pk}") < page.index(f"esc-{first.pk}") < tier2
    assert tier2 < page.index(f"esc-{deletion.pk}")
    assert "rule <code>spend-cap</code>" in page
    assert 'id="queue-count"' in page and ">3</span>" in page


def test_filters_by_domain_agent_tier_and_age(approver, login) -> None:
    order = escalated_action(tier=1)
    deletion = escalated_action(tier=2, agent="janitor")
    client = login(approver)

    def shown(**query) -> set[str]:
        html = client.get(reverse("queue"), query).content.decode()
        return {str(a.pk) for a in (order, deletion) if f"esc-{a.pk}" in html}

    assert shown(domain="devops") == {str(deletion.pk)}
    assert shown(agent="buyer") == {str(order.pk)}
    assert shown(tier="2") == {str(deletion.pk)}
    assert shown(age="5") == set()
    reply = client.get(reverse("queue"), {"tier": "x"})
    assert reply.status_code == 400 and "tier: &#x27;x&#x27; is not a whole number" in (
        reply.content.decode()
    )


def test_queue_page_queries_do_not_grow_with_the_queue(
    approver, login, django_assert_max_num_queries
) -> None:
    client = login(approver)
    escalated_action(tier=1)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        client.get(reverse("queue"))
    for n in range(15):
        escalated_action(tier=1, agent=f"buyer-{n}")
    with django_assert_max_num_queries(len(few)):
        client.get(reverse("queue"))


def test_review_page_shows_chain_proposal_and_state_side_by_side(approver, login) -> None:
    action = escalated_action(tier=1)
    page = login(approver).get(reverse("review", args=[action.pk])).content.decode()
    assert "Reasoning chain" in page and "Proposed action" in page and "Current state" in page
    assert "policy v1" in page and "spend-cap" in page
    # qty is in both the params and the snapshot: shown as now -> after.
    assert "<td><code>qty</code></td><td>0</td><td>10</td>" in page
    assert 'data-key="a"' in page  # the approver may decide


def test_viewer_sees_but_cannot_decide(viewer, login) -> None:
    action = escalated_action(tier=1)
    client = login(viewer)
    page = client.get(reverse("review", args=[action.pk])).content.decode()
    assert "may read this item but not decide" in page and 'value="approve"' not in page
    reply = client.post(reverse("decide", args=[action.pk]), {"verdict": "approve"})
    assert reply.status_code == 403
    # The partial, asked for directly as htmx would, checks too.
    reply = client.post(
        reverse("decide", args=[action.pk]), {"verdict": "approve"}, headers={"HX-Request": "true"}
    )
    assert reply.status_code == 403
    assert Action.objects.get(pk=action.pk).status == S.ESCALATED


def test_outsider_and_anonymous_are_kept_out(outsider, login, client) -> None:
    action = escalated_action(tier=1)
    assert login(outsider).get(reverse("queue")).status_code == 403
    assert login(outsider).post(reverse("decide", args=[action.pk])).status_code == 403
    assert client.get(reverse("queue")).status_code == 302


def test_decide_through_the_page(approver, login, make_operator) -> None:
    action = escalated_action(tier=1)
    client = login(approver)
    url = reverse("decide", args=[action.pk])
    bad = client.post(url, {"verdict": "modify", "params": "{nope"}, headers={"HX-Request": "true"})
    assert bad.status_code == 422 and "params: not JSON" in bad.content.decode()
    no_reason = client.post(url, {"verdict": "reject"}, headers={"HX-Request": "true"})
    assert no_reason.status_code == 422 and "say why" in no_reason.content.decode()
    params = json.dumps({"sku": "GPU-A100", "qty": 3, "unit_price": 90})
    seen = params_fingerprint(effective_params(action))
    unseen = client.post(url, {"verdict": "modify", "params": params, "reason": "fewer"})
    assert unseen.status_code == 302 and Action.objects.get(pk=action.pk).modified_params is None
    done = client.post(
        url, {"verdict": "modify", "params": params, "reason": "fewer", "params_seen": seen}
    )
    # A new proposal, waiting for someone else.
    assert done.status_code == 302 and done["Location"] == reverse("review", args=[action.pk])
    action = Action.objects.get(pk=action.pk)
    assert action.status == S.ESCALATED and action.modified_by == approver.username
    seen = params_fingerprint(effective_params(action))
    other = login(make_operator("abe-approver", "approver"))
    approved = other.post(url, {"verdict": "approve", "params_seen": seen})
    assert approved.status_code == 302 and approved["Location"] == reverse("queue")
    action = Action.objects.get(pk=action.pk)
    assert action.status == S.MODIFIED and action.modified_params["qty"] == 3
    page = client.get(reverse("review", args=[action.pk])).content.decode()
    assert "<del>10</del> → <ins>3</ins>" in page


def test_second_decider_is_told_who_decided(approver, senior_approver, login) -> None:
    action = escalated_action(tier=1)
    decide(action_id=action.pk, user=approver, verdict="approve")
    reply = login(senior_approver).post(
        reverse("decide", args=[action.pk]),
        {"verdict": "reject", "reason": "no"},
        headers={"HX-Request": "true"},
    )
    assert reply.status_code == 409
    assert f"already approved by {approver.username}" in reply.content.decode()
    assert AuditEvent.objects.filter(action="action.rejected").count() == 0


def test_large_snapshots_are_collapsed_and_searchable(approver, login) -> None:
    action = escalated_action(tier=1)
    Action.objects.filter(pk=action.pk).update(
        pre_action_state={"accounts": [{"id": n, "discount": 0.1} for n in range(3000)]}
    )
    page = login(approver).get(reverse("review", args=[action.pk])).content.decode()
    assert '<details class="snapshot">' in page  # closed: too long to show open
    assert 'data-filter="#snapshot-lines"' in page
    assert "4000 more fields not shown" in page
