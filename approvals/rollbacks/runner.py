"""Rollbacks: undo what agents did, newest first, through connectors, never through the agent.

A plan holds one step per executed action and target. Each step restores the target's
pre-action snapshot (the desk's own read of it where the desk took one when the action was
proposed, else the state the agent claimed), calls a compensating action, or, when neither is
possible, is a manual step for a person. Before a step the desk reads the target: if it no
longer reads what the action left (drift), the step waits for a person (skip, force, or edit
the state to restore). After a step it reads the target again and the step fails loudly
unless the target reads what was restored.

Execution: Celery tasks run a plan in batches. A batch is claimed under the plan's row lock
with a conditional update (pending -> running, with the worker's name and the time); a step
on a target is never claimed while an earlier step on that target is unfinished, so each
target is undone newest first however many workers run. Every write to a target carries the
step's Idempotency-Key (`rollback:<plan>:<position>`), so a step re-run after a worker died
applies nothing twice. A claimed step left running past ROLLBACK_LEASE_SECONDS belongs to a
worker that died: the next batch claims it again, and the sweep restarts plans that stalled.

Rollback calls are system actions: they are steps, not Actions, so agents never see them and
policies never count them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from approvals import live
from approvals.audit import Entry, audit_record_many
from approvals.models import Action, Connector, RollbackPlan, RollbackStep
from approvals.rollbacks.connectors import (
    ConnectorError,
    Context,
    compensation_expected,
    connector_call,
    connectors_for,
)
from approvals.rollbacks.control import settle_actions, settle_plan
from approvals.rollbacks.planning import NEEDS_A_PERSON, system_actor

S = Action.Status


M = RollbackStep.Method


T = RollbackStep.State


P = RollbackPlan.State


log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _target_key(step: RollbackStep) -> str:
    return step.target or f"action:{step.action_id}"


def _claim(plan_id: UUID | str, worker: str, size: int) -> list[RollbackStep]:
    """Take the next steps that may run now, under the plan's lock. When none can, settle the
    plan under that same lock (waiting for a person, failed or completed)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.ROLLBACK_LEASE_SECONDS)
    with transaction.atomic():
        plan = RollbackPlan.objects.select_for_update().filter(pk=plan_id).first()
        if plan is None or plan.state != P.RUNNING:
            return []
        steps = plan.steps.all()
        # A step whose worker died on it again and again is not tried forever.
        steps.filter(
            state=T.RUNNING, claimed_at__lt=stale, attempts__gte=settings.ROLLBACK_MAX_ATTEMPTS
        ).update(
            state=T.FAILED,
            finished_at=now,
            note=f"gave up: the worker running it stopped {settings.ROLLBACK_MAX_ATTEMPTS} times",
        )
        # Earliest unfinished step per target held elsewhere: later steps on it must wait.
        blocking: dict[str, int] = {}
        held = steps.filter(Q(state__in=NEEDS_A_PERSON) | Q(state=T.RUNNING, claimed_at__gte=stale))
        for target, action_id, position in held.values_list("target", "action_id", "position"):
            key = target or f"action:{action_id}"
            blocking[key] = min(position, blocking.get(key, position))
        candidates = steps.filter(
            Q(state=T.PENDING) | Q(state=T.RUNNING, claimed_at__lt=stale)
        ).order_by("position")
        chosen = []
        for step in candidates.iterator(chunk_size=max(size, 100)):
            key = _target_key(step)
            if blocking.get(key, step.position + 1) < step.position:
                continue
            chosen.append(step)
            if len(chosen) == size:
                break
        if not chosen:
            settle_plan(plan, nothing_claimable=True)
            return []
        steps.filter(pk__in=[s.pk for s in chosen]).update(
            state=T.RUNNING, claimed_by=worker, claimed_at=now, attempts=F("attempts") + 1
        )
        # What later steps on the same targets restore: after a worker died, a target may
        # already read one of them (the chain went further than was recorded).
        later: dict[str, list[Any]] = defaultdict(list)
        targets = {s.target for s in chosen if s.target}
        first = min(s.position for s in chosen)
        for target, restore in (
            steps.filter(target__in=targets, position__gt=first)
            .order_by("position")
            .values_list("target", "restore_state")
        ):
            later[target].append(restore)
    # What connectors need of each action, loaded once per action (snapshots stay behind:
    # the steps carry their own part of them).
    actions = (
        Action.objects.select_related("domain")
        .defer("pre_action_state", "desk_snapshot", "post_state", "compensation", "modified_params")
        .in_bulk({s.action_id for s in chosen})
    )
    for step in chosen:
        step.action = actions[step.action_id]
        step.later_restores = later.get(step.target, []) if step.target else []
    return chosen


