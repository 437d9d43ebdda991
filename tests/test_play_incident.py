"""manage.py play_incident: a story played from the command line against the running desk."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from incidents.target import Target

from approvals.desk import DEMO_DOMAINS
from approvals.models import Action, Connector
from tests.agents import demo_domain
from tests.servers import Desk

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo_target(target: tuple[Target, str]) -> tuple[Target, str]:
    served, url = target
    served.seed_demo()
    for slug, _, _ in DEMO_DOMAINS:
        demo_domain(slug)
    return served, url


def play(desk: Desk, url: str, *args: str) -> str:
    out = StringIO()
    call_command("play_incident", *args, desk_url=desk.url, target_url=url, stdout=out)
    return out.getvalue()


def test_the_devops_story_is_refused_and_the_snapshot_stays(
    desk: Desk, demo_target: tuple[Target, str]
) -> None:
    served, url = demo_target
    output = play(desk, url, "devops")
    assert "OutOfScope" in output and "its scopes are" in output
    output = play(desk, url, "devops", "--delete-scope")
    assert "ActionDenied" in output and "protected target" in output
    assert "snap-staging-critical-db" in served.data["snapshots"]
    assert Action.objects.get().status == Action.Status.DENIED
    # The demo domains' connectors now point at this target.
    read = Connector.objects.get(domain__slug="devops", tool="delete_snapshot").spec["read"]
    assert read["url"].startswith(url)


def test_the_procurement_story_stops_at_the_rate_rule(
    desk: Desk, demo_target: tuple[Target, str]
) -> None:
    served, url = demo_target
    output = play(desk, url, "procurement", "--orders", "3")
    assert output.count("placed PO-") == 3 and "not stopped" in output
    assert len(served.data["orders"]) == 3


def test_a_missing_target_or_demo_data_is_named(desk: Desk, settings: Any) -> None:
    with pytest.raises(CommandError, match="no demo domains"):
        call_command("play_incident", "devops", desk_url=desk.url, target_url="http://x")
    for slug, _, _ in DEMO_DOMAINS:
        demo_domain(slug)
    with pytest.raises(CommandError, match="does not answer at http://127.0.0.1:9"):
        call_command("play_incident", "devops", desk_url=desk.url, target_url="http://127.0.0.1:9")
