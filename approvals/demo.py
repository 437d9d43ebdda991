"""Demo data: the three domains of the incident stories and one operator per role."""

from __future__ import annotations

from approvals.audit import Actor
from approvals.default_policies import DEFAULT_POLICIES
from approvals.domains import domain_ensure
from approvals.models import PolicyVersion
from approvals.operators import operator_ensure
from approvals.policy import PolicyDocument, policy_publish
from approvals.roles import ROLE_ORDER

DEMO_DOMAINS = [
    ("billing", "Billing", "Accounts, invoices and discount rates."),
    ("procurement", "Procurement", "Vendor orders and stock levels."),
    ("devops", "DevOps", "Cloud resources, snapshots and deployments."),
]


def demo_load(*, password: str) -> list[tuple[str, str]]:
    """Create what is missing; returns the (username, role) logins. Safe to run again."""
    actor = Actor.system("load_demo")
    for slug, name, description in DEMO_DOMAINS:
        domain, _ = domain_ensure(slug=slug, name=name, description=description, actor=actor)
        if not PolicyVersion.objects.filter(domain=domain).exists():
            document = PolicyDocument.model_validate(DEFAULT_POLICIES[slug])
            policy_publish(domain=domain, document=document, actor=actor)
    logins = []
    for role in ROLE_ORDER:
        operator_ensure(username=role, role=role, password=password, actor=actor)
        logins.append((role, role))
    return logins
