"""Proposal throughput and latency through the production layout, on PostgreSQL.

Each request is a full `POST /api/v1/actions`: token check, rate limit, Idempotency-Key claim,
policy evaluation (including a rate rule's count query), the action row, the stored answer and
the audit event, sealed into the chain after commit. The load comes from wrk on the same two
cores, spread over several agents (proposals are serialized per agent, as rate rules need).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/proposals.py [--seconds 10] [--agents 16]

Target: at least 1,000 proposals/s with p99 under 25 ms. The last line, the "floor", sends the
same requests without an Idempotency-Key: authenticated, rate-counted and refused (400) before
any work, it is the most this layout can serve of any agent API request on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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
    wrk,
)

PROPOSAL = {
    "session_id": "bench",
    "tool": "update_record",
    "verb": "update",
    "params": {"field": "status", "value": "reviewed"},
    "target_ids": ["rec-1"],
    "blast_radius": {"records": 1, "population": 10000},
    "pre_action_state": {"status": "new"},
}
POLICY = {
    "comment": "bench: everything small is allowed, after the usual checks",
    "tools": [{"name": "update_record", "verb": "update", "undo": "restore", "population": 10000}],
    "rules": [
        {
            "id": "protected",
            "when": {"protected_targets": ["prod-*"]},
            "outcome": "deny",
            "reason": "protected",
        },
        {
            "id": "blast",
            "when": {"blast_radius_over": 0.01},
            "outcome": "escalate",
            "tier": 2,
            "reason": "wide",
        },
        {
            "id": "rate",
            "when": {"rate_over": {"count": 1000, "window_seconds": 60}},
            "outcome": "escalate",
            "tier": 1,
            "reason": "runaway",
        },
        {"id": "allow-small", "outcome": "allow", "reason": "small change"},
    ],
}


def setup(agents: int) -> list[str]:
    """Tokens for `agents` agents in a `bench` domain with the policy above."""
    os.environ.update(env())
    import django

    django.setup()
    from approvals.agents import token_issue
    from approvals.audit import Actor
    from approvals.policy import PolicyDocument, domain_ensure, policy_publish

    actor = Actor.system("bench")
    domain, _ = domain_ensure(slug="bench", name="Bench", description="", actor=actor)
    policy_publish(domain=domain, document=PolicyDocument.model_validate(POLICY), actor=actor)
    return [
        token_issue(
            agent_name=f"bench-agent-{n}",
            domain_slug="bench",
            scopes=["update_record:update"],
            ttl=3600,
            actor=actor,
        ).token
        for n in range(agents)
    ]


def lua(tokens: list[str], *, with_key: bool = True) -> str:
    return (
        "local tokens = {" + ",".join(json.dumps(t) for t in tokens) + "}\n"
        "local body = "
        + json.dumps(json.dumps(PROPOSAL))
        + "\n"
        + f"local WITH_KEY = {'true' if with_key else 'false'}\n"
        """
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end
local n = 0
request = function()
  n = n + 1
  local token = tokens[((tid or 0) * 7919 + n) % #tokens + 1]
  local key = string.format("%d-%d-%d", run, tid or 0, n)
  return wrk.format("POST", "/api/v1/actions", {
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = WITH_KEY and key or nil,
    ["Content-Type"] = "application/json",
  }, body)
end
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    ensure_database(env()["DATABASE_URL"])
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env(), check=True)
    tokens = setup(args.agents)
    prefix = Path(tempfile.mkdtemp(prefix="desk-bench-"))
    extra = {"API_RATE_LIMIT": "1000000000"}
    commands = [
        granian("wsgi", "incidentdesk.wsgi:application", 8204, args.web_workers),
        uvicorn(8205, 1),
        nginx(8200, 8204, 8205, prefix),
    ]
    from django.db.models import Count

    from approvals.models import Action

    before = Action.objects.filter(domain__slug="bench").count()
    results = {}
    with processes(commands, extra):
        wait_http("http://127.0.0.1:8200/healthz")
        phases = (("warm-up", 3, True), ("measured", args.seconds, True), ("floor", 5, False))
        for phase, seconds, with_key in phases:
            script = prefix / f"{phase}.lua"
            run_id = f"run = {abs(hash((phase, os.getpid()))) % 10**9}\n"
            script.write_text(run_id + lua(tokens, with_key=with_key))
            results[phase] = wrk(8200, seconds, args.connections, script, path="/api/v1/actions")
    statuses = dict(
        Action.objects.filter(domain__slug="bench")
        .values_list("status")
        .order_by()
        .annotate(n=Count("id"))
    )
    r = results["measured"]
    print(
        f"{os.cpu_count()} cores; wrk -t2 -c{args.connections} -d{args.seconds}s over "
        f"{args.agents} agents; nginx -> granian WSGI x{args.web_workers}; PostgreSQL"
    )
    print(
        f"proposals/s {r['rps']:.0f}   p50 {r['p50_ms']:.1f} ms   p99 {r['p99_ms']:.1f} ms   "
        f"non-2xx {r['non2xx']:.0f}"
    )
    print(f"actions written this run: {sum(statuses.values()) - before}; by status: {statuses}")
    floor = results["floor"]
    print(
        f"floor (same requests without Idempotency-Key: token check and rate limit, then 400): "
        f"{floor['rps']:.0f}/s   p50 {floor['p50_ms']:.1f} ms   p99 {floor['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
