"""A web process keeps the tokens it authenticated while the access version in Redis shows no
revocation since: the agent API's hot path then asks the database nothing to authenticate.
A revocation or a quarantine, in any process, is seen by the next request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.agents import ACCESS_VERSION, access_version, token_revoke
from approvals.audit import Actor
from approvals.core import counter_bump, counters_shared
from approvals.killswitches import agent_quarantine
from tests.agents import agent_token

pytestmark = pytest.mark.django_db
SCOPES = ("create_order:create", "*:read")


def ask(client: Client, token: str) -> Any:
    """A request that authenticates and counts, then stops (400: no Idempotency-Key)."""
    return client.post(
        "/api/v1/actions",
        json.dumps({"session_id": "s"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def queries(client: Client, token: str) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as captured:
        status = ask(client, token).status_code
    return status, len(captured.captured_queries)


@pytest.fixture
def shared() -> None:
    if not counters_shared():
        pytest.skip("tokens are kept only where Redis is shared by the web processes")


def test_a_token_used_once_is_kept_and_asks_the_database_nothing(shared: None) -> None:
    token = agent_token("buyer", "procurement", *SCOPES)
    client = Client()
    assert queries(client, token) == (400, 1)  # read once
    assert queries(client, token) == (400, 0)  # then kept
    assert queries(client, token) == (400, 0)


def test_a_revocation_is_seen_by_the_next_request(
    shared: None, django_capture_on_commit_callbacks: Any
) -> None:
    token = agent_token("buyer", "procurement", *SCOPES)
    client = Client()
    ask(client, token)
    assert queries(client, token) == (400, 0)
    before = access_version()
    with django_capture_on_commit_callbacks(execute=True):
        token_revoke(prefix=token[:16], actor=Actor.system("tests"))
    assert access_version() != before
    refused = ask(client, token)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_a_change_announced_by_another_process_is_seen(shared: None) -> None:
    token = agent_token("buyer", "procurement", *SCOPES)
    client = Client()
    ask(client, token)
    assert queries(client, token) == (400, 0)
    counter_bump(ACCESS_VERSION)  # as a revocation in another process announces it
    assert queries(client, token) == (400, 1)  # read again
    assert queries(client, token) == (400, 0)


def test_a_quarantine_is_seen_by_the_next_request(
    shared: None, django_capture_on_commit_callbacks: Any
) -> None:
    token = agent_token("buyer", "procurement", *SCOPES)
    client = Client()
    ask(client, token)
    with django_capture_on_commit_callbacks(execute=True):
        agent_quarantine(agent_name="buyer", actor=Actor.system("tests"), reason="runaway")
    assert ask(client, token).status_code == 401


def test_without_a_shared_cache_every_request_reads_the_token(settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    token = agent_token("buyer", "procurement", *SCOPES)
    client = Client()
    assert [queries(client, token) for _ in range(3)] == [(400, 1)] * 3
