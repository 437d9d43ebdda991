from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from approvals.models import Action, Connector, Domain
from approvals.rollbacks.connectors import (
    ConnectorError,
    Context,
    connector_call,
    connector_supports,
)

log = logging.getLogger(__name__)


SNAPSHOT_THREADS = 8  # targets the desk reads at once for one proposal


def state_of(snapshot: Any, target: str, targets: list[str]) -> Any:
    """A target's part of a snapshot. An action on several targets keys its snapshots by
    target id; an action on one target (or none) snapshots that target whole."""
    if len(targets) > 1:
        return snapshot.get(target) if isinstance(snapshot, dict) else None
    return snapshot


def has_state(snapshot: Any, target: str, targets: list[str]) -> bool:
    if snapshot is None:
        return False
    if len(targets) > 1:
        return isinstance(snapshot, dict) and target in snapshot
    return True


@dataclass(frozen=True)
class Difference:
    """Where the agent's claim and the desk's read of one target disagree: the top-level
    fields that differ, or none named when either is not an object (the whole state differs)."""

    target: str
    fields: tuple[str, ...] = ()


def snapshot_differences(desk: Any, claim: Any, targets: list[str]) -> list[Difference]:
    """Per target, in order, where the agent's claimed pre-action state differs from the
    desk's read (both in the shape agents send: see `state_of`)."""
    missing = object()
    differences = []
    for target in targets or [""]:
        ours, theirs = state_of(desk, target, targets), state_of(claim, target, targets)
        if ours == theirs:
            continue
        fields: tuple[str, ...] = ()
        if isinstance(ours, dict) and isinstance(theirs, dict):
            keys = sorted(set(ours) | set(theirs))
            fields = tuple(k for k in keys if ours.get(k, missing) != theirs.get(k, missing))
        differences.append(Difference(target, fields))
    return differences


DIFFERENCES_AUDITED = 100  # targets named in a proposal's audit event; the count is whole


@dataclass(frozen=True)
class DeskRead:
    """The desk's own read of a proposal's targets and where the agent's claim differs from
    it; or, with a reason, no read at all."""

    snapshot: Any = None
    reason: str = ""  # why the desk has no read; empty when it read every target
    differences: tuple[Difference, ...] = ()

    @property
    def taken(self) -> bool:
        return not self.reason

    def audit_data(self) -> dict[str, Any]:
        if not self.taken:
            return {"desk_snapshot_missing": self.reason}
        data: dict[str, Any] = {"snapshot_differs": bool(self.differences)}
        if self.differences:
            data["snapshot_differs_on"] = {
                d.target: list(d.fields) for d in self.differences[:DIFFERENCES_AUDITED]
            }
            data["snapshot_differing_targets"] = len(self.differences)
        return data


def _no_read(verb: str, targets: list[str]) -> DeskRead | None:
    """Why the desk reads none of these targets, whatever connector the tool has."""
    cap = settings.DESK_SNAPSHOT_MAX_TARGETS
    if verb == "read":
        return DeskRead(reason="a read changes nothing: there is nothing to restore")
    if not targets:
        return DeskRead(reason="the proposal names no targets to read")
    if settings.DESK_SNAPSHOT_SECONDS <= 0:
        return DeskRead(reason="the desk takes no snapshots (DESK_SNAPSHOT_SECONDS is 0)")
    if len(targets) > cap:
        return DeskRead(reason=f"{len(targets)} targets: the desk reads at most {cap}")
    return None


def _no_connector(domain: Domain, tool: str) -> DeskRead:
    return DeskRead(reason=f"no connector reads the targets of {tool} in {domain.slug}")


def desk_read_unconnected(
    *, domain: Domain, tool: str, verb: str, target_ids: list[str]
) -> DeskRead:
    """What desk_snapshot_take gives a proposal when the domain has no connector for its tool
    (the caller has made sure of that)."""
    return _no_read(verb, [str(t) for t in target_ids]) or _no_connector(domain, tool)


def desk_snapshot_take(
    *,
    domain: Domain,
    tool: str,
    verb: str,
    target_ids: list[str],
    params: dict[str, Any],
    claim: Any,
) -> DeskRead:
    """Read a proposal's targets through the domain's connector for the tool, before anything
    is recorded (never inside a transaction), and compare the agent's claim with what it read.

    Never raises: without a connector that reads, over DESK_SNAPSHOT_MAX_TARGETS targets, or
    when a read fails or DESK_SNAPSHOT_SECONDS pass first, the desk has no read, and says why.
    A target that does not exist reads as null."""
    targets = [str(t) for t in target_ids]
    seconds = settings.DESK_SNAPSHOT_SECONDS
    unread = _no_read(verb, targets)
    if unread is not None:
        return unread
    connector = Connector.objects.filter(domain=domain, tool=tool).first()
    if connector is None or not connector_supports(connector, "read"):
        return _no_connector(domain, tool)
    # One attempt each, cut off a second after the deadline: no read outlives it by much, and
    # a target too slow for it is reported as such, not as a read that failed.
    bounded = copy.copy(connector)
    bounded.timeout_seconds = min(connector.timeout_seconds, seconds + 1)
    bounded.max_attempts = 1
    action = Action(domain=domain, tool=tool, verb=verb, params=params, target_ids=targets)
    try:
        states = _read_all(bounded, action, targets, seconds)
    except ConnectorError as exc:
        return DeskRead(reason=str(exc))
    snapshot = states if len(targets) > 1 else states[targets[0]]
    return DeskRead(snapshot, differences=tuple(snapshot_differences(snapshot, claim, targets)))


def _read_all(
    connector: Connector, action: Action, targets: list[str], seconds: float
) -> dict[str, Any]:
    def read(target: str) -> Any:
        context = Context(action=action, target=target, key=f"snapshot:{action.pk}")
        return connector_call(connector, "read", context)

    pool = ThreadPoolExecutor(min(SNAPSHOT_THREADS, len(targets)), "desk-snapshot")
    try:
        futures = [pool.submit(read, target) for target in targets]
        _, pending = wait(futures, timeout=seconds)
        if pending:
            unread = f"{len(pending)} of {len(targets)} targets"
            raise ConnectorError(f"{unread} were not read within {seconds:g} s")
        states: dict[str, Any] = {}
        for target, future in zip(targets, futures, strict=True):
            try:
                states[target] = future.result()
            except ConnectorError as exc:
                raise ConnectorError(f"reading {target} failed: {exc}") from exc
            except Exception as exc:
                log.warning("reading %s for a snapshot failed", target, exc_info=True)
                raise ConnectorError(f"reading {target} failed: {exc!r}") from exc
        return states
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
