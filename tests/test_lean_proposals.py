"""The lean path for proposals (approvals/api/lean.py) answers and writes exactly what the service
path does, on the same inputs; and hands every case that is not plain back to it.

Two agents of one domain, twins, get the same proposals in the same order: one through the API's
way (lean, or the service path when lean declines), the other through the service path alone.
Their answers, actions and audit events must match field for field.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from approvals.agents import token_authenticate
from approvals.api import ProposalData, action_propose, propose_lean
from approvals.api.idempotency import Claim
from approvals.audit import Actor, audit_seal, audit_verify_chain
from approvals.core import Refused
from approvals.killswitches import agent_quarantine, agent_release, killswitch_set
from approvals.models import Action, AgentSession, AuditEvent, Connector, ReasoningStep
from approvals.policy import PolicyDocument, domain_ensure, policy_publish
from tests.agents import agent_token

pytestmark = pytest.mark.django_db(transaction=True)

DOMAIN = "lean"
SYSTEM = Actor.system("tests")
POLICY = {
    "tools": [
        {"name": "update_record", "verb": "update", "undo": "restore", "population": 1000},
        {"name": "drop_table", "verb": "delete", "undo": "none"},
        {
            "name": "refund",
            "verb": "spend",
            "undo": "compensate",
            "compensating_tool": "charge",
            "amount": {"params": ["value"], "currency": "USD"},
        },
    ],
    "rules": [
        {
            "id": "protected",
            "when": {"protected_targets": ["prod-*"]},
            "outcome": "deny",
            "reason": "protected",
        },
        {
            "id": "big-refund",
            "match": {"tools": ["refund"]},
            "when": {"amount_over": "100"},
            "outcome": "escalate",
            "tier": 2,
            "reason": "big",
        },
        {
            "id": "wide",
            "when": {"blast_radius_over": 0.05},
            "outcome": "escalate",
            "tier": 1,
            "reason": "wide",
        },
        {
            "id": "runaway",
            "when": {"rate_over": {"count": 3, "window_seconds": 60}},
            "outcome": "escalate",
            "tier": 1,
            "reason": "runaway",
        },
        {
            "id": "no-drops",
            "match": {"tools": ["drop_*"]},
            "outcome": "deny",
            "reason": "never",
        },
        {"id": "small", "outcome": "allow", "reason": "small"},
    ],
    "unregistered": "escalate",
}
SCOPES = ("update_record:update", "drop_table:delete", "refund:spend", "mystery:*")


@pytest.fixture(autouse=True)
def postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the lean path is PostgreSQL's; SQLite always takes the service path")


def twins(prefix: str = "twin") -> tuple[Any, Any]:
    domain, _ = domain_ensure(slug=DOMAIN, name="Lean", description="", actor=SYSTEM)
    if not domain.policy_versions.exists():
        policy_publish(domain=domain, document=PolicyDocument.model_validate(POLICY), actor=SYSTEM)
    return tuple(
        token_authenticate(agent_token(f"{prefix}-{side}", DOMAIN, *SCOPES))
        for side in ("api", "service")
    )


def data(**fields: Any) -> ProposalData:
    base: dict[str, Any] = {
        "session_id": "run-1",
        "step_index": None,
        "tool": "update_record",
        "verb": "update",
        "params": {"field": "status", "value": "done"},
        "target_ids": ["rec-1"],
        "amount": None,
        "currency": "",
        "blast_records": None,
        "blast_population": None,
        "pre_action_state": {"status": "new"},
        "compensation": None,
    }
    return ProposalData(**{**base, **fields})


def outcome(call: Any) -> dict[str, Any]:
    """What a proposal came to, with the ids and clock readings that differ between twins
    taken out."""
    try:
        proposed = call()
    except Refused as exc:
        return {"refused": (exc.status, exc.title, exc.detail.replace("-service", "-api"))}
    body = dict(proposed.body or {})
    for name in ("id", "run_by", "expires_at"):
        body[name] = body.get(name) is not None
    action = proposed.action
    row = None
    if action is not None:
        saved = Action.objects.get(pk=action.pk)
        row = {
            f.attname: getattr(saved, f.attname)
            for f in Action._meta.concrete_fields
            if f.attname not in ("id", "agent_id", "token_id", "session_id")
            and not f.attname.endswith("_at")
            and f.attname not in ("run_by", "sla_due_at", "timer_id")
        }
        row["run_by_set"] = saved.run_by is not None
        row["session"] = AgentSession.objects.get(pk=saved.session_id).external_id
    return {"claim": proposed.claim, "status": proposed.status, "body": body, "row": row}


def events_since(mark: int, agent: str) -> list[dict[str, Any]]:
    found = AuditEvent.objects.filter(id__gt=mark, actor=agent).order_by("id")
    events = [
        {
            "action": e.action,
            "domain": e.domain,
            "object_type": e.object_type,
            "summary": e.summary,
            "data": e.data,
            "actor_kind": e.actor_kind,
        }
        for e in found
    ]
    return json.loads(json.dumps(events).replace(agent, "AGENT"))


def both(api: Any, service: Any, proposal: ProposalData, key: str) -> tuple[Any, Any, bool]:
    """The same proposal from each twin; returns both outcomes and whether lean took it."""
    took: list[bool] = []

    def through_the_api() -> Any:
        lean = propose_lean(token=api, data=proposal, key=key, fingerprint=key[:8])
        took.append(lean is not None)
        return lean or action_propose(token=api, data=proposal, key=key, fingerprint=key[:8])

    mark = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    a = outcome(through_the_api)
    b = outcome(lambda: action_propose(token=service, data=proposal, key=key, fingerprint=key[:8]))
    a["events"] = events_since(mark, api.agent.name)
    b["events"] = events_since(mark, service.agent.name)
    return a, b, took[0]


varied = st.builds(
    data,
    session_id=st.sampled_from(["run-1", "run-2"]),
    step_index=st.sampled_from([None, None, 0, 7]),
    tool=st.sampled_from(["update_record", "update_record", "drop_table", "refund", "mystery"]),
    verb=st.sampled_from([None, "update", "delete", "read"]),
    params=st.fixed_dictionaries(
        {"field": st.sampled_from(["status", "owner"])},
        optional={"value": st.integers(0, 300)},
    ),
    target_ids=st.lists(st.sampled_from(["rec-1", "rec-2", "prod-1"]), max_size=2, unique=True),
    blast_records=st.sampled_from([None, 1, 200]),
    pre_action_state=st.sampled_from([None, {"status": "new"}]),
    compensation=st.sampled_from([None, {"tool": "undo", "params": {}}]),
)
# Half of them plain, so that runs of them reach the rate rule.
proposals = st.one_of(st.just(data()), varied)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(proposals, st.sampled_from(["new", "new", "new", "same", "rollback"])),
        min_size=1,
        max_size=6,
    )
)
def test_the_lean_path_answers_and_writes_what_the_service_path_does(steps: list[Any]) -> None:
    prefix = f"twin{uuid.uuid4().hex[:6]}"
    api, service = twins(prefix)
    for token in (api, service):
        session, _ = AgentSession.objects.get_or_create(
            agent=token.agent, external_id="run-1", defaults={"domain": token.domain}
        )
        ReasoningStep.objects.create(session=session, index=0, kind="thought", content="plan")
    key = "k-0"
    lean_count = 0
    for n, (proposal, how) in enumerate(steps):
        if how == "rollback":
            # The flapping guard's fact: the twins' last actions on these targets rolled back.
            for token in (api, service):
                last = Action.objects.filter(agent=token.agent).order_by("-created_at").first()
                if last is not None:
                    Action.objects.filter(pk=last.pk).update(rolled_back_at=timezone.now())
        elif how == "new":
            key = f"k-{n}"
        a, b, lean = both(api, service, proposal, key)
        lean_count += lean
        event(f"took the lean path: {lean}")
        assert a == b, (proposal, how)
    audit_seal()
    assert audit_verify_chain().intact


def test_the_plain_case_goes_lean_and_its_event_seals_into_the_chain() -> None:
    api, _ = twins()
    action_propose(token=api, data=data(), key="warm", fingerprint="f")  # the session
    assert propose_lean(token=api, data=data(), key="teach", fingerprint="f") is None
    proposed = propose_lean(token=api, data=data(), key="plain", fingerprint="f")
    assert proposed is not None and proposed.claim is Claim.NEW
    assert proposed.body["status"] == "allowed" and proposed.body["may_execute"]
    saved = Action.objects.get(pk=proposed.action.pk)
    assert saved.created_at == proposed.action.created_at  # every digit of the clock kept
    event = AuditEvent.objects.get(object_id=str(saved.pk))
    assert event.action == "action.allowed" and event.data["rule"] == "small"
    audit_seal()
    event.refresh_from_db()
    assert event.seq is not None and audit_verify_chain().intact


def test_everything_but_the_plain_case_takes_the_service_path() -> None:
    api, _ = twins()
    action_propose(token=api, data=data(), key="warm", fingerprint="f")
    propose_lean(token=api, data=data(), key="teach", fingerprint="f")

    def lean(key: str, **fields: Any) -> Any:
        # Out of the rate rule's window: each call here is judged on its own.
        Action.objects.filter(agent=api.agent).update(
            created_at=timezone.now() - timedelta(hours=1)
        )
        return propose_lean(token=api, data=data(**fields), key=key, fingerprint="f")

    assert lean("a") is not None
    assert lean("a") is None  # the key was used: a replay is the service path's
    assert lean("b", session_id="a-new-session") is None
    assert lean("c", step_index=3) is None  # no such step
    assert lean("d", target_ids=["rec-1"] * 0, blast_records=200) is None  # escalated
    assert lean("e", tool="mystery") is None  # unregistered: escalated
    # A connector for the tool: the desk reads the targets, which only the service path does.
    Connector.objects.create(domain=api.domain, tool="update_record", kind="python", spec={})
    assert lean("f") is None
    Connector.objects.all().delete()
    assert lean("g") is not None
    # A newer policy: declined once, then learned.
    policy_publish(domain=api.domain, document=PolicyDocument.model_validate(POLICY), actor=SYSTEM)
    assert lean("h") is None
    assert lean("i") is None  # learning it
    assert lean("j") is not None
    killswitch_set(scope=DOMAIN, engaged=True, actor=SYSTEM, reason="test")
    assert lean("k") is None
    killswitch_set(scope=DOMAIN, engaged=False, actor=SYSTEM, reason="test")
    agent_quarantine(agent_name=api.agent.name, actor=SYSTEM, reason="test")
    assert lean("l") is None
    agent_release(agent_name=api.agent.name, actor=SYSTEM, reason="test")
    assert lean("m") is not None
    assert not connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the connection is usable, not left in a transaction


def test_concurrent_lean_proposals_count_the_rate_exactly() -> None:
    """The rate rule allows 3 a minute: twelve at once from one agent, three allowed."""
    api, _ = twins()
    action_propose(token=api, data=data(), key="warm", fingerprint="f")
    propose_lean(token=api, data=data(), key="teach", fingerprint="f")
    Action.objects.filter(agent=api.agent).update(created_at=timezone.now() - timedelta(hours=1))
    statuses: list[str] = []
    start = threading.Barrier(12)

    def one(n: int) -> None:
        try:
            start.wait()
            key = f"burst-{n}"
            result = propose_lean(token=api, data=data(), key=key, fingerprint="f")
            result = result or action_propose(token=api, data=data(), key=key, fingerprint="f")
            statuses.append(result.body["status"])
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["allowed"] * 3 + ["pending"] * 9


def test_amounts_and_times_read_back_exactly() -> None:
    api, _ = twins()
    action_propose(token=api, data=data(), key="warm", fingerprint="f")
    propose_lean(token=api, data=data(), key="teach", fingerprint="f")
    proposed = propose_lean(
        token=api,
        data=data(tool="refund", verb="spend", params={"value": "12.3456"}, target_ids=["o-1"]),
        key="amount",
        fingerprint="f",
    )
    assert proposed is not None
    saved = Action.objects.get(pk=proposed.action.pk)
    assert saved.amount == Decimal("12.3456") and saved.run_by == proposed.action.run_by


def test_a_key_in_flight_is_answered_at_once_and_waits_for_no_other_lock() -> None:
    import psycopg

    from approvals.api.idempotency import key_lock_id

    api, _ = twins()
    action_propose(token=api, data=data(), key="warm", fingerprint="f")
    propose_lean(token=api, data=data(), key="teach", fingerprint="f")
    db = connection.settings_dict
    # Another request holds the key, and the agent's row, until it ends.
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", [key_lock_id(api.agent_id, "busy")])
        other.execute("SELECT 1 FROM approvals_agent WHERE id = %s FOR UPDATE", [api.agent_id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")  # a wait for the row fails, not hangs
        started = time.monotonic()
        assert propose_lean(token=api, data=data(), key="busy", fingerprint="f") is None
        proposed = action_propose(token=api, data=data(), key="busy", fingerprint="f")
        assert proposed.claim is Claim.IN_FLIGHT
        assert time.monotonic() - started < 2
        other.rollback()
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")
