"""The desk's own snapshot of a proposal's targets: recorded next to the agent's claim, shown
beside it on the review page, restored by rollbacks, and never a reason for a slow proposal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse
from incidents.target import Target

from approvals.audit import Actor
from approvals.models import Action, AuditEvent
from approvals.queue import JsonPart, json_parts
from approvals.rollbacks import (
    RESTORES_AGENT_CLAIM,
    RESTORES_DESK_READ,
    Difference,
    connector_save,
    desk_snapshot_take,
    plan_create,
    plan_start,
    rollback_run,
    snapshot_differences,
)
from tests.agents import agent_token, call, propose
from tests.rollback_helpers import (
    SECRET,
    executed,
    records_domain,
    records_token,
    run_plan,
    session_of,
)
from tests.servers import Desk, free_port

Login = Callable[[AbstractUser], Client]
IC = Actor("user", "cora-commander")
# Key order as PostgreSQL's jsonb keeps it (shorter keys first), so the page reads the same.
REAL = {
    "acct-1": {"id": "acct-1", "plan": "pro", "discount_rate": 0.1},
    "acct-2": {"id": "acct-2", "plan": "standard", "discount_rate": 0.0},
}
# The agent hides acct-1's discount: were it restored, acct-1 would lose the discount it had.
CLAIM = {**REAL, "acct-1": {**REAL["acct-1"], "discount_rate": 0.0}}
CHANGED = {t: {**state, "discount_rate": 0.5} for t, state in REAL.items()}


@pytest.mark.django_db(transaction=True)
def test_a_lying_claim_is_recorded_shown_and_a_rollback_restores_what_the_desk_read(
    desk: Desk, target: tuple[Target, str], login: Login, viewer: AbstractUser
) -> None:
    served, url = target
    records_domain(url)
    served.seed(REAL)
    token = agent_token("clerk", "records", "set_record:update")
    body = {
        "session_id": "run-1",
        "tool": "set_record",
        "verb": "update",
        "params": {"discount_rate": 0.5},
        "target_ids": ["acct-1", "acct-2"],
        "pre_action_state": CLAIM,
    }

    reply = propose(desk, token, body)

    assert reply.status == 201 and reply.json()["status"] == "allowed", reply.json()
    action = Action.objects.get(pk=reply.json()["id"])
    assert action.pre_action_state == CLAIM  # the agent's word is kept as it was sent
    assert action.desk_snapshot == REAL and action.snapshot_differs is True
    event = AuditEvent.objects.get(action="action.allowed", object_id=str(action.pk))
    assert event.data["snapshot_differs"] is True
    assert event.data["snapshot_differs_on"] == {"acct-1": ["discount_rate"]}

    page = login(viewer).get(reverse("review", args=[action.pk])).content.decode()
    assert 'id="snapshot-differs"' in page and "on 1 target." in page
    assert "differs in <code>discount_rate</code>" in page
    # Pretty-printed JSON, the differing field marked on both sides, never a Python repr.
    assert '<span class="differs">  &quot;discount_rate&quot;: 0.0</span>' in page
    assert '<span class="differs">  &quot;discount_rate&quot;: 0.1</span>' in page
    assert "<span>  &quot;plan&quot;: &quot;standard&quot;,</span>" in page
    assert "{&#x27;" not in page and "&#x27;discount_rate&#x27;" not in page

    served.seed(CHANGED)  # the agent ran the call
    result = {"ok": True, "result": {"updated": 2}, "post_state": CHANGED}
    reported = call(desk, token, "POST", f"/actions/{action.pk}/result", result)
    assert reported.status == 200, reported.json()
    plan = run_plan(session_of("clerk"))

    assert plan.state == "completed", list(plan.steps.values_list("state", "note"))
    assert served.data["records"] == REAL  # acct-1 keeps the discount the agent hid
    planned = AuditEvent.objects.get(action="rollback.planned", object_id=str(plan.pk))
    assert planned.data["restores_desk_read"] == 2 and planned.data["restores_agent_claim"] == 0


@pytest.mark.django_db
def test_rollbacks_restore_the_desks_read_and_the_claim_only_where_the_desk_has_none(
    target: tuple[Target, str],
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    served.seed({"r1": {"v": 1}})
    lied = executed(token, targets=["r1"], pre={"v": 7}, post={"v": 2})
    # r2 does not exist yet when proposed: the desk reads it as absent, nothing to restore.
    unread = executed(token, targets=["r2"], pre={"v": 5}, post={"v": 6})
    served.seed({"r1": {"v": 2}, "r2": {"v": 6}})
    assert lied.desk_snapshot == {"v": 1} and lied.snapshot_differs is True
    assert unread.desk_snapshot is None and unread.snapshot_differs is True

    plan = plan_create(actor=IC, selection=session_of())
    steps = {s.target: (s.method, s.restore_state, s.note) for s in plan.steps.all()}
    assert steps == {
        "r1": ("restore", {"v": 1}, RESTORES_DESK_READ),
        "r2": ("restore", {"v": 5}, RESTORES_AGENT_CLAIM),
    }
    plan_start(plan_id=plan.pk, actor=IC)
    while rollback_run(plan_id=plan.pk):
        pass

    plan.refresh_from_db()
    assert plan.state == "completed", list(plan.steps.values_list("state", "note"))
    assert served.data["records"] == {"r1": {"v": 1}, "r2": {"v": 5}}


@pytest.mark.django_db
def test_a_target_that_hangs_past_the_deadline_leaves_no_snapshot_quickly_and_the_page_says_why(
    target: tuple[Target, str], settings: Any, login: Login, viewer: AbstractUser
) -> None:
    served, url = target
    records_domain(url)
    served.seed(REAL)
    served.read_delay = 3
    settings.DESK_SNAPSHOT_SECONDS = 1

    started = time.monotonic()
    action = executed(records_token(), targets=["acct-1", "acct-2"], pre=CLAIM, post=CHANGED)
    took = time.monotonic() - started

    assert took < 2.5, f"the proposal waited {took:.1f} s for a target that hangs"
    assert action.desk_snapshot is None and action.snapshot_differs is False
    event = AuditEvent.objects.get(action="action.allowed", object_id=str(action.pk))
    assert event.data["desk_snapshot_missing"] == "2 of 2 targets were not read within 1 s"
    assert "snapshot_differs" not in event.data
    page = login(viewer).get(reverse("review", args=[action.pk])).content.decode()
    assert 'id="snapshot-unread"' in page and "2 of 2 targets were not read within 1 s" in page
    assert 'id="snapshot-compare"' not in page


@pytest.mark.django_db
def test_the_read_is_bounded_and_never_raises(target: tuple[Target, str], settings: Any) -> None:
    served, url = target
    domain = records_domain(url)
    served.seed(REAL)
    targets = ["acct-1", "acct-2"]

    def take(tool: str = "set_record", verb: str = "update", ids: list[str] = targets) -> Any:
        return desk_snapshot_take(
            domain=domain, tool=tool, verb=verb, target_ids=ids, params={}, claim=CLAIM
        )

    def read_from(base: str) -> None:
        spec = {"read": {"method": "GET", "url": base + "/records/{target}"}}
        connector_save(
            domain=domain,
            tool="set_record",
            kind="http",
            spec=spec,
            secret=SECRET,
            actor=Actor.system("tests"),
        )

    read = take()
    assert read.taken and read.snapshot == REAL
    assert read.differences == (Difference("acct-1", ("discount_rate",)),)
    assert take(ids=["acct-1"]).snapshot == REAL["acct-1"]  # one target: its state whole
    assert take(ids=["acct-9"]).taken and take(ids=["acct-9"]).snapshot is None  # absent

    reads = served.reads
    settings.DESK_SNAPSHOT_MAX_TARGETS = 1
    assert take().reason == "2 targets: the desk reads at most 1"
    settings.DESK_SNAPSHOT_MAX_TARGETS = 500
    assert take(tool="wipe_record").reason == (
        "no connector reads the targets of wipe_record in records"
    )
    assert take(verb="read").snapshot is None and not take(verb="read").taken
    assert take(ids=[]).reason == "the proposal names no targets to read"
    assert served.reads == reads  # none of these asked the target anything

    read_from(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    failed = take()
    assert failed.snapshot is None and failed.reason.startswith("reading acct-1 failed: ")

    read_from(url)
    served.read_delay = 3
    settings.DESK_SNAPSHOT_SECONDS = 1
    started = time.monotonic()
    slow = take()
    assert time.monotonic() - started < 1.5
    assert slow.snapshot is None and slow.reason == "2 of 2 targets were not read within 1 s"


def test_differences_are_per_target_and_per_top_level_field() -> None:
    many = ["a", "b", "c", "d"]
    desk = {"a": {"x": 1, "y": [1]}, "b": {"x": 1}, "c": None, "d": {"x": 1}}
    claim = {"a": {"x": 1, "y": [2], "z": 0}, "b": {"x": 1}, "c": {"x": 1}, "d": 5, "e": {}}
    assert snapshot_differences(desk, claim, many) == [
        Difference("a", ("y", "z")),
        Difference("c"),  # absent by the desk's read, present by the claim: the whole state
        Difference("d"),
    ]
    # A target the claim leaves out differs whole; keys of no target are no one's business.
    assert snapshot_differences(desk, {k: v for k, v in desk.items() if k != "b"}, many) == [
        Difference("b")
    ]
    # One target: the snapshot is its state whole.
    assert snapshot_differences({"x": 1}, {"x": 2}, ["a"]) == [Difference("a", ("x",))]
    assert snapshot_differences({"x": 1}, {"x": 1}, ["a"]) == []
    assert snapshot_differences({"x": 1}, None, ["a"]) == [Difference("a")]
    assert snapshot_differences(desk, desk, many) == []


def test_the_review_page_shows_each_side_as_indented_json_marking_what_differs() -> None:
    state = {"id": "a", "tags": ["x", "y"], "owner": {"name": "kim"}, "n": None}
    parts = json_parts(state, {"tags"}, whole=False)
    assert "\n".join(p.text for p in parts) == json.dumps(state, indent=2)
    assert [p.text.split(":")[0].strip() for p in parts if p.differs] == ['"tags"']
    assert json_parts(None, set(), whole=True) == [JsonPart("null", True)]
    assert json_parts({}, set(), whole=False) == [JsonPart("{}", False)]
