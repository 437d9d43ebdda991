"""One engage, 1,000 connected agents: how long until the last one knows, in production mode.

The production layout (nginx -> uvicorn for /ws/, Redis channel layer, PostgreSQL) serves the
desk. A separate process holds N agent websockets (/ws/agent/, bearer tokens) and reports, for
each kill switch version, when the last of its sockets received it. This process engages and
releases the switch in turn; a round's figure is from just before the engage call to the moment
the last socket got the engaged state. The sockets acknowledge every state, as the client does,
and each engage's time to contain (the desk's own figure: from the engage to the last
acknowledgement it recorded) is printed too; `--no-ack` leaves the acknowledgements out.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/killswitch_fanout.py [--clients 1000]

Target: p99 under 100 ms over 100 rounds (to the last socket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import PY, ensure_database, env, nginx, processes, uvicorn, wait_http  # noqa: E402
from incidentdesk.heap import settle_heap  # noqa: E402

DOMAIN = "bench-kill"


async def hold(url: str, tokens: list[str], clients: int, ack: bool) -> None:
    """The agents' side: connect, then print a line each time every socket has a version."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    seen: dict[int, list[float]] = {}
    ready = asyncio.Event()
    connected = dropped = 0

    async def agent(n: int) -> None:
        nonlocal connected, dropped
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        first = True
        while True:
            try:
                async with connect(
                    url, additional_headers=headers, open_timeout=120, max_queue=None
                ) as ws:
                    state = json.loads(await ws.recv())  # the state on connect
                    if ack:
                        await ws.send(acknowledgement(state))
                    if first:
                        first = False
                        connected += 1
                        if connected == clients:
                            ready.set()
                    async for text in ws:
                        received = time.time()
                        state = json.loads(text)
                        if ack:
                            await ws.send(acknowledgement(state))
                        times = seen.setdefault(state["version"], [])
                        times.append(received)
                        if len(times) == clients:
                            engaged = state["switches"][DOMAIN]["engaged"]
                            print(
                                json.dumps(
                                    {
                                        "version": state["version"],
                                        "engaged": engaged,
                                        "last": max(times),
                                    }
                                ),
                                flush=True,
                            )
            except (OSError, ConnectionClosed, TimeoutError):
                dropped += 1  # a socket that drops reconnects, and is sent the state again
                await asyncio.sleep(0.5)

    tasks = []
    for n in range(clients):
        tasks.append(asyncio.create_task(agent(n)))
        if n % 50 == 49:
            await asyncio.sleep(0.2)  # do not stampede the handshakes
    await ready.wait()
    print(json.dumps({"ready": clients, "dropped": dropped}), flush=True)
    await asyncio.gather(*tasks)


