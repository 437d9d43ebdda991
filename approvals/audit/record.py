"""The tamper-evident audit trail: recording, sealing, verifying and exporting events.

Each event's hash is SHA-256 over the previous event's hash and the event's canonical
content (sorted-key JSON of every field but the hash). Events are numbered without gaps, so
an edited, deleted, inserted or reordered event breaks the chain where it happened.

Recording and chaining are two steps, so that writers never wait on each other: an event is
inserted unsealed in the transaction of the change it records, and sealed into the chain
(numbered and hashed, under one lock) as soon as that transaction commits. A seal takes every
event committed so far, so under load one short transaction seals many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone

from approvals.core import model_from_row, sql_columns, sql_table
from approvals.models import AuditEvent
from incidentdesk.db import relax_durability

log = logging.getLogger(__name__)


GENESIS_HASH = "0" * 64


# Key of the PostgreSQL advisory lock that serializes sealing.
CHAIN_LOCK_KEY = 0x1D_A0D17


SEAL_BATCH = 5000


# How long a woken sealer waits for more commits to join its seal.
SEAL_GATHER_SECONDS = 0.1


CONTENT_FIELDS = [
    "created_at",
    "actor_kind",
    "actor",
    "action",
    "domain",
    "object_type",
    "object_id",
    "summary",
    "data",
]


@dataclass(frozen=True)
class Actor:
    kind: str
    name: str

    @classmethod
    def user(cls, user: Any) -> Actor:
        return cls(AuditEvent.ActorKind.USER, user.get_username())

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(AuditEvent.ActorKind.SYSTEM, name)


def canonical_content(event: dict[str, Any]) -> str:
    fields = {name: event[name] for name in ["seq", *CONTENT_FIELDS, "prev_hash"]}
    fields["created_at"] = timestamp_text(fields["created_at"])
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=DjangoJSONEncoder
    )


def event_hash(event: dict[str, Any]) -> str:
    payload = (event["prev_hash"] + canonical_content(event)).encode()
    return hashlib.sha256(payload).hexdigest()


def timestamp_text(value: datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Entry:
    """What one audit event says (audit_record_many takes a list of them)."""

    action: str
    domain: str = ""
    object_type: str = ""
    object_id: object = ""
    summary: str = ""
    data: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "domain": self.domain,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "summary": self.summary,
            "data": self.data,
        }

    def event(self, actor: Actor, at: datetime) -> AuditEvent:
        return AuditEvent(
            created_at=at,
            actor_kind=actor.kind,
            actor=actor.name,
            action=self.action,
            domain=self.domain,
            object_type=self.object_type,
            object_id=str(self.object_id),
            summary=self.summary[:500],
            # Stored as it will read back, so the hash can be recomputed from the row.
            data=json.loads(json.dumps(self.data or {}, cls=DjangoJSONEncoder)),
        )


def _in_the_change_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")


def audit_record(
    *,
    actor: Actor,
    action: str,
    domain: str = "",
    object_type: str = "",
    object_id: object = "",
    summary: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write an event inside the caller's transaction; it is sealed once that commits.

    It must run in the transaction that makes the change it records, so both commit or
    neither does.
    """
    _in_the_change_transaction()
    entry = Entry(action, domain, object_type, object_id, summary, data)
    event = entry.event(actor, timezone.now())
    event.save(force_insert=True)
    _seal_after_commit()
    return event


def audit_record_many(*, actor: Actor, entries: list[Entry]) -> None:
    """audit_record for many events of one actor at once (one INSERT), same rules."""
    _in_the_change_transaction()
    if not entries:
        return
    now = timezone.now()
    AuditEvent.objects.bulk_create([e.event(actor, now) for e in entries], batch_size=1000)
    _seal_after_commit()


def action_entry(
    *, action: Any, event: str, summary: str, data: dict[str, Any] | None = None
) -> Entry:
    """What an event about one proposed action (an approvals.models.Action) says."""
    return Entry(event, action.domain.slug, "action", action.pk, summary, data)


def audit_action_event(
    *, actor: Actor, action: Any, event: str, summary: str, data: dict[str, Any] | None = None
) -> AuditEvent:
    """An event about one proposed action (`action` is an approvals.models.Action)."""
    entry = action_entry(action=action, event=event, summary=summary, data=data)
    return audit_record(actor=actor, **entry.fields())


def _seal_after_commit() -> None:
    # One seal per transaction, however many events it recorded. (Django drops the callbacks
    # of a transaction or savepoint that rolls back, so this list is the pending truth.)
    if not any(entry[1] is seal_after_commit for entry in connection.run_on_commit):
        # robust: a failed seal must not fail the request whose change already committed;
        # the next seal, or the beat backstop, picks the events up.
        transaction.on_commit(seal_after_commit, robust=True)


