"""Webhook and connector calls: no transaction open while they run, one deadline for the whole
exchange, a cap on the answer, no redirects followed; and a delivery whose worker died is sent
again, once. Against real HTTP servers started here."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from django.utils import timezone
from incidents.target import Target, running_target

from approvals.models import Action, Connector, Webhook, WebhookDelivery
from approvals.notifications import claim_lease, stalled_deliveries, webhook_deliver
from approvals.rollbacks import ConnectorError, Context, connector_call
from tests.agents import demo_domain, escalated_action
from tests.rollback_helpers import (
    SECRET,
    executed,
    records_domain,
    records_token,
    run_plan,
    session_of,
)
from tests.servers import free_port

pytestmark = pytest.mark.django_db

Behaviour = Callable[[BaseHTTPRequestHandler], None]
BIG = 1024 * 1024


class Endpoint:
    """A real HTTP server in a thread: every request is recorded, then `behaviour` answers."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.paths: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True  # the client hung up: that is the point

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                endpoint.paths.append(self.path)
                behaviour(self)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Callable[[Behaviour], Endpoint]]:
    started: list[Endpoint] = []

    def start(behaviour: Behaviour) -> Endpoint:
        started.append(Endpoint(behaviour))
        return started[-1]

    yield start
    for each in started:
        each.close()


def ok(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def redirect(handler: BaseHTTPRequestHandler) -> None:
    if handler.path == "/moved":
        return ok(handler)
    handler.send_response(302)
    handler.send_header("Location", "/moved")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def trickle(where: str) -> Behaviour:
    """A byte every tenth of a second, for 8 s, in the headers or in the body."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        out = handler.wfile
        if where == "headers":
            out.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(80):
                out.write(b"z")
                out.flush()
                time.sleep(0.1)
            out.write(b"\r\nContent-Length: 0\r\n\r\n")
        else:
            out.write(b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n")
            for _ in range(80):
                out.write(b" ")
                out.flush()
                time.sleep(0.1)
        handler.close_connection = True

    return answer


def huge(framing: str) -> Behaviour:
    """A megabyte of answer, announced by Content-Length or ended by closing."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        out = handler.wfile
        length = f"Content-Length: {BIG}\r\n" if framing == "length" else ""
        out.write(f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode())
        for _ in range(BIG // 4096):
            out.write(b"x" * 4096)
        handler.close_connection = True

    return answer


def delivery_to(url: str) -> WebhookDelivery:
    Webhook.objects.create(domain=demo_domain("devops"), url=url)
    escalated_action(tier=2, agent="janitor")
    return WebhookDelivery.objects.get()


def test_a_redirect_is_not_followed_and_fails_the_delivery(endpoint) -> None:
    server = endpoint(redirect)
    delivery = delivery_to(server.url + "/hook")
    assert webhook_deliver(delivery_id=delivery.pk) is True  # done: trying again would not help
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("failed", 1)
    assert "answered 302" in delivery.last_error and "not followed" in delivery.last_error
    assert server.paths == ["/hook"]


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_answer_is_cut_off_at_the_deadline(endpoint, settings, where) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    delivery = delivery_to(endpoint(trickle(where)).url + "/hook")
    started = time.monotonic()
    assert webhook_deliver(delivery_id=delivery.pk) is False  # to be tried again later
    assert time.monotonic() - started < 2.5
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    assert "no complete answer within 1 s" in delivery.last_error


@pytest.mark.parametrize("framing", ["length", "close"])
def test_an_answer_over_the_limit_fails_naming_the_limit(endpoint, settings, framing) -> None:
    settings.WEBHOOK_MAX_RESPONSE_BYTES = 65536
    delivery = delivery_to(endpoint(huge(framing)).url + "/hook")
    assert webhook_deliver(delivery_id=delivery.pk) is True
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert "more than the limit of 65536 bytes" in delivery.last_error


class Probe:
    """Looks at the test database from a connection of its own (made here, in any thread):
    what shows that a transaction is open elsewhere (rows of a table locked, a session idle
    in a transaction, SQLite's write lock held). An empty list: none."""

    def __init__(self) -> None:
        self.vendor, self.db = connection.vendor, dict(connection.settings_dict)

    def __call__(self, table: str) -> list[str]:
        if self.vendor == "sqlite":
            probe = sqlite3.connect(self.db["NAME"], timeout=0, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return []
            except sqlite3.OperationalError as exc:
                return [f"sqlite: {exc}"]
            finally:
                probe.close()
        db = self.db
        params = {"dbname": db["NAME"], "user": db["USER"], "host": db["HOST"] or "127.0.0.1"}
        if db.get("PASSWORD"):
            params["password"] = db["PASSWORD"]
        with psycopg.connect(**params, port=db["PORT"] or 5432, autocommit=True) as probe:
            found = []
            idle = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            ).fetchone()
            if idle and idle[0]:
                found.append(f"{idle[0]} sessions idle in a transaction")
            try:
                with probe.transaction():
                    probe.execute(f"SELECT 1 FROM {table} FOR UPDATE NOWAIT")
            except psycopg.errors.LockNotAvailable:
                found.append(f"rows of {table} are locked")
            return found


@pytest.mark.django_db(transaction=True)
def test_no_transaction_is_open_while_the_webhook_is_called(endpoint) -> None:
    worker, probe = connections["default"], Probe()
    seen: dict[str, Any] = {}

    def check(handler: BaseHTTPRequestHandler) -> None:
        seen["worker in a transaction"] = worker.in_atomic_block
        seen["open elsewhere"] = probe("approvals_webhookdelivery")
        ok(handler)

    delivery = delivery_to(endpoint(check).url + "/hook")
    assert webhook_deliver(delivery_id=delivery.pk) is True
    assert seen == {"worker in a transaction": False, "open elsewhere": []}
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("sent", 1)


def test_a_delivery_whose_worker_died_mid_call_is_sent_again_once(endpoint) -> None:
    server = endpoint(ok)
    delivery = delivery_to(server.url + "/hook")
    # A worker claimed it and died before writing the outcome.
    died_at = timezone.now() - claim_lease() - timedelta(seconds=1)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state="sending", attempts=1, attempted_at=died_at
    )
    assert stalled_deliveries() == [delivery.pk]
    assert webhook_deliver(delivery_id=delivery.pk) is True
    assert webhook_deliver(delivery_id=delivery.pk) is True  # a duplicate task: nothing to do
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("sent", 2)
    assert server.paths == ["/hook"]
    assert stalled_deliveries() == []


def test_a_delivery_being_sent_is_left_to_its_worker(endpoint) -> None:
    server = endpoint(ok)
    delivery = delivery_to(server.url + "/hook")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state="sending", attempts=1, attempted_at=timezone.now()
    )
    assert stalled_deliveries() == []
    assert webhook_deliver(delivery_id=delivery.pk) is True
    assert server.paths == []
    assert WebhookDelivery.objects.get().state == "sending"


