"""Idempotency-Key handling, after the IETF draft and Stripe.

The first request with a key claims it (committed at once, so a concurrent duplicate sees the
claim); its answer is stored in the same transaction as the work it did. A repeat with the same
body gets that answer back; with another body, or while the first is still at work, 409 (each
with its own problem type, so a client knows which one it may retry).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.models import Agent, IdempotencyRecord
from incidentdesk.db import relax_durability

# A claim with no answer this old belongs to a request that died; another may take it over.
ABANDONED_AFTER = timedelta(seconds=60)


class Claim(Enum):
    NEW = "new"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Claimed:
    claim: Claim
    record: IdempotencyRecord


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


def idempotency_claim(*, agent: Agent, key: str, fingerprint: str) -> Claimed:
    try:
        with transaction.atomic():
            # The claim need not wait for its own flush to disk: the transaction that stores
            # the answer commits synchronously, and that flushes the claim before it.
            relax_durability()
            record = IdempotencyRecord.objects.create(
                agent=agent, key=key, request_hash=fingerprint
            )
        return Claimed(Claim.NEW, record)
    except IntegrityError:
        pass
    record = IdempotencyRecord.objects.get(agent=agent, key=key)
    if record.request_hash != fingerprint:
        return Claimed(Claim.MISMATCH, record)
    if record.response_status is not None:
        return Claimed(Claim.REPLAY, record)
    owner = uuid.uuid4()
    taken_over = IdempotencyRecord.objects.filter(
        pk=record.pk, response_status=None, created_at__lt=timezone.now() - ABANDONED_AFTER
    ).update(created_at=timezone.now(), owner=owner)
    if not taken_over:
        return Claimed(Claim.IN_FLIGHT, record)
    record.owner = owner
    return Claimed(Claim.NEW, record)


class ClaimLost(Exception):
    """The claim was taken over by another request while this one worked; its work must not stay."""


def idempotency_complete(*, record: IdempotencyRecord, status: int, body: Any) -> None:
    """Store the answer; call inside the transaction that did the work (ClaimLost rolls it back)."""
    stored = IdempotencyRecord.objects.filter(
        pk=record.pk, owner=record.owner, response_status=None
    ).update(response_status=status, response_body=body)
    if not stored:
        raise ClaimLost(record.key)
    record.response_status, record.response_body = status, body


def idempotency_release(*, record: IdempotencyRecord) -> None:
    """Forget a claim whose request was refused before doing anything, so it can be retried."""
    IdempotencyRecord.objects.filter(
        pk=record.pk, owner=record.owner, response_status=None
    ).delete()


def idempotency_purge() -> int:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEEP_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
