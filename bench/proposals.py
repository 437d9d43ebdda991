"""Proposal throughput and latency through the production layout, on PostgreSQL.

Each request is a full `POST /api/v1/actions`: token check, rate limit, Idempotency-Key claim,
policy evaluation (including a rate rule's count query), the action row, the stored answer and
the audit event, sealed into the chain after commit. The load comes from wrk on the same two
cores, spread over several agents (proposals are serialized per agent, as rate rules need).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/proposals.py [--seconds 10] [--agents 16]

It measures three requests at each number of connections, through the same servers and
middleware: a bare Django JSON endpoint, the "floor" (the same proposals without an
Idempotency-Key: authenticated, rate-counted and refused with 400 before any work) and the
proposals themselves. For each it prints the throughput, the latency percentiles and the CPU
each kind of process spent per request (granian, PostgreSQL, nginx, Redis, wrk), read from
/proc: where the time goes. Then the targets: proposals at least 80% of the floor at the most
connections, the floor at least half the bare endpoint, and at 4 connections p50 under 10 ms
and p99 under 25 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    PY,
    THREADS,
    cpu_per_request,
    cpu_seconds,
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


def phase_script(prefix: Path, name: str, tokens: list[str], *, with_key: bool) -> Path:
    script = prefix / f"{name}.lua"
    run_id = f"run = {abs(hash((name, os.getpid(), time.time()))) % 10**9}\n"
    script.write_text(run_id + lua(tokens, with_key=with_key))
    return script


def bare_script(prefix: Path) -> Path:
    script = prefix / "bare.lua"
    script.write_text(
        "local body = " + json.dumps(json.dumps(PROPOSAL)) + "\n"
        'request = function() return wrk.format("POST", "/bench/json", '
        '{["Content-Type"] = "application/json"}, body) end\n'
    )
    return script


def measure(port: int, seconds: int, connections: int, script: Path, path: str) -> dict:
    before = cpu_seconds()
    result = wrk(port, seconds, connections, script, path=path)
    per_request = cpu_per_request(before, cpu_seconds(), result["requests"])
    per_request["wrk"] = 1000 * result["wrk_cpu_s"] / max(result["requests"], 1)
    result["cpu_ms"] = per_request
    return result


def line(name: str, r: dict) -> str:
    cpu = "  ".join(f"{g} {ms:.2f}" for g, ms in r["cpu_ms"].items() if ms >= 0.01)
    return (
        f"  {name:<10} {r['rps']:7.0f}/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
        f"  non-2xx {r['non2xx']:.0f}   CPU ms/request: {cpu}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 32])
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
    results: dict[int, dict[str, dict]] = {}
    with processes(commands, extra):
        wait_http("http://127.0.0.1:8200/healthz")
        warm = phase_script(prefix, "warm-up", tokens, with_key=True)
        wrk(8200, 3, 4, warm, path="/api/v1/actions")
        for c in args.connections:
            results[c] = {
                "bare": measure(8200, 5, c, bare_script(prefix), "/bench/json"),
                "floor": measure(
                    8200,
                    5,
                    c,
                    phase_script(prefix, f"floor-{c}", tokens, with_key=False),
                    "/api/v1/actions",
                ),
                "proposals": measure(
                    8200,
                    args.seconds,
                    c,
                    phase_script(prefix, f"proposals-{c}", tokens, with_key=True),
                    "/api/v1/actions",
                ),
            }
    statuses = dict(
        Action.objects.filter(domain__slug="bench")
        .values_list("status")
        .order_by()
        .annotate(n=Count("id"))
    )
    print(
        f"{os.cpu_count()} cores; wrk -t2 over {args.agents} agents; nginx -> granian WSGI "
        f"x{args.web_workers} (threads {THREADS}); PostgreSQL; {time.strftime('%Y-%m-%d')}"
    )
    print(
        "  bare: POST /bench/json, a Django view that parses the body and answers JSON\n"
        "  floor: POST /api/v1/actions without Idempotency-Key: token check, rate count, 400\n"
        "  proposals: POST /api/v1/actions, each a new proposal, allowed and recorded"
    )
    for c, r in results.items():
        print(f"{c} connections:")
        for name in ("bare", "floor", "proposals"):
            print(line(name, r[name]))
    print(f"actions written this run: {sum(statuses.values()) - before}; by status: {statuses}")
    print("targets:")
    checks = []
    most = max(results)
    share = results[most]["proposals"]["rps"] / results[most]["floor"]["rps"]
    checks.append((f"proposals/s at {most} connections >= 80% of the floor", share >= 0.8, share))
    floor_share = results[most]["floor"]["rps"] / results[most]["bare"]["rps"]
    checks.append(("floor/s >= 50% of the bare endpoint's", floor_share >= 0.5, floor_share))
    if 4 in results:
        p = results[4]["proposals"]
        print(
            f"  p50 at 4 connections under 10 ms: {p['p50_ms']:.1f} ms "
            f"{'met' if p['p50_ms'] < 10 else 'NOT met'}"
        )
        print(
            f"  p99 at 4 connections under 25 ms: {p['p99_ms']:.1f} ms "
            f"{'met' if p['p99_ms'] < 25 else 'NOT met'}"
        )
    for name, met, value in checks:
        print(f"  {name}: {value:.0%} {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
