"""From an agent's escalation POST to its row visible in a connected browser, in production mode.

The production layout (nginx -> granian WSGI x2 for HTTP, uvicorn for websockets, PostgreSQL,
Redis channel layer) serves the desk; headless Chromium holds the queue page open as a
signed-in approver. Each round posts one proposal that the policy escalates and measures, on
the same clock, from just before the POST to the moment the row is inserted into the page's
DOM (a MutationObserver in the page stamps it).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/escalation_latency.py [--rounds 100]

Target: p99 under 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    PY,
    ensure_database,
    env,
    granian,
    nginx,
    processes,
    uvicorn,
    wait_http,
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
POLICY = {
    "comment": "bench: every update waits for a person",
    "rules": [],
    "default_outcome": "escalate",
    "default_tier": 1,
}
STAMP_ROWS = """
window.__seen = {};
new MutationObserver(function () {
  document.querySelectorAll("li.item").forEach(function (li) {
    if (!window.__seen[li.id]) window.__seen[li.id] = performance.timeOrigin + performance.now();
  });
}).observe(document.body, {subtree: true, childList: true});
"""


def setup() -> tuple[str, dict[str, str]]:
    """A token for an agent in a `bench-escalations` domain, and an approver's session cookie."""
    os.environ.update(env())
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client

    from approvals.agents import token_issue
    from approvals.audit import Actor
    from approvals.desk import operator_ensure
    from approvals.policy import PolicyDocument, domain_ensure, policy_publish

    actor = Actor.system("bench")
    domain, _ = domain_ensure(slug="bench-escalations", name="Bench", description="", actor=actor)
    policy_publish(domain=domain, document=PolicyDocument.model_validate(POLICY), actor=actor)
    token = token_issue(
        agent_name="bench-escalating-agent",
        domain_slug=domain.slug,
        scopes=["*:update"],
        ttl=3600,
        actor=actor,
    ).token
    user, _ = operator_ensure(
        username="bench-watcher", role="approver", password="bench-" + "x" * 20, actor=actor
    )
    client = Client()
    client.force_login(user)
    return token, {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def propose(url: str, token: str) -> str:
    body = {
        "session_id": "bench-escalations",
        "tool": "update_record",
        "verb": "update",
        "params": {"field": "discount", "value": 0.5},
        "target_ids": ["acct-1"],
        "pre_action_state": {"discount": 0.1},
    }
    request = urllib.request.Request(
        url + "/api/v1/actions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        verdict = json.loads(response.read())
    assert verdict["status"] == "pending", verdict
    return verdict["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warm-up", type=int, default=10)
    args = parser.parse_args()
    ensure_database(env()["DATABASE_URL"])
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env(), check=True)
    token, cookies = setup()
    prefix = Path(tempfile.mkdtemp(prefix="desk-bench-"))
    queue = f"bench-escalations-{os.getpid()}"  # timer tasks go here; no worker reads it
    commands = [
        granian("wsgi", "incidentdesk.wsgi:application", 8304, 2),
        uvicorn(8305, 1),
        nginx(8300, 8304, 8305, prefix),
    ]
    url = "http://127.0.0.1:8300"
    from playwright.sync_api import sync_playwright

    latencies: list[float] = []
    with processes(commands, {"CELERY_QUEUE": queue}), sync_playwright() as playwright:
        wait_http(url + "/healthz")
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        context = browser.new_context()
        context.add_cookies([{"name": k, "value": v, "url": url} for k, v in cookies.items()])
        page = context.new_page()
        page.goto(url + "/queue/?domain=bench-escalations")
        page.locator("#live-status[data-state='open']").wait_for(timeout=15_000)
        page.evaluate(STAMP_ROWS)
        for round_no in range(args.warm_up + args.rounds):
            started = time.time() * 1000
            action_id = propose(url, token)
            seen = None
            deadline = time.monotonic() + 10
            while seen is None and time.monotonic() < deadline:
                seen = page.evaluate(f"window.__seen['esc-{action_id}'] || null")
                if seen is None:
                    time.sleep(0.005)
            if seen is None:
                raise RuntimeError(f"escalation {action_id} never appeared on the page")
            if round_no >= args.warm_up:  # the first ones also warm caches in each worker
                latencies.append(seen - started)
        browser.close()
    import redis

    redis.Redis.from_url(env()["REDIS_URL"]).delete(queue)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"{os.cpu_count()} cores; production layout; {args.rounds} escalations, one at a time, "
        "to one open queue page in headless Chromium"
    )
    print(
        f"POST -> row in the DOM: p50 {statistics.median(latencies):.1f} ms   "
        f"p99 {cuts[98]:.1f} ms   max {max(latencies):.1f} ms"
    )


if __name__ == "__main__":
    main()
