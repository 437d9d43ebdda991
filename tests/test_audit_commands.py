from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from approvals.audit import Actor, audit_record, audit_seal, event_hash
from approvals.models import AuditEvent, ChainVerification
from tests.test_audit_chain import underneath

pytestmark = pytest.mark.django_db


def record_many(count: int) -> None:
    for n in range(count):
        with transaction.atomic():
            audit_record(actor=Actor.system("tests"), action="test.event", data={"n": n})
    audit_seal()


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("audit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_verify_reports_an_intact_chain() -> None:
    record_many(4)
    out, err = run("verify")
    assert "audit chain intact: 4 events, head #4" in out
    assert "verified 4 of 4 events" in err


def test_verify_names_the_first_broken_event() -> None:
    record_many(6)
    with underneath(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE seq = 4")
    with pytest.raises(CommandError, match=r"BROKEN at event #4: event #4 is missing"):
        run("verify")


def test_verify_sees_a_cut_tail_after_an_intact_run() -> None:
    record_many(5)
    ChainVerification.objects.create(
        requested_by="tests",
        state="intact",
        head_seq=5,
        head_hash=AuditEvent.objects.get(seq=5).hash,
    )
    with underneath(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE seq = 5")
    with pytest.raises(CommandError, match="BROKEN at event #5"):
        run("verify")


def test_export_writes_json_lines_a_reader_can_recheck(tmp_path) -> None:
    record_many(3)
    target = tmp_path / "audit.jsonl"
    _, err = run("export", "--output", str(target), "--action", "test.")
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert event_hash(line) == line["hash"]
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert "exported 3 events" in err
    assert AuditEvent.objects.filter(action="audit.exported", actor="cli").exists()


def test_export_rejects_a_time_without_zone() -> None:
    with pytest.raises(CommandError, match="--since: '2026-01-01T00:00' is not an ISO 8601"):
        run("export", "--since", "2026-01-01T00:00")
    assert not AuditEvent.objects.filter(action="audit.exported").exists()
