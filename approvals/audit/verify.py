from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import (
    transaction,
)
from django.db.models import Q
from django.utils import timezone

from approvals import live
from approvals.audit.record import GENESIS_HASH, Actor, audit_record, audit_seal, event_hash
from approvals.models import AuditEvent, ChainVerification
from incidentdesk.celery import enqueue_on_commit

# Task names stay as they were when every task lived in approvals/tasks.py: messages
# already queued (timers waiting for their time, retries) carry them.
VERIFY_TASK = "approvals.tasks.audit_verify_task"


# A verification with no end this long after it started lost its worker (the broker
# redelivers its task after CELERY_VISIBILITY_TIMEOUT, 5 minutes by default).
VERIFICATION_ABANDONED = timedelta(minutes=4)


@dataclass
class ChainReport:
    intact: bool
    checked: int
    total: int
    head_seq: int | None = None
    head_hash: str = ""
    first_broken_seq: int | None = None
    problem: str = ""


def audit_verify_chain(
    *,
    batch: int | None = None,
    expected_head: tuple[int, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChainReport:
    """Walk the chain from the first event and name the first one that breaks it.

    `expected_head` is a (seq, hash) an earlier run found intact: if it is gone, events were
    cut off the end. `progress(checked, total)` is called after every batch.
    """
    batch = batch or settings.AUDIT_VERIFY_BATCH
    audit_seal()
    total = AuditEvent.objects.exclude(seq=None).count()
    report = ChainReport(intact=True, checked=0, total=total)
    prev_seq, prev_hash = 0, GENESIS_HASH
    columns = [f.attname for f in AuditEvent._meta.concrete_fields]
    while True:
        rows = list(
            AuditEvent.objects.filter(seq__gt=prev_seq).order_by("seq").values(*columns)[:batch]
        )
        for row in rows:
            problem = _link_problem(row, prev_seq, prev_hash)
            if problem:
                report.intact = False
                report.first_broken_seq = row["seq"] if row["seq"] == prev_seq + 1 else prev_seq + 1
                report.problem = problem
                return report
            prev_seq, prev_hash = row["seq"], row["hash"]
            report.checked += 1
        if progress is not None:
            progress(report.checked, total)
        if len(rows) < batch:
            break
    report.head_seq, report.head_hash = (prev_seq, prev_hash) if prev_seq else (None, "")
    if expected_head is not None:
        seq, digest = expected_head
        if prev_seq < seq:
            report.intact = False
            report.first_broken_seq = prev_seq + 1
            report.problem = (
                f"event #{prev_seq + 1} is missing: the chain ends at #{prev_seq}, "
                f"but an earlier verification saw it reach #{seq}"
            )
        elif not AuditEvent.objects.filter(seq=seq, hash=digest).exists():
            report.intact = False
            report.first_broken_seq = seq
            report.problem = f"event #{seq} differs from the one an earlier verification saw"
    return report


def _link_problem(row: dict[str, Any], prev_seq: int, prev_hash: str) -> str:
    seq = row["seq"]
    if seq != prev_seq + 1:
        return f"event #{prev_seq + 1} is missing (#{prev_seq} is followed by #{seq})"
    if row["prev_hash"] != prev_hash:
        before = f"event #{prev_seq}" if prev_seq else "the start of the chain"
        return f"event #{seq} does not follow {before}: its previous-hash does not match"
    if event_hash(row) != row["hash"]:
        return f"event #{seq} was altered: its content does not match its hash"
    return ""


def last_intact_head() -> tuple[int, str] | None:
    last = (
        ChainVerification.objects.filter(state=ChainVerification.State.INTACT)
        .exclude(head_seq=None)
        .order_by("-head_seq")
        .values_list("head_seq", "head_hash")
        .first()
    )
    if last is None or last[0] is None:
        return None
    return last[0], last[1]


@transaction.atomic
def verification_request(*, actor: Actor) -> ChainVerification:
    """Queue a verification run; a Celery task does the work and pushes its progress."""

    verification = ChainVerification.objects.create(
        requested_by=actor.name, total=AuditEvent.objects.exclude(seq=None).count()
    )
    audit_record(
        actor=actor,
        action="audit.verification_requested",
        object_type="chain_verification",
        object_id=verification.pk,
        summary="Audit chain verification requested",
    )
    live.audit_verification_changed(verification.pk)
    enqueue_on_commit(VERIFY_TASK, verification.pk)
    return verification


def verification_run(*, verification_id: int) -> ChainVerification | None:
    """Run a queued verification. Returns None if another worker already claimed it.

    A run still marked running long after it started belonged to a worker that died; the
    redelivered task takes it over.
    """
    State = ChainVerification.State
    abandoned = Q(state=State.RUNNING, started_at__lt=timezone.now() - VERIFICATION_ABANDONED)
    claimed = ChainVerification.objects.filter(
        Q(state=State.QUEUED) | abandoned, id=verification_id
    ).update(state=State.RUNNING, started_at=timezone.now())
    if not claimed:
        return None
    verification = ChainVerification.objects.get(id=verification_id)

    def progress(checked: int, total: int) -> None:
        verification.checked, verification.total = checked, total
        verification.save(update_fields=["checked", "total"])
        live.send(live.AUDIT_GROUP, live.AUDIT_VERIFICATION, verification_id=verification.pk)

    try:
        report = audit_verify_chain(expected_head=last_intact_head(), progress=progress)
    except Exception as exc:
        with transaction.atomic():
            verification.state = State.FAILED
            verification.problem = f"verification stopped: {exc}"
            verification.finished_at = timezone.now()
            verification.save(update_fields=["state", "problem", "finished_at"])
            audit_record(
                actor=Actor.system("audit-verifier"),
                action="audit.verification_failed",
                object_type="chain_verification",
                object_id=verification.pk,
                summary=verification.problem,
            )
            live.audit_verification_changed(verification.pk)
        raise
    with transaction.atomic():
        verification.state = State.INTACT if report.intact else State.BROKEN
        verification.checked, verification.total = report.checked, report.total
        verification.head_seq, verification.head_hash = report.head_seq, report.head_hash
        verification.first_broken_seq = report.first_broken_seq
        verification.problem = report.problem
        verification.finished_at = timezone.now()
        verification.save()
        # A broken chain is itself an event worth keeping, but it is appended to the chain
        # being reported on: the report above was taken before it.
        audit_record(
            actor=Actor.system("audit-verifier"),
            action="audit.chain_intact" if report.intact else "audit.chain_broken",
            object_type="chain_verification",
            object_id=verification.pk,
            summary=report.problem or f"{report.checked} events verified",
            data={"checked": report.checked, "first_broken_seq": report.first_broken_seq},
        )
        live.audit_verification_changed(verification.pk)
    return verification


def latest_verification() -> ChainVerification | None:
    return ChainVerification.objects.first()
