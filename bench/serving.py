"""Serving layouts compared on this machine: JSON POST + one insert, and websocket fan-out.

For each layout it starts the servers in production mode (PostgreSQL + Redis), drives
`POST /bench/insert` (an audit event written per request) with wrk, and prints requests
per second and latency percentiles. Then, for the layouts that carry websockets, it connects
N clients to /ws/desk/ and times one group message reaching all of them.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/incidentdesk_bench \\
    REDIS_URL=redis://127.0.0.1:6379/3 python bench/serving.py [--seconds 10] [--clients 500]

Needs wrk and nginx (apt-get install wrk nginx-light). Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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

LUA = """
wrk.method = "POST"
wrk.body = '{"tool": "create_order", "params": {"sku": "A-100", "qty": 3}, "amount": "120.00"}'
wrk.headers["Content-Type"] = "application/json"
"""


def layouts(prefix: Path) -> dict[str, tuple[list[list[str]], int, bool]]:
    """name -> (commands, port to load, carries websockets)."""
    return {
        "granian WSGI x2 (HTTP only)": (
            [granian("wsgi", "incidentdesk.wsgi:application", 8101, 2)],
            8101,
            False,
        ),
        "uvicorn ASGI x2": ([uvicorn(8102, 2)], 8102, True),
        "granian ASGI x2": (
            [granian("asgi", "incidentdesk.asgi:application", 8103, 2)],
            8103,
            True,
        ),
        "nginx -> granian WSGI x2 + uvicorn ASGI x1 for /ws/": (
            [
                granian("wsgi", "incidentdesk.wsgi:application", 8104, 2),
                uvicorn(8105, 1),
                nginx(8100, 8104, 8105, prefix),
            ],
            8100,
            True,
        ),
    }


async def fanout(port: int, clients: int, rounds: int) -> list[float]:
    """Time from one group_send until every connected client has the message, in ms."""
    import django

    os.environ.update(env())
    django.setup()
    from channels.layers import get_channel_layer
    from django.test import Client
    from websockets.asyncio.client import connect

    from approvals.audit import Actor
    from approvals.desk import operator_ensure

    user, _ = await asyncio.to_thread(
        operator_ensure,
        username="bench-viewer",
        role="viewer",
        password="x" * 20,
        actor=Actor.system("bench"),
    )
    client = Client()
    await asyncio.to_thread(client.force_login, user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    sockets = []
    for _ in range(clients):
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/desk/?topics=audit",
            origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
            additional_headers={"Cookie": cookie},
            proxy=None,
            compression=None,
        )
        await ws.recv()  # the state sent on connect
        sockets.append(ws)
    layer = get_channel_layer()
    timings = []
    # A message the consumer answers for every client: the chain status.
    from approvals import live
    from approvals.models import ChainVerification

    verification = await asyncio.to_thread(ChainVerification.objects.create, requested_by="bench")
    for _ in range(rounds):
        start = time.perf_counter()
        await layer.group_send(
            live.AUDIT_GROUP,
            live.message(live.AUDIT_VERIFICATION, verification_id=verification.pk),
        )
        await asyncio.gather(*(ws.recv() for ws in sockets))
        timings.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--clients", type=int, default=500, help="websocket clients")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--path",
        default="/bench/insert",
        help="/bench/insert writes a plain row; /bench/audited appends an audit event",
    )
    parser.add_argument("--only", default="", help="run only layouts whose name contains this")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y wrk nginx-light")
    ensure_database(env()["DATABASE_URL"])
    subprocess.run([PY, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env(), check=True)
    prefix = Path(tempfile.mkdtemp(prefix="desk-nginx-"))
    script = prefix / "post.lua"
    script.write_text(LUA)
    print(
        f"{os.cpu_count()} cores; wrk -t2 -c{args.connections} -d{args.seconds}s; "
        f"{args.clients} websocket clients x {args.rounds} rounds"
    )
    print(
        f"{'layout':<55} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'fan-out p50':>12} {'fan-out max':>12}"
    )
    for name, (commands, port, websockets) in layouts(prefix).items():
        if args.only not in name:
            continue
        with processes(commands):
            wait_http(f"http://127.0.0.1:{port}/healthz")
            wrk(port, 2, args.connections, script)  # warm-up
            result = wrk(port, args.seconds, args.connections, script, args.path)
            fan = "-"
            fan_max = "-"
            if websockets:
                times = asyncio.run(fanout(port, args.clients, args.rounds))
                fan = f"{statistics.median(times):.1f} ms"
                fan_max = f"{max(times):.1f} ms"
        print(
            f"{name:<55} {result['rps']:>8.0f} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} "
            f"{result['non2xx']:>7.0f} {fan:>12} {fan_max:>12}",
            flush=True,
        )


if __name__ == "__main__":
    main()