@dataclass
class Outcome:
    state: str
    current: Any = None
    note: str = ""


def drifted(step: RollbackStep, current: Any) -> bool:
    """The target no longer reads what the action left: a person decides what happens."""
    return bool(current != step.expected_state)


def _undone(current: Any, expected: Any, *, partial: bool) -> bool:
    """Whether the target reads as undone: equal to the snapshot, or for a compensation
    with an `expect`, holding every field it names."""
    if partial and isinstance(expected, dict) and isinstance(current, dict):
        return all(current.get(k) == v for k, v in expected.items())
    return bool(current == expected)


def _execute(step: RollbackStep, connector: Connector | None) -> Outcome:
    """One step against its target: drift check, restore or compensate, verify."""
    if connector is None:
        return Outcome(
            T.FAILED, note=f"no connector for {step.action.tool} in {step.action.domain.slug}"
        )
    context = Context(action=step.action, target=step.target, key=step.idempotency_key)
    expected_after, partial = step.restore_state, False
    try:
        if step.method == M.COMPENSATE:
            expect = compensation_expected(connector, context)
            if expect is not None:
                expected_after, partial = expect, True
        current = connector_call(connector, "read", context)
        if not step.force and drifted(step, current):
            if _undone(current, expected_after, partial=partial):
                # Already undone: a worker that died after applying it, before recording it.
                return Outcome(T.DONE, current, "the target already read as undone")
            if step.method == M.RESTORE and any(current == s for s in step.later_restores):
                # ... and went on to older steps on this target before it died.
                return Outcome(T.DONE, current, "the target already reads an older snapshot")
            return Outcome(
                T.DRIFT,
                current,
                "the target changed since the action: it no longer reads what the action left",
            )
        if step.method == M.RESTORE:
            connector_call(connector, "restore", context, step.restore_state)
        else:
            connector_call(connector, "compensate", context)
        after = connector_call(connector, "read", context)
    except ConnectorError as exc:
        return Outcome(T.FAILED, note=str(exc))
    if not _undone(after, expected_after, partial=partial):
        return Outcome(
            T.FAILED,
            after,
            f"verification failed: after the {step.method} the "
            "target does not read the state it should",
        )
    return Outcome(T.DONE, after, "forced past drift" if step.force else "")


def _execute_group(
    steps: list[RollbackStep], connectors: dict[tuple[int, str], Connector]
) -> list[tuple[RollbackStep, Outcome | None]]:
    """Steps on one target, in order; after one that did not finish, the rest go back."""
    results: list[tuple[RollbackStep, Outcome | None]] = []
    stopped = False
    for step in steps:
        if stopped:
            results.append((step, None))
            continue
        outcome = _execute(step, connectors.get((step.action.domain_id, step.action.tool)))
        results.append((step, outcome))
        stopped = outcome.state != T.DONE
    return results


