"""The production layout as `make serve` runs it: nginx, granian, uvicorn, worker and beat."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import session_cookie
from tests.servers import ROOT, Browser, Desk, _wait_http, free_port, http, server_env
from tests.test_live import open_socket, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def layout(django_db_setup, tmp_path: Path) -> Iterator[Desk]:
    if not settings.REDIS_URL:
        pytest.skip("the production layout needs Redis: run with REDIS_URL set")
    listen, asgi_port = free_port(), free_port()
    env = server_env(
        LISTEN=f"127.0.0.1:{listen}",
        WSGI_PORT=str(free_port()),
        ASGI_PORT=str(asgi_port),
        RUN_DIR=str(tmp_path / "run"),
        STATIC_ROOT=str(tmp_path / "static"),
        CELERY_QUEUE=f"incidentdesk-layout-{os.getpid()}",
        BIN=str(Path(sys.executable).parent),
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["deploy/serve.sh"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{listen}"
        try:
            _wait_http(f"{url}/healthz", process, timeout=60)
            # Websockets go to the ASGI server, which may start after the WSGI one.
            _wait_http(f"http://127.0.0.1:{asgi_port}/healthz", process, timeout=60)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{(tmp_path / 'serve.log').read_text()}") from None
        yield Desk(url=url, processes=[process])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_nginx_serves_pages_static_files_and_websockets(layout: Desk, oncall) -> None:
    anonymous = Browser(layout.url)
    status, page = anonymous.request("GET", "/login/")
    assert status == 200
    # Hashed, compressed static files from collectstatic, served through the WSGI server.
    stylesheet = re.search(r'href="(/static/incidentdesk/desk\.[0-9a-f]{12}\.css)"', page)
    assert stylesheet, page[:500]
    assert anonymous.request("GET", stylesheet.group(1))[0] == 200

    browser = Browser(layout.url, session_cookie(oncall))
    assert browser.request("GET", "/audit/")[0] == 200
    with open_socket(layout, browser.cookies) as ws:
        receive_until(ws, "has not been verified yet", timeout=10)
        status, fragment = browser.htmx_post("/audit/verify/")
        assert status == 200, fragment
        receive_until(ws, "Chain intact", timeout=30)


def test_long_polls_wait_on_the_asgi_server_without_blocking_requests(layout: Desk) -> None:
    from tests.agents import agent_token, order, propose
    from tests.servers import http

    token = agent_token("buyer", "procurement", "create_order:create")
    pending = propose(layout, token, order(amount={"value": "900", "currency": "USD"})).json()
    assert pending["status"] == "pending"
    url = f"{layout.url}/api/v1/actions/{pending['id']}?wait=6"
    auth = {"Authorization": f"Bearer {token}"}
    waiting = [
        threading.Thread(target=http, args=("GET", url), kwargs={"headers": auth})
        for _ in range(24)  # more than the WSGI server's threads
    ]
    for thread in waiting:
        thread.start()
    time.sleep(1)
    started = time.monotonic()
    reply = propose(layout, token, order())
    took = time.monotonic() - started
    for thread in waiting:
        thread.join()
    assert reply.status == 201
    assert took < 2, f"a proposal waited {took:.1f} s behind long-polls"


def test_the_layout_is_ready_with_its_worker_and_beat(layout: Desk) -> None:
    """/readyz through nginx: the database, Redis, and the separate worker and beat processes
    of the layout each beat."""
    deadline = time.monotonic() + 60
    while True:
        reply = http("GET", f"{layout.url}/readyz")
        if reply.status == 200:
            break
        assert time.monotonic() < deadline, reply.body[:500]
        time.sleep(0.5)
    body = reply.json()
    assert set(body["checks"]) == {"database", "redis", "worker", "beat"}
    assert body["failing"] == []
