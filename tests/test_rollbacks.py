"""Rollbacks against a real HTTP target: restore, compensate, drift, manual steps, control."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from incidents.target import Target

from approvals.audit import Actor
from approvals.core import Refused
from approvals.models import Action, AuditEvent, RollbackPlan, RollbackStep
from approvals.rollbacks import (
    Selection,
    connector_save,
    plan_cancel,
    plan_confirm,
    plan_create,
    plan_pause,
    plan_resume,
    plan_start,
    rollback_run,
    step_resolve,
)
from tests.rollback_helpers import (
    executed,
    records_domain,
    records_token,
    run_plan,
    session_of,
)

pytestmark = pytest.mark.django_db
P, T, S = RollbackPlan.State, RollbackStep.State, Action.Status
IC = Actor("user", "cora-commander")


def test_restore_and_compensate_through_signed_keyed_http_calls(target: tuple[Target, str]) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    one = executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    many = executed(
        token,
        targets=["r2", "r3"],
        pre={"r2": {"v": 10}, "r3": {"v": 20}},
        post={"r2": {"v": 11}, "r3": {"v": 21}},
    )
    ordered = executed(
        token,
        tool="create_order",
        verb="create",
        targets=[],
        pre=None,
        post={"id": "o1", "status": "open"},
        result={"order_id": "o1"},
    )
    served.seed(
        {"r1": {"v": 2}, "r2": {"v": 11}, "r3": {"v": 21}, "o1": {"id": "o1", "status": "open"}}
    )

    plan = run_plan(session_of())

    assert plan.state == P.COMPLETED, list(plan.steps.values("state", "note"))
    # Newest first: the order (compensated), then the batch, then the first change.
    steps = list(plan.steps.order_by("position").values_list("target", "method", "state"))
    assert steps == [
        ("o1", "compensate", "done"),
        ("r2", "restore", "done"),
        ("r3", "restore", "done"),
        ("r1", "restore", "done"),
    ]
    assert served.data["records"] == {
        "r1": {"v": 1},
        "r2": {"v": 10},
        "r3": {"v": 20},
        "o1": {"id": "o1", "status": "cancelled"},
    }
    assert served.bad_signatures == 0
    assert sorted(served.applied) == sorted(f"rollback:{plan.pk}:{n}" for n in range(4))
    assert set(served.applied.values()) == {1}
    for action in (one, many, ordered):
        action.refresh_from_db()
        assert action.status == S.ROLLED_BACK and action.rolled_back_at is not None
    # System actions: audited as the rollback, not as any agent or person.
    done = AuditEvent.objects.filter(action="rollback.step_done")
    assert done.count() == 4
    assert set(done.values_list("actor_kind", "actor")) == {("system", f"rollback:{plan.pk}")}
    assert AuditEvent.objects.filter(action="action.rolled_back").count() == 3


def test_a_signature_the_target_refuses_fails_the_step_loudly(target: tuple[Target, str]) -> None:
    served, url = target
    domain = records_domain(url)
    connector_save(
        domain=domain,
        tool="set_record",
        kind="http",
        spec=_spec(url),
        secret="the-wrong-secret",
        actor=IC,
    )
    token = records_token()
    action = executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    served.seed({"r1": {"v": 2}})

    plan = run_plan(session_of())

    step = plan.steps.get()
    assert plan.state == P.FAILED and step.state == T.FAILED
    assert "answered 401" in step.note and "bad signature" in step.note
    assert served.data["records"]["r1"] == {"v": 2} and served.bad_signatures == 1
    action.refresh_from_db()
    assert action.status == S.ROLLBACK_FAILED


def _spec(url: str) -> dict[str, Any]:
    from incidents.target import connector_spec

    return connector_spec(url)


def test_drift_stops_the_step_for_a_person_who_skips_forces_or_edits(
    target: tuple[Target, str],
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    for name in ("a", "b", "c", "d"):
        executed(token, targets=[name], pre={"v": 1}, post={"v": 2})
    # A person changed three of them after the agent did.
    served.seed({"a": {"v": 2}, "b": {"v": 7}, "c": {"v": 8}, "d": {"v": 9}})

    plan = run_plan(session_of())

    assert plan.state == P.WAITING
    steps = {s.target: s for s in plan.steps.all()}
    assert steps["a"].state == T.DONE
    for name, now in (("b", 7), ("c", 8), ("d", 9)):
        assert steps[name].state == T.DRIFT and steps[name].current_state == {"v": now}
    assert served.data["records"]["b"] == {"v": 7}  # nothing written over a person's change

    step_resolve(step_id=steps["b"].pk, actor=IC, decision="skip", note="keep the manual fix")
    step_resolve(step_id=steps["c"].pk, actor=IC, decision="force")
    step_resolve(step_id=steps["d"].pk, actor=IC, decision="edit", state={"v": 5})
    while rollback_run(plan_id=plan.pk):
        pass

    plan.refresh_from_db()
    assert plan.state == P.COMPLETED
    assert served.data["records"] == {"a": {"v": 1}, "b": {"v": 7}, "c": {"v": 1}, "d": {"v": 5}}
    # The edit is a new write: under the step's first key the target would replay its answer.
    assert served.applied[f"{steps['d'].idempotency_key}:1"] == 1
    decisions = set(
        AuditEvent.objects.filter(action__startswith="rollback.step_")
        .exclude(action__in=["rollback.step_done", "rollback.step_drift"])
        .values_list("action", "actor")
    )
    assert decisions == {
        ("rollback.step_skip", "cora-commander"),
        ("rollback.step_force", "cora-commander"),
        ("rollback.step_edit", "cora-commander"),
    }
    with pytest.raises(Refused) as refused:
        step_resolve(step_id=steps["a"].pk, actor=IC, decision="force")
    assert refused.value.status == 409


def test_irreversible_actions_are_listed_as_manual_steps(target: tuple[Target, str]) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    wiped = executed(
        token,
        tool="wipe_record",
        verb="delete",
        targets=["w1"],
        pre=None,
        post=None,
        result={"wiped": True},
    )
    executed(token, tool="read_record", verb="read", targets=["r1"], pre=None, post=None)
    executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    served.seed({"r1": {"v": 2}})

    plan = run_plan(session_of())

    assert plan.total == 2  # the read changed nothing: no step for it
    manual = plan.steps.get(action=wiped)
    assert manual.method == "manual" and manual.state == T.MANUAL
    assert plan.state == P.WAITING and plan.steps.get(target="r1").state == T.DONE
    step_resolve(step_id=manual.pk, actor=IC, decision="done", note="restored from backup")
    plan.refresh_from_db()
    assert plan.state == P.COMPLETED
    wiped.refresh_from_db()
    assert wiped.status == S.ROLLED_BACK


def test_one_target_is_undone_newest_first(target: tuple[Target, str]) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    executed(token, targets=["r1"], pre={"v": 2}, post={"v": 3})
    served.seed({"r1": {"v": 3}})

    plan = run_plan(session_of())

    assert plan.state == P.COMPLETED
    assert served.data["records"]["r1"] == {"v": 1}
    assert served.writes == 2


def test_a_chain_on_one_target_left_half_done_by_a_dead_worker_is_not_drift(
    target: tuple[Target, str],
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    executed(token, targets=["r1"], pre={"v": 2}, post={"v": 3})
    # Both restores were applied before the worker died; neither outcome was recorded.
    served.seed({"r1": {"v": 1}})

    plan = run_plan(session_of())

    assert plan.state == P.COMPLETED, list(plan.steps.values_list("state", "note"))
    assert served.data["records"]["r1"] == {"v": 1} and served.writes == 0


def test_a_target_that_answers_503_is_retried_and_a_bad_restore_fails_verification(
    target: tuple[Target, str],
) -> None:
    served, url = target
    domain = records_domain(url)
    token = records_token()
    executed(token, targets=["r1"], pre={"v": 1}, post={"v": 2})
    served.seed({"r1": {"v": 2}})
    served.fail_next = 2  # max_attempts is 3
    assert run_plan(session_of()).state == P.COMPLETED
    assert served.data["records"]["r1"] == {"v": 1}

    # A restore that the target accepts but does not apply: verification catches it. (The
    # connector changes after the proposal, so the state to restore is not the one it reads.)
    executed(token, targets=["r9"], pre={"v": 1}, post={"v": 2}, session="run-2")
    connector_save(
        domain=domain,
        tool="set_record",
        kind="python",
        actor=IC,
        spec={"function": "tests.test_rollbacks.forgetful_connector"},
    )
    plan = run_plan(session_of(session="run-2"))
    step = plan.steps.get()
    assert plan.state == P.FAILED and step.state == T.FAILED
    assert "verification failed" in step.note and step.current_state == {"v": 2}
    step_resolve(step_id=step.pk, actor=IC, decision="skip")
    plan.refresh_from_db()
    assert plan.state == P.COMPLETED


def forgetful_connector(operation: str, *, target: str, state: Any, action: Any, key: str) -> Any:
    """A Python connector whose target never changes."""
    return {"v": 2} if operation == "read" else None


PYTHON_STORE: dict[str, Any] = {}


def store_connector(operation: str, *, target: str, state: Any, action: Any, key: str) -> Any:
    if operation == "read":
        return PYTHON_STORE.get(target)
    if operation == "restore":
        PYTHON_STORE[target] = state
    return None


def test_python_connectors_restore_in_process(target: tuple[Target, str]) -> None:
    _, url = target
    domain = records_domain(url)
    connector_save(
        domain=domain,
        tool="set_record",
        kind="python",
        actor=IC,
        spec={"function": "tests.test_rollbacks.store_connector"},
    )
    token = records_token()
    executed(token, targets=["p1"], pre={"v": 1}, post={"v": 2})
    PYTHON_STORE["p1"] = {"v": 2}
    assert run_plan(session_of()).state == P.COMPLETED
    assert PYTHON_STORE["p1"] == {"v": 1}
    with pytest.raises(Refused) as refused:
        connector_save(
            domain=domain,
            tool="set_record",
            kind="python",
            actor=IC,
            spec={"function": "tests.nowhere.nothing"},
        )
    assert refused.value.status == 422 and refused.value.field == "spec.function"
    with pytest.raises(Refused) as refused:
        connector_save(
            domain=domain,
            tool="set_record",
            kind="http",
            actor=IC,
            secret="s",
            spec={"restore": {"url": "/relative"}},
        )
    assert refused.value.field == "spec.read"
    with pytest.raises(Refused) as refused:
        connector_save(
            domain=domain,
            tool="set_record",
            kind="http",
            actor=IC,
            secret=" ",
            spec=_spec("http://127.0.0.1:9"),
        )
    assert refused.value.field == "secret"


def test_a_large_plan_needs_a_second_person(target: tuple[Target, str], settings: Any) -> None:
    served, url = target
    settings.ROLLBACK_CONFIRM_OVER = 2
    records_domain(url)
    token = records_token()
    for name in ("a", "b", "c"):
        executed(token, targets=[name], pre={"v": 1}, post={"v": 2})
    plan = plan_create(actor=IC, selection=session_of())
    plan_start(plan_id=plan.pk, actor=IC)
    plan.refresh_from_db()
    assert plan.state == P.AWAITING_CONFIRMATION
    assert rollback_run(plan_id=plan.pk) is False and served.writes == 0
    with pytest.raises(Refused) as refused:
        plan_confirm(plan_id=plan.pk, actor=IC)
    assert refused.value.status == 403
    plan_confirm(plan_id=plan.pk, actor=Actor("user", "ian-commander"))
    plan.refresh_from_db()
    assert plan.state == P.RUNNING and plan.confirmed_by == "ian-commander"


def test_pause_resume_and_cancel(target: tuple[Target, str]) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    for name in ("a", "b"):
        executed(token, targets=[name], pre={"v": 1}, post={"v": 2})
    served.seed({"a": {"v": 2}, "b": {"v": 2}})
    plan = plan_create(actor=IC, selection=session_of())
    plan_start(plan_id=plan.pk, actor=IC)
    plan_pause(plan_id=plan.pk, actor=IC)
    assert rollback_run(plan_id=plan.pk) is False
    assert served.writes == 0
    plan_resume(plan_id=plan.pk, actor=IC)
    while rollback_run(plan_id=plan.pk):
        pass
    assert served.data["records"] == {"a": {"v": 1}, "b": {"v": 1}}

    executed(token, targets=["c"], pre={"v": 1}, post={"v": 2}, session="run-2")
    second = plan_create(actor=IC, selection=session_of(session="run-2"))
    with pytest.raises(Refused):
        plan_cancel(plan_id=second.pk, actor=IC, reason=" ")
    plan_cancel(plan_id=second.pk, actor=IC, reason="wrong session")
    second.refresh_from_db()
    assert second.state == P.CANCELLED
    with pytest.raises(Refused) as refused:
        plan_start(plan_id=second.pk, actor=IC)
    assert refused.value.status == 409


def test_plans_refuse_bad_selections_and_actions_already_in_a_plan(
    target: tuple[Target, str],
) -> None:
    _, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    cases = [
        (Selection(scope="session", session="nobody"), 404, "session"),
        (Selection(scope="agent", agent="ghost"), 404, "agent"),
        (Selection(scope="domain", domain="nowhere"), 404, "domain"),
        (Selection(scope="actions"), 422, "actions"),
        (Selection(scope="everything"), 422, "scope"),
        (Selection(scope="session", session="clerk/no-such-run"), 404, "session"),
    ]
    for selection, status, field in cases:
        with pytest.raises(Refused) as refused:
            plan_create(actor=IC, selection=selection)
        assert (refused.value.status, refused.value.field) == (status, field), selection
    plan_create(actor=IC, selection=Selection(scope="domain", domain="records"))
    with pytest.raises(Refused) as refused:
        plan_create(actor=IC, selection=Selection(scope="agent", agent="clerk"))
    assert refused.value.status == 409
    assert RollbackPlan.objects.count() == 1


def test_only_incident_commanders_plan_and_run_rollbacks(
    target: tuple[Target, str],
    login: Any,
    viewer: Any,
    approver: Any,
    oncall: Any,
    commander: Any,
) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    served.seed({"a": {"v": 5}})
    form = {"scope": "session", "session": "clerk/run-1", "reason": "bad run"}
    for user in (viewer, approver, oncall):
        assert login(user).post(reverse("rollback-new"), form).status_code == 403
    assert RollbackPlan.objects.count() == 0
    client = login(commander)
    response = client.post(reverse("rollback-new"), form)
    plan = RollbackPlan.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("rollback", args=[plan.pk])
    # The steps, each target read now, drift marked.
    page = client.get(reverse("rollback-steps", args=[plan.pk]))
    assert page.status_code == 200 and "DRIFT" in page.content.decode()
    assert login(viewer).get(reverse("rollback", args=[plan.pk])).status_code == 200
    control = reverse("rollback-control", args=[plan.pk])
    assert login(viewer).post(control, {"verb": "start"}).status_code == 403
    client.post(control, {"verb": "start"})
    plan.refresh_from_db()
    assert plan.state == P.RUNNING and plan.started_by == commander.username
    bad = client.post(reverse("rollback-new"), {"scope": "actions", "actions": "not-an-id"})
    assert bad.status_code == 422 and "not an action id" in bad.content.decode()


def test_rollback_steps_are_not_agent_activity(target: tuple[Target, str]) -> None:
    served, url = target
    records_domain(url)
    token = records_token()
    executed(token, targets=["a"], pre={"v": 1}, post={"v": 2})
    served.seed({"a": {"v": 2}})
    before = Action.objects.count()
    run_plan(session_of())
    # No new action for any agent to see or any rate rule to count.
    assert Action.objects.count() == before
    assert not AuditEvent.objects.filter(actor_kind="agent", action__startswith="rollback.")
