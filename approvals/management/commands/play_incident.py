from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.agents import token_issue
from approvals.audit import Actor
from approvals.desk import DEMO_DOMAINS, demo_connectors
from approvals.models import Domain

# The stories and the target system live beside the client package, not in the desk.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "client"))

from incidents.stories import AGENTS, DELETE_SCOPE, STORIES, Acme  # noqa: E402


class Command(BaseCommand):
    help = (
        "Play one of the incident stories against the running desk: a scripted agent asks the "
        "desk before every tool call it makes on the demo target system."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("story", choices=sorted(STORIES))
        parser.add_argument("--desk-url", default=settings.DESK_URL)
        parser.add_argument("--target-url", default=settings.DEMO_TARGET_URL)
        parser.add_argument(
            "--max-wait",
            type=float,
            default=900,
            help="seconds the agent waits for a person (default 15 minutes)",
        )
        parser.add_argument("--orders", type=int, default=50, help="procurement: orders to try")
        parser.add_argument(
            "--delete-scope",
            action="store_true",
            help="devops: give the agent's token the delete scope too",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from incidentdesk_client import Desk

        story = options["story"]
        missing = [slug for slug, _, _ in DEMO_DOMAINS if not Domain.objects.filter(slug=slug)]
        if missing:
            raise CommandError(f"no demo domains {', '.join(missing)}: run manage.py load_demo")
        target_url = options["target_url"]
        try:
            urllib.request.urlopen(f"{target_url}/_admin/stats", timeout=5).close()
        except OSError as exc:
            raise CommandError(
                f"the demo target system does not answer at {target_url} ({exc}); start it with "
                "`cd client && ../.venv/bin/python -m incidents.target --demo "
                f"--secret {settings.DEMO_TARGET_SECRET}` (make run starts it)"
            ) from None
        actor = Actor.system("play_incident")
        demo_connectors(target_url=target_url, secret=settings.DEMO_TARGET_SECRET, actor=actor)
        agent, domain, scopes = AGENTS[story]
        if story == "devops" and options["delete_scope"]:
            scopes = [*scopes, DELETE_SCOPE]
        issued = token_issue(
            agent_name=agent, domain_slug=domain, scopes=scopes, ttl=3600, actor=actor
        )
        desk = Desk(options["desk_url"], issued.token, max_wait=options["max_wait"], poll_wait=20)
        url = options["desk_url"]
        self.stdout.write(
            f"{agent} ({domain}, scopes {', '.join(scopes)}) starts; watch it at "
            f"{url}/queue/ and {url}/sessions/"
        )
        kwargs = {"orders": options["orders"]} if story == "procurement" else {}
        try:
            outcome = STORIES[story](desk, Acme(target_url), say=self.stdout.write, **kwargs)
        except (urllib.error.URLError, ConnectionError) as exc:
            raise CommandError(f"the agent could not reach the target system: {exc}") from None
        finally:
            desk.close()
        self.stdout.write(
            f"{story}: session {agent}/{outcome.session}; did {len(outcome.done)} "
            f"calls; {outcome.stop}"
        )
