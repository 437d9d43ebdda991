from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from approvals.agents import TokenError, token_allows, token_authenticate, token_digest
from approvals.models import AgentToken, AuditEvent
from tests.agents import demo_domain

pytestmark = pytest.mark.django_db


def issue(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("issue_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_issue_token_prints_the_token_alone_and_stores_only_its_hmac() -> None:
    demo_domain("procurement")
    out, err = issue(
        "buyer",
        "--domain",
        "procurement",
        "--scope",
        "create_order:create",
        "--scope",
        "*:read",
        "--ttl",
        "600",
    )
    token = out.strip()
    assert out == token + "\n" and token.startswith("idk_")
    stored = AgentToken.objects.get()
    assert stored.prefix == token[:16] and token.startswith(stored.prefix + "_")
    assert stored.digest == token_digest(token) and token not in stored.digest
    assert stored.scopes == ["create_order:create", "*:read"]
    assert 590 <= (stored.expires_at - timezone.now()).total_seconds() <= 600
    assert "not shown again" in err
    assert stored.agent.name == "buyer"
    assert AuditEvent.objects.filter(action="agent.created").exists()
    assert AuditEvent.objects.get(action="token.issued").object_id == stored.prefix


def test_default_lifetime_is_an_hour() -> None:
    demo_domain("billing")
    issue("support", "--domain", "billing", "--scope", "*:read")
    remaining = (AgentToken.objects.get().expires_at - timezone.now()).total_seconds()
    assert 3590 <= remaining <= 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "nowhere", "--scope", "*:read"], "no domain 'nowhere'"),
        (["--domain", "billing", "--scope", "read"], "is not tool:verb"),
        (["--domain", "billing", "--scope", "x:fly"], "names no verb"),
        (["--domain", "billing", "--scope", "*:read", "--ttl", "5"], "ttl must be between"),
    ],
)
def test_bad_token_requests_name_the_problem(args, message) -> None:
    demo_domain("billing")
    with pytest.raises(CommandError, match=message):
        issue("support", *args)
    assert not AgentToken.objects.exists()


def test_authentication_refuses_unknown_expired_and_revoked_tokens() -> None:
    demo_domain("billing")
    token = issue("support", "--domain", "billing", "--scope", "*:read")[0].strip()
    assert token_authenticate(token).agent.name == "support"
    with pytest.raises(TokenError, match="unknown"):
        token_authenticate(token + "x")
    with pytest.raises(TokenError, match="not an IncidentDesk token"):
        token_authenticate("Bearer-nonsense")
    out = StringIO()
    call_command("revoke_token", token[:16], stdout=out)
    assert "revoked" in out.getvalue()
    with pytest.raises(TokenError, match="revoked"):
        token_authenticate(token)
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1
    call_command("revoke_token", token, stdout=StringIO())  # the whole token works too
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1
    other = issue("support", "--domain", "billing", "--scope", "*:read")[0].strip()
    AgentToken.objects.filter(prefix=other[:16]).update(expires_at=timezone.now())
    with pytest.raises(TokenError, match="expired"):
        token_authenticate(other)


def test_revoking_an_unknown_prefix_says_so() -> None:
    with pytest.raises(CommandError, match="no token with prefix 'idk_nothing'"):
        call_command("revoke_token", "idk_nothing")


def test_scopes_are_tool_and_verb_patterns() -> None:
    token = AgentToken(scopes=["create_order:create", "*:read", "update_*:update"])
    assert token_allows(token, tool="create_order", verb="create")
    assert token_allows(token, tool="anything", verb="read")
    assert token_allows(token, tool="update_discount", verb="update")
    assert not token_allows(token, tool="create_order", verb="delete")
    assert not token_allows(token, tool="cancel_order", verb="update")


def test_changing_an_agent_in_the_admin_is_audited(admin_operator, login) -> None:
    from approvals.models import Agent

    demo_domain("procurement")
    issue("buyer", "--domain", "procurement", "--scope", "*:read")
    agent = Agent.objects.get(name="buyer")
    response = login(admin_operator).post(
        f"/admin/approvals/agent/{agent.pk}/change/",
        {"description": "Restocks GPUs", "owner": admin_operator.pk},
    )
    assert response.status_code in (200, 302)
    changed = AuditEvent.objects.get(action="agent.changed")
    assert changed.actor == admin_operator.username and "description, owner_id" in changed.summary
