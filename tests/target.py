"""A target system for rollback tests and benchmarks: records behind a small HTTP API.

It checks the desk's request signatures, applies each Idempotency-Key once (a repeat gets the
stored answer), and counts what it applied, so tests can prove nothing was applied twice.

    GET  /records/{id}                  the record, or 404
    PUT  /records/{id}                  restore it to the JSON body (signed, keyed)
    POST /records/{id}/cancel           compensate: mark it cancelled (signed, keyed)
    PUT  /_admin/records/{id}           set a record directly (a person's change: drift)
    POST /_admin/fail                   {"count": n}: the next n writes answer 503
    GET  /_admin/stats                  {"applied": {key: times}, "writes": n, "reads": n}

Run alone: python -m tests.target --port 8100 --secret s3cret
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Target:
    secret: str = ""
    records: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    writes: int = 0
    fail_next: int = 0
    bad_signatures: int = 0
    write_delay: float = 0.0  # seconds each write takes, to make a plan slow enough to watch

    def seed(self, records: dict[str, Any]) -> None:
        self.records.update(records)

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
        status, answer = self.handle(scope["method"], scope["path"], headers, body)
        payload = b"" if answer is None else json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, Any]:  # fmt: skip
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "_admin":
            return self.admin(method, parts[1:], body)
        if parts[0] != "records" or len(parts) < 2:
            return 404, {"error": "no such path"}
        record_id = parts[1]
        if method == "GET" and len(parts) == 2:
            self.reads += 1
            if record_id not in self.records:
                return 404, {"error": f"no record {record_id}"}
            return 200, self.records[record_id]
        expected = hmac.new(self.secret.encode(), headers.get("x-incidentdesk-timestamp", "")
                            .encode() + b"." + body, hashlib.sha256).hexdigest()  # fmt: skip
        if not hmac.compare_digest(expected, headers.get("x-incidentdesk-signature", "")):
            self.bad_signatures += 1
            return 401, {"error": "bad signature"}
        key = headers.get("idempotency-key", "")
        if not key:
            return 400, {"error": "Idempotency-Key required"}
        if key in self.answers:
            return self.answers[key]
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"error": "try again"}
        self.writes += 1
        if method == "PUT" and len(parts) == 2:
            self.records[record_id] = json.loads(body)
        elif method == "POST" and parts[2:] == ["cancel"]:
            if record_id not in self.records:
                return 404, {"error": f"no record {record_id}"}
            self.records[record_id] = {**self.records[record_id], "status": "cancelled"}
        else:
            return 404, {"error": "no such operation"}
        self.applied[key] += 1
        answer = (200, self.records[record_id])
        self.answers[key] = answer
        return answer

    def admin(self, method: str, parts: list[str], body: bytes) -> tuple[int, Any]:
        if method == "PUT" and parts[:1] == ["records"]:
            self.records[parts[1]] = json.loads(body)
            return 200, self.records[parts[1]]
        if method == "POST" and parts == ["records"]:
            self.records.update(json.loads(body))
            return 200, {"records": len(self.records)}
        if method == "POST" and parts == ["fail"]:
            self.fail_next = int(json.loads(body)["count"])
            return 200, {"fail_next": self.fail_next}
        if method == "GET" and parts == ["stats"]:
            return 200, {"applied": dict(self.applied), "writes": self.writes,
                         "reads": self.reads, "bad_signatures": self.bad_signatures}  # fmt: skip
        if method == "GET" and parts[:1] == ["records"] and len(parts) == 1:
            return 200, self.records
        return 404, {"error": "no such admin path"}


def connector_spec(base_url: str) -> dict[str, Any]:
    """An HTTP connector for this target: restore by PUT, compensate by cancel."""
    return {
        "read": {"method": "GET", "url": base_url + "/records/{target}"},
        "restore": {"method": "PUT", "url": base_url + "/records/{target}", "body": "{state}"},
        "compensate": {
            "method": "POST",
            "url": base_url + "/records/{target}/cancel",
            "target": "{result[order_id]}",
            "expect": {"status": "cancelled"},
        },
    }


@contextmanager
def running_target(target: Target, port: int) -> Iterator[str]:
    """Serve `target` with uvicorn in a thread of this process."""
    import uvicorn

    config = uvicorn.Config(target, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", access_log=False)  # fmt: skip
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    import uvicorn

    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(Target(secret=args.secret), host="127.0.0.1", port=args.port,
                           log_level="warning", lifespan="off", access_log=False)
        ).serve()
    )  # fmt: skip


if __name__ == "__main__":
    main()
