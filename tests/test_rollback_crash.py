"""A worker killed with SIGKILL in the middle of a plan: another picks the plan up, every target
ends restored, and the target applied each idempotency key once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from incidents.target import Target

from approvals.audit import Actor
from approvals.models import Action, RollbackPlan, RollbackStep
from approvals.rollbacks import plan_create, plan_start
from tests.rollback_helpers import executed, records_domain, records_token, session_of
from tests.servers import server_env, start_worker, stop_group

pytestmark = pytest.mark.django_db(transaction=True)
ACTIONS, TARGETS_EACH = 30, 10
IC = Actor("user", "cora-commander")


def done_steps(plan: RollbackPlan) -> int:
    return plan.steps.filter(state=RollbackStep.State.DONE).count()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_killed_worker_loses_nothing_and_applies_nothing_twice(
    target: tuple[Target, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not settings.REDIS_URL:
        pytest.skip("killing a worker process needs the production layout: run with REDIS_URL")
    from incidentdesk.celery import app

    served, url = target
    served.write_delay = 0.03  # slow enough to kill the worker mid-plan
    records_domain(url)
    token = records_token()
    original = {}
    for n in range(ACTIONS):
        targets = [f"r{n}-{i}" for i in range(TARGETS_EACH)]
        pre = {t: {"v": 1, "name": t} for t in targets}
        post = {t: {"v": 2, "name": t} for t in targets}
        executed(token, targets=targets, pre=pre, post=post)
        original.update(pre)
        served.seed(post)

    queue = f"rollback-crash-{os.getpid()}"
    monkeypatch.setitem(app.conf, "task_default_queue", queue)
    env = server_env(
        CELERY_QUEUE=queue,
        ROLLBACK_LEASE_SECONDS="3",
        ROLLBACK_TASK_SECONDS="2",
        ROLLBACK_CONCURRENCY="2",
        ROLLBACK_BATCH="20",
        ESCALATION_SWEEP_SECONDS="1",
    )
    first = start_worker(tmp_path / "worker-1.log", env, queue, tmp_path)
    second = None
    try:
        plan = plan_create(actor=IC, selection=session_of())
        assert plan.total == ACTIONS * TARGETS_EACH
        plan_start(plan_id=plan.pk, actor=IC)
        plan.refresh_from_db()
        assert plan.state == RollbackPlan.State.AWAITING_CONFIRMATION  # over the size limit
        from approvals.rollbacks import plan_confirm

        plan_confirm(plan_id=plan.pk, actor=Actor("user", "ian-commander"))

        running = plan.steps.filter(state=RollbackStep.State.RUNNING)
        wait_for(
            lambda: done_steps(plan) >= 60 and running.exists(),
            60,
            "the first worker to undo 60 steps and be in the middle of a batch",
        )
        stop_group(first, signal.SIGKILL)  # the worker and its beat, without warning
        killed_at, done_at_kill = time.monotonic(), done_steps(plan)
        assert done_at_kill < plan.total, "the plan finished before the worker was killed"
        in_flight = running.count()
        assert in_flight > 0

        second = start_worker(tmp_path / "worker-2.log", env, queue, tmp_path)
        wait_for(
            lambda: done_steps(plan) > done_at_kill + in_flight,
            60,
            "another worker to pick the plan up",
        )
        picked_up = time.monotonic() - killed_at
        wait_for(
            lambda: RollbackPlan.objects.get(pk=plan.pk).state == RollbackPlan.State.COMPLETED,
            120,
            "the plan to complete",
        )
    finally:
        for process in (first, second):
            if process is not None:
                stop_group(process)

    assert served.data["records"] == original
    assert len(served.applied) == plan.total
    assert set(served.applied.values()) == {1}, "a key was applied twice"
    assert Action.objects.filter(status=Action.Status.ROLLED_BACK).count() == ACTIONS
    print(
        f"killed with {done_at_kill} of {plan.total} done and {in_flight} in flight; "
        f"picked up again after {picked_up:.1f} s"
    )
