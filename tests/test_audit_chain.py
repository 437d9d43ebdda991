from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import DatabaseError, connection, transaction

from approvals.audit import (
    GENESIS_HASH,
    Actor,
    audit_record,
    audit_seal,
    audit_verify_chain,
    event_hash,
)
from approvals.models import AuditEvent

pytestmark = pytest.mark.django_db

TABLE = AuditEvent._meta.db_table


def record_many(count: int) -> list[AuditEvent]:
    events = []
    for n in range(count):
        with transaction.atomic():
            events.append(
                audit_record(
                    actor=Actor.system("tests"),
                    action="test.event",
                    domain="billing",
                    object_type="thing",
                    object_id=n,
                    summary=f"event {n}",
                    data={"n": n, "amount": "12.50", "nested": {"ok": True}},
                )
            )
    # Tests run inside a transaction that never commits, so seal as a commit would.
    audit_seal()
    return list(AuditEvent.objects.filter(id__in=[e.id for e in events]).order_by("seq"))


@contextmanager
def underneath() -> Iterator[None]:
    """Raw SQL below the application, as someone with database access would tamper.

    On PostgreSQL the append-only trigger has to be switched off first (inside the test's
    transaction, so it comes back when the test ends).
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER approvals_auditevent_append_only")
        yield
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER approvals_auditevent_append_only")


def sql(statement: str, params: list[object] | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def test_events_form_a_chain_from_genesis() -> None:
    events = record_many(3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    stored = AuditEvent.objects.values().get(seq=2)
    assert event_hash(stored) == events[1].hash


def test_intact_chain_verifies() -> None:
    record_many(5)
    report = audit_verify_chain(batch=2)
    assert report.intact
    assert report.checked == 5
    assert report.head_seq == 5


@pytest.mark.django_db(transaction=True)
def test_recording_outside_a_transaction_is_refused() -> None:
    # Without the caller's transaction, the event could commit without its change.
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_record(actor=Actor.system("tests"), action="test.event")


def test_event_rolls_back_with_its_change() -> None:
    record_many(1)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        audit_record(actor=Actor.system("tests"), action="test.doomed")
        1 / 0  # noqa: B018
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["test.event"]
    assert audit_verify_chain().intact


def test_edited_content_is_detected_at_that_event() -> None:
    record_many(5)
    with underneath():
        sql(f"UPDATE {TABLE} SET summary = 'nothing happened' WHERE seq = 3")
    report = audit_verify_chain(batch=2)
    assert not report.intact
    assert report.first_broken_seq == 3
    assert "altered" in report.problem
    assert report.checked == 2


def test_edited_data_is_detected() -> None:
    record_many(4)
    with underneath():
        AuditEvent.objects.filter(seq=2).update(data={"n": 1, "amount": "0.00"})
    report = audit_verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 2)


def test_edit_with_recomputed_hash_is_detected_at_the_next_event() -> None:
    record_many(5)
    forged = AuditEvent.objects.values().get(seq=3)
    forged["summary"] = "nothing happened"
    with underneath():
        AuditEvent.objects.filter(seq=3).update(summary=forged["summary"], hash=event_hash(forged))
    report = audit_verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 4
    assert "does not follow event #3" in report.problem


def test_deleted_event_is_detected() -> None:
    record_many(5)
    with underneath():
        sql(f"DELETE FROM {TABLE} WHERE seq = 2")
    report = audit_verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 2
    assert "#2 is missing" in report.problem


def test_deleted_first_event_is_detected() -> None:
    record_many(3)
    with underneath():
        sql(f"DELETE FROM {TABLE} WHERE seq = 1")
    report = audit_verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 1)


def test_reordered_events_are_detected() -> None:
    record_many(5)
    with underneath():
        # Swap the positions of events 2 and 4.
        sql(f"UPDATE {TABLE} SET seq = 1000 WHERE seq = 2")
        sql(f"UPDATE {TABLE} SET seq = 2 WHERE seq = 4")
        sql(f"UPDATE {TABLE} SET seq = 4 WHERE seq = 1000")
    report = audit_verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 2


def test_cut_off_tail_is_detected_against_an_earlier_head() -> None:
    record_many(5)
    earlier = audit_verify_chain()
    assert earlier.intact
    with underneath():
        sql(f"DELETE FROM {TABLE} WHERE seq >= 4")
    assert audit_verify_chain().intact, "a chain alone cannot see a cut-off tail"
    report = audit_verify_chain(expected_head=(earlier.head_seq, earlier.head_hash))
    assert not report.intact
    assert report.first_broken_seq == 4
    assert "earlier verification" in report.problem


def test_database_refuses_update_and_delete() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's; SQLite is the embedded demo store")
    record_many(2)
    for statement in (
        f"UPDATE {TABLE} SET summary = 'x' WHERE seq = 1",
        f"DELETE FROM {TABLE} WHERE seq = 2",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            sql(statement)
    assert audit_verify_chain().intact
