"""The queue page with 10,000 open escalations: server time and the number of queries.

Seeds a `bench-queue` domain with open escalations (rows written directly, as a fixture; no
agent traffic), then renders the queue page for a signed-in approver through Django's full
request path (middleware, view, template), in this process, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/queue_page.py [--open 10000]

Target: p99 under 50 ms with 10,000 open, with a query count that does not grow with the
queue.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import PY, ensure_database, env  # noqa: E402


def seed(domain_slug: str, count: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from approvals.agents import token_issue
    from approvals.audit import Actor
    from approvals.models import Action, AgentSession, AgentToken
    from approvals.policy import domain_ensure

    actor = Actor.system("bench")
    domain, _ = domain_ensure(slug=domain_slug, name=domain_slug, description="", actor=actor)
    have = Action.objects.filter(domain=domain, status=Action.Status.ESCALATED).count()
    if have >= count:
        return
    issued = token_issue(
        agent_name=f"{domain_slug}-agent",
        domain_slug=domain_slug,
        scopes=["*:update"],
        ttl=3600,
        actor=actor,
    )
    token = AgentToken.objects.get(pk=issued.record.pk)
    session, _ = AgentSession.objects.get_or_create(
        agent=token.agent, external_id="bench", defaults={"domain": domain}
    )
    now = timezone.now()
    rows = [
        Action(
            agent=token.agent,
            token=token,
            domain=domain,
            session=session,
            tool="update_record",
            verb="update",
            params={"field": "discount", "value": 0.5},
            target_ids=[f"acct-{n}"],
            amount=Decimal(n % 900),
            currency="USD",
            blast_records=1,
            blast_population=10_000,
            pre_action_state={"discount": 0.1},
            status=Action.Status.ESCALATED,
            rule="blast",
            reason="wide",
            policy_version=1,
            tier=1 + n % 3,
            sla_due_at=now + timedelta(seconds=60 + n),
            expires_at=now + timedelta(hours=2),
            timer_id=f"bench-{n}",
        )
        for n in range(have, count)
    ]
    Action.objects.bulk_create(rows, batch_size=2000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE approvals_action")  # as autovacuum soon would


def measure(client, path: str, rounds: int) -> tuple[list[float], int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        client.get(path)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    return times, len(queries), len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    os.environ.update(env())
    os.environ["ALLOWED_HOSTS"] = "testserver"
    ensure_database(os.environ["DATABASE_URL"])
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=os.environ, check=True)
    import django

    django.setup()
    from django.test import Client

    from approvals.audit import Actor
    from approvals.desk import operator_ensure

    seed("bench-queue", args.open)
    seed("bench-queue-small", 100)
    user, _ = operator_ensure(
        username="bench-approver",
        role="approver",
        password="bench-" + "x" * 20,
        actor=Actor.system("bench"),
    )
    client = Client()
    client.force_login(user)
    print(
        f"{os.cpu_count()} cores; queue page as an approver, in-process, PostgreSQL; "
        f"{args.rounds} requests each"
    )
    for label, path in (
        ("all open", "/queue/"),
        (f"{args.open:,} open in one domain", "/queue/?domain=bench-queue"),
        ("100 open in one domain", "/queue/?domain=bench-queue-small"),
    ):
        times, queries, size = measure(client, path, args.rounds)
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        print(
            f"{label:>30}: p50 {statistics.median(times):6.1f} ms   p99 {cuts[98]:6.1f} ms   "
            f"queries {queries}   page {size / 1024:.0f} KiB"
        )


if __name__ == "__main__":
    main()
