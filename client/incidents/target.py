"""Acme's systems: the target system the demo agents act on and the desk's connectors undo.

Records live in collections (`accounts`, `orders`, `snapshots`, or any other name), in memory.
Agents call the tools; the desk calls the connector endpoints, signed with the shared secret
and keyed. Every write is applied once per Idempotency-Key (a repeat gets the stored answer),
and the target counts what it applied, so tests can prove nothing was applied twice.

Tools (agents):
    GET    /{collection}?limit=N&{field}=value   list records
    POST   /orders                               create_order {sku, qty, unit_price}
    POST   /accounts/discounts                   set {discount_rate} on {account_ids}
    DELETE /snapshots/{id}                       delete_snapshot

Connectors (the desk; signed, keyed):
    GET    /{collection}/{id}                    read (404: it does not exist)
    PUT    /{collection}/{id}                    restore it to the JSON body
    POST   /{collection}/{id}/cancel             compensate: mark it cancelled

People and tests:
    PUT    /_admin/{collection}/{id}             change a record by hand (drift)
    POST   /_admin/{collection}                  add records {id: record}
    GET    /_admin/{collection}                  every record
    POST   /_admin/fail                          {"count": n}: the next n writes answer 503
    GET    /_admin/stats                         {"applied": {key: times}, "writes", "reads"}

Run it: python -m incidents.target --port 8100 --secret S --demo   (from client/)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, Any]
DEMO_ACCOUNTS = 10_000


@dataclass
class Target:
    secret: str = ""
    data: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    answers: dict[str, Answer] = field(default_factory=dict)
    applied: Counter = field(default_factory=Counter)
    reads: int = 0
    writes: int = 0
    fail_next: int = 0
    bad_signatures: int = 0
    write_delay: float = 0.0  # seconds each write takes, to make a plan slow enough to watch
    read_delay: float = 0.0  # seconds each read of a record takes, to make a target slow
    orders_placed: int = 0

    def seed(self, records: dict[str, Any], collection: str = "records") -> None:
        self.data[collection].update(records)

    def seed_demo(self) -> None:
        """10,000 customer accounts, a few cloud snapshots (one critical), no orders yet."""
        self.seed(
            {
                f"acct-{n:05d}": {
                    "id": f"acct-{n:05d}",
                    "plan": "pro" if n % 5 == 0 else "standard",
                    "discount_rate": 0.0,
                }
                for n in range(1, DEMO_ACCOUNTS + 1)
            },
            "accounts",
        )
        self.seed(
            {
                "snap-staging-critical-db": {
                    "id": "snap-staging-critical-db",
                    "env": "staging",
                    "critical": True,
                    "size_gb": 800,
                    "last_read_days": 41,
                },
                "snap-dev-scratch-1": {
                    "id": "snap-dev-scratch-1",
                    "env": "dev",
                    "critical": False,
                    "size_gb": 20,
                    "last_read_days": 90,
                },
            },
            "snapshots",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if self.write_delay and scope["method"] != "GET" and "/_admin" not in scope["path"]:
            await asyncio.sleep(self.write_delay)
        if self.read_delay and scope["method"] == "GET" and "/_admin" not in scope["path"]:
            await asyncio.sleep(self.read_delay)
        query_string = scope.get("query_string", b"").decode()
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        try:
            status, answer = self.handle(
                scope["method"], scope["raw_path"].decode(), headers, body, query, query_string
            )
        except (ValueError, KeyError, TypeError) as exc:
            status, answer = 400, {"error": f"bad request: {exc!r}"}
        payload = b"" if answer is None else json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        query: dict[str, str],
        query_string: str = "",
    ) -> Answer:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "_admin":
            return self.admin(method, parts[1:], body)
        collection = parts[0]
        if method == "GET":
            self.reads += 1
            if len(parts) == 1:
                return 200, self.listing(collection, query)
            record = self.data[collection].get(parts[1])
            return (
                (404, {"error": f"no {collection} {parts[1]}"}) if record is None else (200, record)
            )
        key = headers.get("idempotency-key", "")
        if not key:
            return 400, {"error": "Idempotency-Key required"}
        tool = self.tool(method, parts)
        if tool is None and not self.signed(method, path, query_string, key, headers, body):
            self.bad_signatures += 1
            return 401, {"error": "bad signature"}
        if key in self.answers:
            return self.answers[key]
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"error": "try again"}
        answer = (
            tool(json.loads(body or b"{}")) if tool else self.restore_or_cancel(method, parts, body)
        )
        if answer[0] < 300:
            self.writes += 1
            self.applied[key] += 1
            self.answers[key] = answer
        return answer

    def signed(
        self, method: str, path: str, query: str, key: str, headers: dict[str, str], body: bytes
    ) -> bool:
        """The desk's signature: HMAC-SHA256 over timestamp, method, path, key and body; the
        timestamp must be within five minutes of now."""
        timestamp = headers.get("x-incidentdesk-timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        target = path + (f"?{query}" if query else "")
        message = f"{timestamp}\n{method}\n{target}\n{key}\n".encode() + body
        expected = hmac.new(self.secret.encode(), message, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("x-incidentdesk-signature", ""))

    def listing(self, collection: str, query: dict[str, str]) -> Any:
        limit = int(query.pop("limit", "100"))
        found = [
            r
            for r in self.data[collection].values()
            if all(str(r.get(k)) == v for k, v in query.items())
        ]
        return found[:limit]

    def tool(self, method: str, parts: list) -> Callable[[Any], Answer] | None:
        """The agents' tools (authenticated by the agent's own credentials in real life)."""
        if method == "POST" and parts == ["orders"]:
            return self.create_order
        if method == "POST" and parts == ["accounts", "discounts"]:
            return self.set_discounts
        if method == "DELETE" and len(parts) == 2 and parts[0] == "snapshots":
            return lambda _: self.delete_snapshot(parts[1])
        return None

    def create_order(self, order: Any) -> Answer:
        self.orders_placed += 1
        order_id = f"PO-{self.orders_placed:04d}"
        record = {
            "id": order_id,
            "sku": str(order["sku"]),
            "qty": int(order["qty"]),
            "unit_price": float(order["unit_price"]),
            "status": "open",
        }
        self.data["orders"][order_id] = record
        return 201, record

    def set_discounts(self, change: Any) -> Answer:
        accounts = self.data["accounts"]
        missing = [a for a in change["account_ids"] if a not in accounts]
        if missing:
            return 404, {"error": f"no accounts {missing[:5]}"}
        for account_id in change["account_ids"]:
            accounts[account_id] = {
                **accounts[account_id],
                "discount_rate": float(change["discount_rate"]),
            }
        return 200, {"updated": len(change["account_ids"])}

    def delete_snapshot(self, snapshot_id: str) -> Answer:
        if self.data["snapshots"].pop(snapshot_id, None) is None:
            return 404, {"error": f"no snapshot {snapshot_id}"}
        return 200, {"deleted": snapshot_id}

    def restore_or_cancel(self, method: str, parts: list, body: bytes) -> Answer:
        records = self.data[parts[0]]
        if method == "PUT" and len(parts) == 2:
            records[parts[1]] = json.loads(body)
            return 200, records[parts[1]]
        if method == "POST" and len(parts) == 3 and parts[2] == "cancel":
            if parts[1] not in records:
                return 404, {"error": f"no {parts[0]} {parts[1]}"}
            records[parts[1]] = {**records[parts[1]], "status": "cancelled"}
            return 200, records[parts[1]]
        return 404, {"error": "no such operation"}

    def admin(self, method: str, parts: list, body: bytes) -> Answer:
        if method == "POST" and parts == ["fail"]:
            self.fail_next = int(json.loads(body)["count"])
            return 200, {"fail_next": self.fail_next}
        if method == "GET" and parts == ["stats"]:
            return 200, {
                "applied": dict(self.applied),
                "writes": self.writes,
                "reads": self.reads,
                "bad_signatures": self.bad_signatures,
            }
        if method == "PUT" and len(parts) == 2:
            self.data[parts[0]][parts[1]] = json.loads(body)
            return 200, self.data[parts[0]][parts[1]]
        if method == "POST" and len(parts) == 1:
            self.data[parts[0]].update(json.loads(body))
            return 200, {"records": len(self.data[parts[0]])}
        if method == "GET" and len(parts) == 1:
            return 200, self.data[parts[0]]
        return 404, {"error": "no such admin path"}


def connector_spec(base_url: str, collection: str = "records") -> dict[str, Any]:
    """An HTTP connector for a collection: restore by PUT, compensate by cancel."""
    return {
        "read": {"method": "GET", "url": f"{base_url}/{collection}/{{target}}"},
        "restore": {
            "method": "PUT",
            "url": f"{base_url}/{collection}/{{target}}",
            "body": "{state}",
        },
        "compensate": {
            "method": "POST",
            "url": f"{base_url}/{collection}/{{target}}/cancel",
            "target": "{result[order_id]}",
            "expect": {"status": "cancelled"},
        },
    }


@contextmanager
def running_target(target: Target, port: int) -> Iterator[str]:
    """Serve `target` with uvicorn in a thread of this process."""
    import uvicorn

    config = uvicorn.Config(
        target, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the target server did not start")
        threading.Event().wait(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--secret", default="", help="the desk connectors' signing secret")
    parser.add_argument("--demo", action="store_true", help="start with the demo accounts")
    args = parser.parse_args()
    import uvicorn

    target = Target(secret=args.secret)
    if args.demo:
        target.seed_demo()
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(
                target,
                host=args.host,
                port=args.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        ).serve()
    )


if __name__ == "__main__":
    main()
