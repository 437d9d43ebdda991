"""`POST /api/v1/actions` in two round trips to PostgreSQL, for the proposals where nothing
unusual happens.

The service path (`action_propose`) sends a dozen ORM queries, each compiled in Python, and its
transaction stays open between them. Most proposals are the plain case: a new Idempotency-Key,
a session the agent has used before, no connector for the tool, no kill switch engaged, the
agent not quarantined, the policy version this process already holds, and a verdict of allow or
deny. For those, this module talks to psycopg directly:

1. one pipelined round trip opens the transaction, takes the key's lock, the switches' shared
   locks and the agent's row lock, and reads every fact the verdict depends on;
2. the verdict comes from the same engine (`decide`) on the same facts;
3. a second round trip inserts the action, its audit event and the key's stored answer, and
   commits.

When anything else is the case it rolls back and returns None, and the caller takes the service
path, which decides every case (and audits refusals). The action, the event and the answer are
built by the service path's own functions, so both paths write the same rows; the tests check it
on generated proposals.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from django.db import connection
from django.utils import timezone

from approvals.agents import token_allows
from approvals.api.idempotency import Claim, Claimed, key_lock_id, stored_answer
from approvals.api.proposals import (
    ProposalData,
    Proposed,
    action_verdict,
    agent_actor,
    call_claim,
    proposal_entry,
    proposed_action,
)
from approvals.audit import seal_after_commit
from approvals.core import model_from_row, sql_columns, sql_insert, sql_table
from approvals.models import (
    Action,
    Agent,
    AgentSession,
    AgentToken,
    Connector,
    IdempotencyRecord,
    KillSwitch,
    PolicyVersion,
    ReasoningStep,
)
from approvals.policy import (
    ClaimRefused,
    Facts,
    NewestPolicy,
    decide,
    policy_newest,
    proposal_from,
    rate_windows,
    rolled_back_on,
)
from approvals.rollbacks import desk_read_unconnected

log = logging.getLogger(__name__)

# The newest policy version this process has seen, per domain id. Every proposal checks it is
# still the newest, in its first round trip.
_policies: dict[int, NewestPolicy] = {}


class _ServicePath(Exception):
    """This proposal is not the plain case: roll back and let action_propose decide it."""


def propose_lean(
    *, token: AgentToken, data: ProposalData, key: str, fingerprint: str
) -> Proposed | None:
    """action_propose for the plain case (see the module), or None to take the service path.
    Call it outside any transaction, on PostgreSQL."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return None
    held = _policies.get(token.domain_id)
    if held is None:
        # Learned for the next proposal; this one takes the service path.
        newest = policy_newest(token.domain_id)
        if newest is not None:
            _policies[token.domain_id] = newest
        return None
    document, version = held.document, held.version
    claim = call_claim(token, data, connector=False)  # checked in the transaction
    try:
        proposal = proposal_from(document, claim)
    except ClaimRefused:
        return None
    if not token_allows(token, tool=proposal.tool, verb=proposal.verb):
        return None
    connection.ensure_connection()
    pg: psycopg.Connection[Any] = connection.connection
    with connection.wrap_database_errors:
        try:
            facts, agent, session_id = _lock_and_read(pg, token, data, key, held)
            verdict, _ = decide(document, version, proposal, facts)
            if verdict.outcome == "escalate" or verdict.quarantine:
                raise _ServicePath
            desk_read = desk_read_unconnected(
                domain=token.domain,
                tool=data.tool,
                verb=proposal.verb,
                target_ids=list(proposal.target_ids),
            )
            action = proposed_action(token, agent, session_id, data, proposal, verdict, desk_read)
            body = action_verdict(action)
            _write_and_commit(pg, token, action, data, proposal, desk_read, key, fingerprint, body)
        except _ServicePath:
            pg.rollback()
            return None
        except BaseException:
            if pg.info.transaction_status != psycopg.pq.TransactionStatus.UNKNOWN:
                pg.rollback()
            raise
    try:
        seal_after_commit()
    except Exception:  # as on_commit(robust=True): the proposal stands; the next seal takes it
        log.exception("sealing after a proposal failed")
    return Proposed(Claim.NEW, 201, body, action)