def read_from(url: str, *, timeout: float = 5.0) -> Any:
    connector = Connector(
        kind="http",
        tool="t",
        secret=SECRET,
        timeout_seconds=timeout,
        max_attempts=1,
        spec={"read": {"method": "GET", "url": url}},
    )
    context = Context(action=Action(tool="t", params={}), target="r1", key="k")
    return connector_call(connector, "read", context)


def test_connector_calls_keep_the_same_limits(endpoint, settings) -> None:
    with pytest.raises(ConnectorError, match="answered 302, a redirect: redirects are not"):
        read_from(endpoint(redirect).url + "/records/{target}")

    started = time.monotonic()
    with pytest.raises(ConnectorError, match="no complete answer within 1 s"):
        read_from(endpoint(trickle("headers")).url + "/records/{target}", timeout=1)
    assert time.monotonic() - started < 2.5

    settings.CONNECTOR_MAX_RESPONSE_BYTES = 1000
    with pytest.raises(ConnectorError, match="more than the limit of 1000 bytes"):
        read_from(endpoint(huge("length")).url + "/records/{target}")


class WatchedTarget(Target):
    """The rollback target, looking at the desk's database while each write is applied."""

    def __init__(self, watch: Callable[[], list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch, self.seen = watch, []

    def handle(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method != "GET" and "/_admin" not in path:
            self.seen.extend(self.watch())
        return super().handle(method, path, *args, **kwargs)


@pytest.mark.django_db(transaction=True)
def test_rollback_connector_calls_hold_no_transaction() -> None:
    probe = Probe()
    served = WatchedTarget(lambda: probe("approvals_rollbackplan"), secret=SECRET)
    with running_target(served, free_port()) as url:
        records_domain(url)
        token = records_token()
        executed(
            token,
            targets=["r1", "r2"],
            pre={"r1": {"v": 1}, "r2": {"v": 2}},
            post={"r1": {"v": 10}, "r2": {"v": 20}},
        )
        served.seed({"r1": {"v": 10}, "r2": {"v": 20}})
        plan = run_plan(session_of())
    assert plan.state == "completed"
    assert served.writes == 2 and served.seen == []
