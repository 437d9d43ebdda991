"""Helpers for tests that act as an agent."""

from __future__ import annotations

import uuid
from typing import Any

from approvals.agents import token_authenticate, token_issue
from approvals.api import ProposalData, action_propose
from approvals.audit import Actor
from approvals.models import Action, AgentToken, Domain
from approvals.policy import DEFAULT_POLICIES, PolicyDocument, domain_ensure, policy_publish
from tests.servers import Browser, Desk, Reply, http


def demo_domain(slug: str) -> Domain:
    """A demo domain with its default policy and no connectors. Its escalations wait at the
    tier the policy says: without connectors the desk knows no undo for anything, and the
    tests that use it are about the queue, not that rule (tests/test_undo_preview.py is)."""
    domain, created = domain_ensure(
        slug=slug, name=slug.title(), description="", actor=Actor.system("tests")
    )
    if created:
        Domain.objects.filter(pk=domain.pk).update(raise_tier_without_undo=False)
        domain.raise_tier_without_undo = False
        document = PolicyDocument.model_validate(DEFAULT_POLICIES[slug])
        policy_publish(domain=domain, document=document, actor=Actor.system("tests"))
    return domain


def agent_token(agent: str, domain: str, *scopes: str, ttl: int | None = None) -> str:
    demo_domain(domain)
    issued = token_issue(
        agent_name=agent,
        domain_slug=domain,
        scopes=list(scopes),
        ttl=ttl,
        actor=Actor.system("tests"),
    )
    return issued.token


def order(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "session_id": "run-1",
        "tool": "create_order",
        "verb": "create",
        "params": {"sku": "GPU-A100", "qty": 2, "unit_price": 90},
        "amount": {"value": "180.00", "currency": "USD"},
        "pre_action_state": {"open_orders": 0},
        "compensation": {"tool": "cancel_order", "params": {}},
    }
    # Params are merged: the registry takes the amount from qty and unit_price, so an amount
    # given alone is one unit at that price.
    params = overrides.pop("params", None) or {}
    amount = overrides.get("amount")
    if isinstance(amount, dict) and not {"qty", "unit_price"} & set(params):
        params = {"qty": 1, "unit_price": amount["value"], **params}
    body.update(overrides)
    body["params"] = {**body["params"], **params}
    return body


def propose(desk: Desk, token: str, body: dict[str, Any], key: str | None = None) -> Reply:
    return http(
        "POST",
        f"{desk.url}/api/v1/actions",
        body,
        {"Authorization": f"Bearer {token}", "Idempotency-Key": key or uuid.uuid4().hex},
    )


def call(desk: Desk, token: str, method: str, path: str, body: Any = None) -> Reply:
    return http(method, f"{desk.url}/api/v1{path}", body, {"Authorization": f"Bearer {token}"})


def record_proposal(token: AgentToken, data: ProposalData) -> Action:
    """Propose through the service, as the API does, with a fresh Idempotency-Key."""
    proposed = action_propose(token=token, data=data, key=uuid.uuid4().hex, fingerprint="")
    assert proposed.action is not None
    return proposed.action


def escalated_action(*, tier: int = 1, agent: str = "buyer") -> Action:
    """An action the default policies escalate: a $900 order (tier 1) or a deletion (tier 2)."""
    from decimal import Decimal

    if tier == 1:
        token = token_authenticate(agent_token(agent, "procurement", "create_order:create"))
        data = ProposalData(
            session_id="run-1",
            step_index=None,
            tool="create_order",
            verb="create",
            params={"sku": "GPU-A100", "qty": 10, "unit_price": 90},
            target_ids=[],
            amount=Decimal("900"),
            currency="USD",
            blast_records=None,
            blast_population=None,
            pre_action_state={"open_orders": 0, "qty": 0},
            compensation=None,
        )
    else:
        token = token_authenticate(agent_token(agent, "devops", "delete_snapshot:delete"))
        data = ProposalData(
            session_id="run-1",
            step_index=None,
            tool="delete_snapshot",
            verb="delete",
            params={"snapshot_id": "snap-dev-7"},
            target_ids=["snap-dev-7"],
            amount=None,
            currency="",
            blast_records=1,
            blast_population=40,
            pre_action_state={"snapshot_id": "snap-dev-7", "exists": True},
            compensation=None,
        )
    action = record_proposal(token, data)
    assert action.status == Action.Status.ESCALATED and action.tier == tier, action.rule
    return action


def decide(*, action_id: Any, user: Any, verdict: str, **kwargs: Any) -> Any:
    """Decide as the review page does: of the params as they are when the decider looks, unless
    the test says which params were seen."""
    from approvals.queue import effective_params, escalation_decide, params_fingerprint

    if "params_seen" not in kwargs:
        kwargs["params_seen"] = params_fingerprint(
            effective_params(Action.objects.get(pk=action_id))
        )
    return escalation_decide(action_id=action_id, user=user, verdict=verdict, **kwargs)


def decide_on_the_desk(
    desk: Desk, user: Any, action_id: Any, verdict: str, reason: str = "no"
) -> None:
    """Decide as an operator does, through the running desk: its own process sends the push
    (in embedded mode the channel layer lives there)."""
    from approvals.queue import effective_params, params_fingerprint
    from tests.conftest import session_cookie

    browser = Browser(desk.url, session_cookie(user))
    status, _ = browser.request("GET", f"/actions/{action_id}/")
    assert status == 200
    seen = params_fingerprint(effective_params(Action.objects.get(pk=action_id)))
    status, body = browser.htmx_post(
        f"/actions/{action_id}/decide", {"verdict": verdict, "params_seen": seen, "reason": reason}
    )
    assert status == 200, body
