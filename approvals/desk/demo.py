"""Demo data: the three domains of the incident stories and one operator per role."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from approvals.audit import Actor
from approvals.core import ROLE_ORDER
from approvals.desk.operators import operator_ensure
from approvals.models import Connector, Domain, PolicyVersion
from approvals.policy import DEFAULT_POLICIES, PolicyDocument, domain_ensure, policy_publish

DEMO_DOMAINS = [
    ("billing", "Billing", "Accounts, invoices and discount rates."),
    ("procurement", "Procurement", "Vendor orders and stock levels."),
    ("devops", "DevOps", "Cloud resources, snapshots and deployments."),
]


def demo_connectors(*, target_url: str, secret: str, actor: Actor) -> None:
    """Connectors from the demo domains to the demo target system (client/incidents)."""
    from approvals.rollbacks import connector_save

    url = target_url.rstrip("/")
    connectors: dict[tuple[str, str], dict[str, Any]] = {
        ("billing", "update_discount"): {
            "read": {"method": "GET", "url": url + "/accounts/{target}"},
            "restore": {"method": "PUT", "url": url + "/accounts/{target}", "body": "{state}"},
        },
        ("procurement", "create_order"): {
            "read": {"method": "GET", "url": url + "/orders/{target}"},
            "compensate": {
                "method": "POST",
                "url": url + "/orders/{target}/cancel",
                "target": "{result[id]}",
                "expect": {"status": "cancelled"},
            },
        },
        # A deleted snapshot cannot be put back: reads only, so a rollback lists it as manual.
        ("devops", "delete_snapshot"): {
            "read": {"method": "GET", "url": url + "/snapshots/{target}"},
        },
    }
    for (slug, tool), spec in connectors.items():
        domain = Domain.objects.get(slug=slug)
        current = Connector.objects.filter(domain=domain, tool=tool).first()
        if current is None or (current.spec, current.secret) != (spec, secret):
            connector_save(
                domain=domain, tool=tool, kind="http", spec=spec, secret=secret, actor=actor
            )


def demo_load(*, password: str) -> list[tuple[str, str]]:
    """Create what is missing; returns the (username, role) logins. Safe to run again."""
    actor = Actor.system("load_demo")
    for slug, name, description in DEMO_DOMAINS:
        domain, _ = domain_ensure(slug=slug, name=name, description=description, actor=actor)
        if not PolicyVersion.objects.filter(domain=domain).exists():
            document = PolicyDocument.model_validate(DEFAULT_POLICIES[slug])
            policy_publish(domain=domain, document=document, actor=actor)
    demo_connectors(
        target_url=settings.DEMO_TARGET_URL, secret=settings.DEMO_TARGET_SECRET, actor=actor
    )
    logins = []
    for role in ROLE_ORDER:
        operator_ensure(username=role, role=role, password=password, actor=actor)
        logins.append((role, role))
    return logins
