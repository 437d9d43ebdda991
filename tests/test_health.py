"""/healthz says the process answers; /readyz says whether the desk can work, and names what
cannot: the database, Redis, a worker, beat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.servers import Desk, http, running_desk, stop_group

pytestmark = pytest.mark.django_db(transaction=True)


def readiness(desk: Desk) -> tuple[int, dict[str, Any]]:
    reply = http("GET", f"{desk.url}/readyz")
    return reply.status, reply.json()


def until(desk: Desk, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = readiness(desk)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz stayed {got}: {body}"
        time.sleep(0.3)


def test_healthz_answers_without_asking_anything_else(desk: Desk) -> None:
    reply = http("GET", f"{desk.url}/healthz")
    assert reply.status == 200 and reply.body == b"ok"


def test_readyz_is_ready_once_a_worker_and_beat_beat(tmp_path: Path) -> None:
    with running_desk(tmp_path, HEARTBEAT_SECONDS="1", READY_HEARTBEAT_SECONDS="3") as desk:
        body = until(desk, 200, timeout=30)
    assert body["ready"] is True and body["failing"] == []
    names = {"database", "worker", "beat"} | ({"redis"} if settings.REDIS_URL else set())
    assert set(body["checks"]) == names
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["worker"]["detail"].startswith("last heartbeat")


@pytest.mark.skipif(not settings.REDIS_URL, reason="embedded mode's worker is in the server")
def test_readyz_turns_unhealthy_when_the_worker_stops_and_names_it(tmp_path: Path) -> None:
    with running_desk(tmp_path, HEARTBEAT_SECONDS="1", READY_HEARTBEAT_SECONDS="3") as desk:
        until(desk, 200, timeout=30)
        worker = desk.processes[-1]
        stop_group(worker)
        body = until(desk, 503, timeout=15)
        http_ok = http("GET", f"{desk.url}/healthz").status
    assert body["ready"] is False
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert not body["checks"]["worker"]["ok"]
    assert "more than 3 s" in body["checks"]["worker"]["detail"]
    assert any(line.startswith("worker: last heartbeat") for line in body["failing"])
    assert http_ok == 200  # the process itself still answers
