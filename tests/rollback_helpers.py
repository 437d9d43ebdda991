"""Executed actions to roll back, a domain with a connector to the test target, and runs."""

from __future__ import annotations

import uuid
from typing import Any

from incidents.target import connector_spec

from approvals.agents import token_authenticate, token_issue
from approvals.api import ProposalData, action_report_result
from approvals.audit import Actor
from approvals.models import Action, AgentToken, Domain
from approvals.policy import PolicyDocument, domain_ensure, policy_publish
from approvals.rollbacks import Selection, connector_save, plan_create, plan_start, rollback_run
from tests.agents import record_proposal

SECRET = "target-signing-secret"
TOOLS = ("set_record:update", "create_order:create", "wipe_record:delete", "read_record:read")


def records_domain(base_url: str, slug: str = "records") -> Domain:
    """A domain whose policy allows everything, with connectors to the test target."""
    domain, created = domain_ensure(
        slug=slug, name=slug.title(), description="", actor=Actor.system("tests")
    )
    if created:
        policy_publish(
            domain=domain,
            actor=Actor.system("tests"),
            document=PolicyDocument(rules=[], default_outcome="allow", unregistered="allow"),
        )
    connect(domain, base_url, "set_record", "create_order")
    return domain


def connect(domain: Domain, base_url: str, *tools: str) -> None:
    """Connectors from the domain's tools to the test target system."""
    for tool in tools:
        connector_save(
            domain=domain,
            tool=tool,
            kind="http",
            spec=connector_spec(base_url),
            secret=SECRET,
            actor=Actor.system("tests"),
        )


def records_token(agent: str = "clerk", domain: str = "records") -> AgentToken:
    issued = token_issue(
        agent_name=agent,
        domain_slug=domain,
        scopes=list(TOOLS),
        ttl=None,
        actor=Actor.system("tests"),
    )
    return token_authenticate(issued.token)


def executed(
    token: AgentToken,
    *,
    targets: list[str],
    pre: Any,
    post: Any,
    tool: str = "set_record",
    verb: str = "update",
    session: str = "run-1",
    result: Any = None,
) -> Action:
    """An action the agent proposed, was allowed, ran and reported."""
    data = ProposalData(
        session_id=session,
        step_index=None,
        tool=tool,
        verb=verb,
        params={"targets": targets},
        target_ids=targets,
        amount=None,
        currency="",
        blast_records=None,
        blast_population=None,
        pre_action_state=pre,
        compensation=None,
    )
    action = record_proposal(token, data)
    assert action.status == Action.Status.ALLOWED, action.reason
    return action_report_result(
        token=token, action_id=str(action.pk), ok=True, result=result, post_state=post, error=""
    )


def run_plan(selection: Selection, *, by: str = "cora-commander") -> Any:
    """Plan, start and run a rollback in this process, as the worker would."""
    plan = plan_create(actor=Actor("user", by), selection=selection)
    plan_start(plan_id=plan.pk, actor=Actor("user", by))
    while rollback_run(plan_id=plan.pk):
        pass
    plan.refresh_from_db()
    return plan


def session_of(agent: str = "clerk", session: str = "run-1") -> Selection:
    return Selection(scope="session", session=f"{agent}/{session}")


def new_id() -> str:
    return uuid.uuid4().hex[:8]
