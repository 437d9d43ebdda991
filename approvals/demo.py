"""Demo data: the three domains of the incident stories and one operator per role."""

from __future__ import annotations

from approvals.audit import Actor
from approvals.domains import domain_ensure
from approvals.operators import operator_ensure
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
        domain_ensure(slug=slug, name=name, description=description, actor=actor)
    logins = []
    for role in ROLE_ORDER:
        operator_ensure(username=role, role=role, password=password, actor=actor)
        logins.append((role, role))
    return logins