def _lock_and_read(
    pg: psycopg.Connection[Any],
    token: AgentToken,
    data: ProposalData,
    key: str,
    held: NewestPolicy,
) -> tuple[Facts, Agent, int]:
    """The first round trip: the transaction, its locks, and what the verdict depends on.
    Raises _ServicePath when the proposal is not the plain case.

    The locks are taken in the service path's order (key, switches, agent), and the reads
    follow in a statement of their own: under READ COMMITTED a statement sees what committed
    before it began, so the counts include the proposal that held the agent's lock last."""
    document = held.document  # as read once by the caller: another may replace it meanwhile
    agent_id, tool, domain_id = token.agent_id, data.tool, token.domain_id
    scopes = [token.domain.slug, KillSwitch.GLOBAL]
    params: dict[str, Any] = {
        "key_lock": key_lock_id(agent_id, key),
        "domain_lock": KillSwitch.lock_key(scopes[0]),
        "global_lock": KillSwitch.lock_key(scopes[1]),
        "agent": agent_id,
        "key": key,
        "scopes": scopes,
        "session": data.session_id,
        "step": data.step_index,
        "domain": domain_id,
        "tool": tool,
    }
    counts = []
    for n, (seconds, cap) in enumerate(rate_windows(document)):
        params[f"seconds_{n}"] = seconds
        params[f"cap_{n}"] = cap
        counts.append(
            f"(SELECT count(*) FROM (SELECT 1 FROM {sql_table(Action)} WHERE agent_id = "
            f"%(agent)s AND tool = %(tool)s AND created_at >= "
            # The clock as the statement runs, after the agent's lock was granted, as the
            # service path reads it after that lock.
            f"clock_timestamp() - make_interval(secs => %(seconds_{n})s) LIMIT %(cap_{n})s) "
            "AS earlier)"
        )
    rolled = (
        f"FROM {sql_table(Action)} WHERE agent_id = %(agent)s AND tool = %(tool)s "
        "AND rolled_back_at IS NOT NULL"
    )
    sessions = (
        f"FROM {sql_table(AgentSession)} WHERE agent_id = %(agent)s AND external_id = %(session)s"
    )
    sql = ";\n".join(
        [
            "BEGIN",
            "SELECT pg_try_advisory_xact_lock(%(key_lock)s)",
            # Only with the key held (taking it again holds it twice, until the same end): a
            # request whose key is in flight waits for no other lock, and is answered 409.
            "SELECT pg_advisory_xact_lock_shared(%(domain_lock)s), "
            "pg_advisory_xact_lock_shared(%(global_lock)s) "
            "WHERE pg_try_advisory_xact_lock(%(key_lock)s)",
            f"SELECT {sql_columns(Agent, 'a')} FROM {sql_table(Agent)} a "
            "WHERE a.id = %(agent)s AND pg_try_advisory_xact_lock(%(key_lock)s) FOR UPDATE",
            "SELECT "
            + ", ".join(
                [
                    f"EXISTS (SELECT 1 FROM {sql_table(IdempotencyRecord)} "
                    "WHERE agent_id = %(agent)s AND key = %(key)s)",
                    f"EXISTS (SELECT 1 FROM {sql_table(KillSwitch)} "
                    "WHERE scope = ANY(%(scopes)s) AND engaged)",
                    f"(SELECT id {sessions})",
                    "%(step)s::integer IS NULL OR EXISTS (SELECT 1 FROM "
                    f"{sql_table(ReasoningStep)} WHERE index = %(step)s::integer "
                    f"AND session_id = (SELECT id {sessions}))",
                    f"(SELECT id FROM {sql_table(PolicyVersion)} "
                    "WHERE domain_id = %(domain)s ORDER BY version DESC LIMIT 1)",
                    f"EXISTS (SELECT 1 FROM {sql_table(Connector)} "
                    "WHERE domain_id = %(domain)s AND tool = %(tool)s)",
                    f"(SELECT array_agg(rolled_back_at ORDER BY rolled_back_at DESC) {rolled})",
                    f"(SELECT array_agg(target_ids ORDER BY rolled_back_at DESC) {rolled})",
                    *counts,
                ]
            ),
        ]
    )
    cursor = psycopg.ClientCursor(pg)
    cursor.execute(sql, params)
    cursor.nextset()
    (key_free,) = _row(cursor)
    cursor.nextset()
    cursor.nextset()
    agent_row = cursor.fetchone()
    cursor.nextset()
    reads = _row(cursor)
    key_used, killed, session_id, step_found, newest, connected, rolled_at, rolled_ids = reads[:8]
    earlier = reads[8:]
    if not key_free or key_used or killed or agent_row is None or session_id is None:
        raise _ServicePath
    agent = model_from_row(Agent, agent_row)
    if agent.quarantined_at is not None or not step_found or connected:
        raise _ServicePath
    if newest != held.version_id:
        _policies.pop(token.domain_id, None)
        raise _ServicePath
    counted = dict(zip(rate_windows(document), earlier, strict=True))
    rollbacks = rolled_back_on(
        tuple(data.target_ids),
        zip(rolled_at or [], [json.loads(ids) for ids in rolled_ids or []], strict=True),
    )

    def repeated_since(since: Any) -> bool:
        raise _ServicePath  # a repeat after a rollback: the flapping guard's own queries

    facts = Facts(
        recent_count=lambda seconds, cap: counted[(seconds, cap)],
        rolled_back=lambda: rollbacks,
        repeated_since=repeated_since,
    )
    return facts, agent, session_id


def _row(cursor: psycopg.ClientCursor[Any]) -> Any:
    row = cursor.fetchone()
    assert row is not None  # a SELECT without FROM gives one row
    return row


def _write_and_commit(
    pg: psycopg.Connection[Any],
    token: AgentToken,
    action: Action,
    data: ProposalData,
    proposal: Any,
    desk_read: Any,
    key: str,
    fingerprint: str,
    body: dict[str, Any],
) -> None:
    """The second round trip: the action, its audit event and the stored answer, committed."""
    event = proposal_entry(action, data, proposal, desk_read).event(
        agent_actor(token), timezone.now()
    )
    answer = stored_answer(
        Claimed(Claim.NEW, token.agent_id, key, fingerprint), status=201, body=body
    )
    statements, params = [], []
    for obj in (action, event, answer):
        sql, values = sql_insert(obj)
        statements.append(sql)
        params.extend(values)
    psycopg.ClientCursor(pg).execute(";\n".join([*statements, "COMMIT"]), params)
