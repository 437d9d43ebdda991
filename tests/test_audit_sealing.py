"""Events are written with their change and sealed into the chain right after it commits."""

from __future__ import annotations

import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction

from approvals.audit import Actor, audit_record, audit_seal, audit_verify_chain, seal_after_commit
from approvals.models import AuditEvent


def record(action: str = "test.event") -> AuditEvent:
    return audit_record(actor=Actor.system("tests"), action=action)


@pytest.mark.django_db(transaction=True)
def test_event_is_sealed_when_its_transaction_commits() -> None:
    with transaction.atomic():
        event = record()
        assert AuditEvent.objects.get(pk=event.pk).seq is None
    event.refresh_from_db()
    assert event.seq == 1 and len(event.hash) == 64


@pytest.mark.django_db
def test_one_seal_per_transaction(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        record("a")
        record("b")
        record("c")
    assert callbacks == [seal_after_commit]


@pytest.mark.django_db
def test_a_rolled_back_savepoint_does_not_cancel_the_seal(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            record("doomed")
            1 / 0  # noqa: B018
        record("kept")
    assert callbacks == [seal_after_commit]
    assert list(AuditEvent.objects.values_list("action", "seq")) == [("kept", 1)]


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_form_one_unbroken_chain() -> None:
    threads, per_thread = 6, 20
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(per_thread):
                with transaction.atomic():
                    audit_record(
                        actor=Actor.system(f"writer-{n}"), action="test.event", data={"i": i}
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    seqs = sorted(AuditEvent.objects.values_list("seq", flat=True))
    assert seqs == list(range(1, threads * per_thread + 1))
    report = audit_verify_chain()
    assert report.intact and report.checked == threads * per_thread


@pytest.mark.django_db
def test_seal_takes_events_left_unsealed() -> None:
    # As if the process had died between commit and seal: the next seal picks them up.
    with transaction.atomic():
        record("a")
        record("b")
    assert audit_seal() == 2
    assert audit_seal() == 0
    assert audit_verify_chain().intact


@pytest.mark.django_db
def test_database_allows_sealing_but_no_other_change() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's; SQLite is the embedded demo store")
    with transaction.atomic():
        unsealed = record("a")
    table = AuditEvent._meta.db_table
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=unsealed.pk).update(summary="rewritten before sealing")
    audit_seal()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=unsealed.pk).update(seq=None)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"DELETE FROM {table}")
    assert audit_verify_chain().intact


@pytest.mark.django_db
def test_the_backstop_task_seals_what_was_left() -> None:
    from approvals.audit.tasks import audit_seal_task

    with transaction.atomic():
        record("left behind")
    audit_seal_task.apply()
    assert AuditEvent.objects.get().seq == 1
