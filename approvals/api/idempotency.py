"""Idempotency-Key handling, after the IETF draft and Stripe.

A request with a key runs in one transaction that first takes the key (a transaction-scoped
lock on agent and key), then looks for a stored answer, does its work and stores its answer
before it commits. A repeat with the same body gets that answer back; with another body, or
while the first still holds the key, 409 (each with its own problem type, so a client knows
which one it may retry). A request that dies rolls back and lets go of the key with it: no
claim is left behind to expire.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import Enum
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from approvals.models import IdempotencyRecord


class Claim(Enum):
    NEW = "new"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Claimed:
    claim: Claim
    agent_id: int
    key: str
    fingerprint: str
    record: IdempotencyRecord | None = None


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


def key_lock_id(agent_id: int, key: str) -> int:
    digest = hashlib.blake2b(f"{agent_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _take_key(agent_id: int, key: str) -> bool:
    """Hold the key until the transaction ends, unless another request holds it now."""
    if connection.vendor != "postgresql":
        # SQLite transactions begin IMMEDIATE (see settings): writers already take turns,
        # so the first request's answer is stored before a repeat can look for it.
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key_lock_id(agent_id, key)])
        return bool(cursor.fetchone()[0])


def idempotency_claim(*, agent_id: int, key: str, fingerprint: str) -> Claimed:
    """Take `key` for this transaction, or say why not. Call inside the transaction that
    will do the work and store the answer with `idempotency_complete`."""
    if not connection.in_atomic_block:
        raise RuntimeError("idempotency_claim must run inside the transaction that does the work")
    new = Claimed(Claim.NEW, agent_id, key, fingerprint)
    if not _take_key(agent_id, key):
        return replace(new, claim=Claim.IN_FLIGHT)
    record = IdempotencyRecord.objects.filter(agent_id=agent_id, key=key).first()
    if record is None:
        return new
    if record.request_hash != fingerprint:
        return replace(new, claim=Claim.MISMATCH, record=record)
    return replace(new, claim=Claim.REPLAY, record=record)


def stored_answer(claimed: Claimed, *, status: int, body: Any) -> IdempotencyRecord:
    """The record of the answer to a NEW claim (not saved)."""
    return IdempotencyRecord(
        agent_id=claimed.agent_id,
        key=claimed.key,
        request_hash=claimed.fingerprint,
        response_status=status,
        response_body=body,
    )


def idempotency_complete(*, claimed: Claimed, status: int, body: Any) -> IdempotencyRecord:
    """Store the answer to a NEW claim, in the transaction that did the work."""
    record = stored_answer(claimed, status=status, body=body)
    record.save(force_insert=True)
    return record


def idempotency_purge() -> int:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEEP_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