def acknowledgement(state: dict) -> str:
    return json.dumps({"type": "killswitch.ack", "version": state["version"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--no-ack", action="store_true", help="sockets do not acknowledge")
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The measuring processes' own full garbage collections would show up as slow rounds: they
    # are tuned as the desk's server processes are (incidentdesk/heap.py).
    settle_heap()
    if args.hold:
        import uvloop  # the agents' side as fast as Python holds 1,000 sockets in one process

        uvloop.run(hold(args.url, args.tokens.split(","), args.clients, not args.no_ack))
        return

    ensure_database(env()["DATABASE_URL"])
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env(), check=True)
    import redis

    # Channel-layer keys left by earlier runs' killed servers (group members expire only after
    # a day) would make every group send write to dead channels. The bench's Redis database
    # is its own (REDIS_URL, database 3 by default).
    bench_redis = redis.Redis.from_url(env()["REDIS_URL"])
    stale = list(bench_redis.scan_iter("asgi:*"))
    if stale:
        bench_redis.delete(*stale)
    os.environ.update(env())
    import django

    django.setup()
    from approvals.agents import token_issue
    from approvals.audit import Actor
    from approvals.killswitches import killswitch_set
    from approvals.models import KillSwitch, KillSwitchChange
    from approvals.policy import domain_ensure

    actor = Actor("user", "bench-oncall")
    domain_ensure(slug=DOMAIN, name="Bench", description="", actor=actor)
    if KillSwitch.objects.filter(scope=DOMAIN, engaged=True).exists():
        killswitch_set(scope=DOMAIN, engaged=False, actor=actor, reason="bench start")
    tokens = [
        token_issue(
            agent_name=f"bench-kill-{n}",
            domain_slug=DOMAIN,
            scopes=["*:read"],
            ttl=3600,
            actor=actor,
        ).token
        for n in range(10)
    ]
    prefix = Path(tempfile.mkdtemp(prefix="desk-bench-"))
    ws_workers = int(os.environ.get("WS_WORKERS", "1"))  # uvicorn processes for /ws/
    commands = [uvicorn(8405, ws_workers), nginx(8400, 8405, 8405, prefix)]
    figures: list[float] = []
    engage_calls: list[float] = []
    contained: list[float] = []
    with processes(commands, {"CELERY_QUEUE": f"bench-kill-{os.getpid()}"}):
        wait_http("http://127.0.0.1:8400/healthz")
        holder = subprocess.Popen(
            [
                PY,
                __file__,
                "--hold",
                "--clients",
                str(args.clients),
                "--url",
                "ws://127.0.0.1:8400/ws/agent/",
                "--tokens",
                ",".join(tokens),
                *(["--no-ack"] if args.no_ack else []),
            ],
            cwd=ROOT,
            env=os.environ,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        try:
            assert json.loads(holder.stdout.readline()).get("ready") == args.clients
            for _ in range(args.rounds):
                started = time.time()
                change = killswitch_set(scope=DOMAIN, engaged=True, actor=actor, reason="bench")
                engage_calls.append((time.time() - started) * 1000)
                line = json.loads(holder.stdout.readline())
                while line["version"] != change.pk:
                    line = json.loads(holder.stdout.readline())
                figures.append((line["last"] - started) * 1000)
                if not args.no_ack:
                    deadline = time.monotonic() + 10
                    recorded = KillSwitchChange.objects.get(pk=change.pk)
                    while recorded.contained_at is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                        recorded.refresh_from_db()
                    assert recorded.time_to_contain is not None, "not contained within 10 s"
                    assert len(recorded.awaited) == args.clients, len(recorded.awaited)
                    contained.append(recorded.time_to_contain * 1000)
                released = killswitch_set(scope=DOMAIN, engaged=False, actor=actor, reason="bench")
                while json.loads(holder.stdout.readline())["version"] != released.pk:
                    pass
                time.sleep(0.2)
        finally:
            holder.terminate()
            holder.wait(timeout=10)
    cuts = statistics.quantiles(figures, n=100, method="inclusive")
    print(
        f"{os.cpu_count()} cores; production layout (nginx -> uvicorn x{ws_workers}, Redis "
        f"channel layer); {args.clients} agent websockets; {args.rounds} engages"
    )
    engage_p50 = statistics.median(engage_calls)
    print(f"of which the engage call (commit, publish): p50 {engage_p50:.1f} ms")
    slowest = sorted(zip(figures, engage_calls, strict=True), reverse=True)[:3]
    print(
        "slowest rounds (total / engage call):",
        ", ".join(f"{t:.0f} / {e:.0f} ms" for t, e in slowest),
    )
    print("rounds, sorted:", " ".join(f"{v:.0f}" for v in sorted(figures)), "ms")
    print(
        f"engage call -> last agent knows: p50 {statistics.median(figures):.1f} ms   "
        f"p99 {cuts[98]:.1f} ms   max {max(figures):.1f} ms"
    )
    if contained:
        held = statistics.quantiles(contained, n=100, method="inclusive")
        print(
            f"time to contain (engage -> last acknowledgement, as the desk records it; "
            f"{args.clients} sockets of {len(tokens)} agents): p50 "
            f"{statistics.median(contained):.1f} ms   p99 {held[98]:.1f} ms   "
            f"max {max(contained):.1f} ms"
        )


if __name__ == "__main__":
    main()