def seal_after_commit() -> None:
    if _background is not None and connection.vendor == "postgresql":
        _background.wake()
    else:
        audit_seal(wait=False)


class BackgroundSealer:
    """Seals off the request path: commits wake it, and it seals whatever has gathered in
    SEAL_GATHER_SECONDS.

    One per process, started on first use (so it is started after a server forks its
    workers). It also looks every few seconds on its own, in case a wake-up was missed.
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.event = threading.Event()
        self.pid = 0
        self.thread: threading.Thread | None = None

    def wake(self) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.event = threading.Event()
            self.thread = threading.Thread(target=self.run, name="audit-sealer", daemon=True)
            self.thread.start()
        self.event.set()

    def run(self) -> None:
        while True:
            if self.event.wait(timeout=self.interval):
                # Let the commits of the next few milliseconds join this seal: under load one
                # short transaction seals many events, instead of one each.
                time.sleep(SEAL_GATHER_SECONDS)
            self.event.clear()
            try:
                audit_seal(wait=False)
            except (OperationalError, InterfaceError) as exc:
                # The database is restarting or unreachable: the next round seals the events.
                reason = str(exc).partition("\n")[0]
                log.warning("sealing audit events failed, retrying: %s", reason)
                time.sleep(1)
            except Exception:
                log.exception("sealing audit events failed; retrying")
                time.sleep(1)
            finally:
                close_old_connections()


_background: BackgroundSealer | None = None


def seal_in_background() -> None:
    """Web servers call this at start-up; elsewhere events are sealed right after commit."""
    global _background
    _background = _background or BackgroundSealer()


def _lock_chain(*, wait: bool) -> bool:
    """Take the sealing lock until the transaction ends; without `wait`, only if it is free."""
    if connection.vendor != "postgresql":
        # SQLite: transactions begin IMMEDIATE (see settings), so this one already holds the
        # database's single write lock.
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def audit_seal(*, wait: bool = True) -> int:
    """Seal every committed, unsealed event into the chain, oldest first. Returns how many.

    Safe to call any time from any process. Without `wait` it gives up when another sealer
    holds the lock: nothing is left behind, because every sealer looks again after each
    commit and stops only when it finds nothing, or finds the lock taken by a sealer that
    will look again after its own commit.
    """
    sealed = 0
    while True:
        with transaction.atomic():
            if not _lock_chain(wait=wait):
                return sealed
            # A seal lost in a crash is redone by the next one, identically: same events, same
            # order. So its commit need not wait for the disk.
            relax_durability()
            _walk_the_unsealed_index()
            count = _seal_batch()
        sealed += count
        if count == 0:
            return sealed


def _walk_the_unsealed_index() -> None:
    """Read the unsealed events through their partial index one entry at a time (PostgreSQL).

    Sealing updates each event, which leaves its old, unsealed version behind in the index
    until a vacuum. A bitmap scan, which the planner likes here, visits every one of those
    each time (7 ms per seal after 26,000 events); an index scan marks them dead as it passes,
    so the next seal skips them."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_bitmapscan = off")


def _seal_batch() -> int:
    # Plain SQL: a seal runs many times a second under load, and compiling these two
    # querysets cost more than running them.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sql_columns(AuditEvent, 'e')} FROM {sql_table(AuditEvent)} e "
            "WHERE e.seq IS NULL ORDER BY e.id LIMIT %s",
            [SEAL_BATCH],
        )
        events = [model_from_row(AuditEvent, row) for row in cursor.fetchall()]
        if not events:
            return 0
        cursor.execute(
            f"SELECT seq, hash FROM {sql_table(AuditEvent)} "
            "WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
        )
        last = cursor.fetchone()
    pending = [{"id": e.id, **{name: getattr(e, name) for name in CONTENT_FIELDS}} for e in events]
    seq: int = last[0] if last else 0
    prev_hash: str = last[1] if last else GENESIS_HASH
    updates = []
    for row in pending:
        seq += 1
        row.update(seq=seq, prev_hash=prev_hash)
        prev_hash = event_hash(row)
        updates.append(
            AuditEvent(id=row["id"], seq=seq, prev_hash=row["prev_hash"], hash=prev_hash)
        )
    if connection.vendor == "postgresql":
        # One statement for the batch (bulk_update's CASE expressions cost far more).
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {AuditEvent._meta.db_table} AS e "
                "SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[]) "
                "AS v(id, seq, prev_hash, hash) WHERE e.id = v.id",
                [
                    [u.id for u in updates],
                    [u.seq for u in updates],
                    [u.prev_hash for u in updates],
                    [u.hash for u in updates],
                ],
            )
    else:
        AuditEvent.objects.bulk_update(updates, ["seq", "prev_hash", "hash"], batch_size=1000)
    return len(updates)