def _record(
    plan_id: UUID | str, worker: str, results: list[tuple[RollbackStep, Outcome | None]]
) -> None:
    """Write a batch's outcomes, for the steps this worker still holds (a step whose lease
    ran out may have been claimed again by another worker: its outcome is theirs to write)."""
    now = timezone.now()
    with transaction.atomic():
        plan = RollbackPlan.objects.select_for_update().get(pk=plan_id)
        steps = plan.steps.all()
        mine = set(
            steps.filter(
                pk__in=[s.pk for s, _ in results], state=T.RUNNING, claimed_by=worker
            ).values_list("pk", flat=True)
        )
        results = [(s, o) for s, o in results if s.pk in mine]
        released = [s.pk for s, o in results if o is None]
        steps.filter(pk__in=released).update(state=T.PENDING, claimed_by="", claimed_at=None)
        # Done steps in one statement per note; what a target read is kept for the others.
        done: dict[str, list[int]] = defaultdict(list)
        for step, outcome in results:
            if outcome is None:
                continue
            if outcome.state == T.DONE:
                done[outcome.note].append(step.pk)
            else:
                steps.filter(pk=step.pk).update(
                    state=outcome.state,
                    current_state=outcome.current,
                    note=outcome.note,
                    finished_at=now if outcome.state == T.FAILED else None,
                )
        for note, ids in done.items():
            steps.filter(pk__in=ids).update(state=T.DONE, note=note, finished_at=now)
        entries = [
            Entry(
                action=f"rollback.step_{outcome.state}",
                domain=step.action.domain.slug,
                object_type="action",
                object_id=step.action_id,
                summary=f"Rollback step {step.position}: {step.method} "
                f"{step.target or step.action.tool} {outcome.state}"
                + (f": {outcome.note}" if outcome.note else ""),
                data={
                    "plan": str(plan_id),
                    "position": step.position,
                    "key": step.idempotency_key,
                    "method": step.method,
                    "target": step.target,
                    "forced": step.force,
                },
            )
            for step, outcome in results
            if outcome is not None
        ]
        audit_record_many(actor=system_actor(plan), entries=entries)
        settle_actions(plan, list({s.action_id for s, o in results if o is not None}))
        plan.progress_at = now
        plan.save(update_fields=["progress_at"])
        live.rollback_changed(plan.pk)


def rollback_run(*, plan_id: UUID | str, budget_seconds: float | None = None) -> bool:
    """Run a plan's steps until none can run or the time budget is spent. Returns whether
    there is more to do (the caller queues another run). Safe to run twice, at once too."""
    worker = worker_name()
    budget = settings.ROLLBACK_TASK_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    connectors: dict[tuple[int, str], Connector] = {}
    size = settings.ROLLBACK_BATCH
    with (
        ThreadPoolExecutor(
            settings.ROLLBACK_CONCURRENCY, initializer=close_old_connections
        ) as pool,
        _Heartbeat(plan_id, worker),
    ):
        while time.monotonic() < deadline:
            steps = _claim(plan_id, worker, size)
            if not steps:
                return False
            missing = {s.action.domain_id for s in steps} - {d for d, _ in connectors}
            if missing:
                connectors.update(connectors_for(missing))
            groups: dict[str, list[RollbackStep]] = defaultdict(list)
            for step in steps:
                groups[_target_key(step)].append(step)
            results = [
                r
                for done in pool.map(lambda g: _execute_group(g, connectors), groups.values())
                for r in done
            ]
            _record(plan_id, worker, results)
    return True


class _Heartbeat:
    """Renews this worker's claims while it works: only a worker that stopped loses them."""

    def __init__(self, plan_id: UUID | str, worker: str) -> None:
        self.plan_id, self.worker = UUID(str(plan_id)), worker
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="rollback-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def run(self) -> None:
        try:
            while not self.stop.wait(settings.ROLLBACK_LEASE_SECONDS / 3):
                try:
                    RollbackStep.objects.filter(
                        plan_id=self.plan_id, state=T.RUNNING, claimed_by=self.worker
                    ).update(claimed_at=timezone.now())
                except DatabaseError:
                    log.exception("renewing rollback claims failed; trying again")
        finally:
            close_old_connections()


def rollbacks_stalled() -> list[str]:
    """Running plans with no progress for a lease: their worker died (or their task was lost)."""
    stale = timezone.now() - timedelta(seconds=settings.ROLLBACK_LEASE_SECONDS)
    return [
        str(pk)
        for pk in RollbackPlan.objects.filter(state=P.RUNNING, progress_at__lt=stale).values_list(
            "pk", flat=True
        )
    ]
