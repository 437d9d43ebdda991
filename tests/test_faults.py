"""Faults injected into a desk running in production mode with real processes: Redis stopped
or hanging, PostgreSQL restarted, the broker down during an engage, workers killed mid-task.

Every fault is done to servers this file starts, never to the machine's shared ones: each test
gets a private redis-server and its own database in a private PostgreSQL cluster (so no other
desk's worker, nor another test run, touches its rows), and reads what happened from there.
Each prints its figures: requests sent, errors by status, actions lost and done twice (both
must be 0). They skip in embedded mode; the last test, of the rate limit without Redis, runs in
the test process in both modes.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.fault_servers import PrivateDatabase, PrivatePostgres, PrivateRedis, manage
from tests.faults import (
    DOMAIN,
    HALF_WRITTEN,
    SCOPE,
    Agents,
    Receiver,
    faults_domain,
    log_problems,
    order,
    wait_for,
)
from tests.servers import (
    Browser,
    Desk,
    agent_socket,
    free_port,
    http,
    running_desk,
    server_env,
    start_worker,
    stop_group,
)

TEMPLATE = "desk_template"
numbers = itertools.count()


def production_only() -> None:
    if not settings.REDIS_URL:
        pytest.skip(
            "fault injection needs production mode (REDIS_URL, DATABASE_URL): it runs "
            "Celery workers as processes and restarts servers of its own"
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL cluster for the module, with a migrated template database."""
    production_only()
    server = PrivatePostgres()
    started = time.monotonic()
    try:
        server.start()
        server.create_database(TEMPLATE)
        env = server_env(DATABASE_URL=server.url(TEMPLATE), REDIS_URL="")
        migrated = manage(env, "migrate", "--no-input", "-v0")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        print(f"\nprivate PostgreSQL cluster up and migrated in {time.monotonic() - started:.1f} s")
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    production_only()
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def desk_db(cluster: PrivatePostgres, redis: PrivateRedis) -> PrivateDatabase:
    """A fresh, migrated database of the private cluster, for desks on the private Redis."""
    name = f"desk_{next(numbers)}"
    cluster.create_database(name, template=TEMPLATE)
    url = cluster.url(name)
    return PrivateDatabase(url, server_env(DATABASE_URL=url, REDIS_URL=redis.url()))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def desk_on(db: PrivateDatabase, logs: Path, **env: str) -> Any:
    return running_desk(
        logs, DATABASE_URL=db.env["DATABASE_URL"], REDIS_URL=db.env["REDIS_URL"], **env
    )


def switch_state(ws: ClientConnection, timeout: float) -> dict[str, Any]:
    state = json.loads(ws.recv(timeout=timeout))
    assert state["type"] == "killswitch.state", state
    return state


def engaged_push(ws: ClientConnection) -> dict[str, Any] | None:
    try:
        state = switch_state(ws, timeout=0.5)
    except TimeoutError:
        return None
    return state if state["switches"][DOMAIN]["engaged"] else None


def engage(desk: Desk, session: str) -> tuple[int, str]:
    """Engage the domain's switch as an on-call operator does, through the page's form."""
    browser = Browser(desk.url, {settings.SESSION_COOKIE_NAME: session})
    status, _ = browser.request("GET", "/killswitches/")
    assert status == 200
    form = {"verb": "engage", "reason": "fault drill", "confirm": DOMAIN}
    return browser.htmx_post(f"/killswitches/{DOMAIN}/", form)


def engaged(status: int, page: str) -> bool:
    return status == 200 and "otto-oncall: fault drill" in page  # the switch's history


def effects_done(db: PrivateDatabase) -> bool:
    done = "SELECT count(*) FROM approvals_killswitchchange WHERE effects_done_at IS NOT NULL"
    return bool(db.one(done))


def change_id(db: PrivateDatabase) -> int:
    return int(db.one("SELECT id FROM approvals_killswitchchange"))


def figures(fault: str, agents: Agents, lost: int, duplicates: int, **more: Any) -> None:
    tally = agents.tally
    extra = "".join(f", {name.replace('_', ' ')} {value}" for name, value in more.items())
    print(
        f"\n{fault}: {tally.sent} requests, errors {tally.errors or 'none'}, slowest "
        f"{tally.slowest:.2f} s, {len(agents.accepted)} actions, lost {lost}, "
        f"duplicates {duplicates}{extra}"
    )


def show_logs(logs: Path) -> None:
    print("\n".join(log_problems(*sorted(logs.glob("*.log")))))


def test_agent_api_keeps_answering_while_redis_is_down(
    desk_db: PrivateDatabase, redis: PrivateRedis, receiver: Receiver, tmp_path: Path
) -> None:
    seeded = desk_db.seed(webhooks=[receiver.url])
    tokens, logs = seeded["tokens"], tmp_path / "desk"
    with desk_on(desk_db, logs, API_RATE_LIMIT="100000") as desk:
        with agent_socket(desk, tokens[0]) as ws:
            before = switch_state(ws, timeout=10)
            agents = Agents(desk.url, tokens)
            agents.start()
            time.sleep(2)
            redis.stop()
            down = time.monotonic()
            sent_before = agents.tally.sent
            time.sleep(5)
            during = agents.tally.sent - sent_before
            # The socket was closed cleanly, telling the agent to come back (after any
            # verdicts of the agent's escalations it was sent before).
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(1000):
                    ws.recv(timeout=1)
            assert closed.value.rcvd is not None, "closed without a close frame"
            close_code = closed.value.rcvd.code
        redis.start()
        outage = time.monotonic() - down
        time.sleep(2)
        agents.stop()

        # Redis is back: the agent reconnects and gets the state, an engage reaches it, and
        # the worker takes tasks again (the engage's effects run).
        with agent_socket(desk, tokens[0]) as ws:
            assert switch_state(ws, timeout=10)["version"] == before["version"]
            assert engaged(*engage(desk, seeded["session"]))
            pushed = wait_for(lambda: engaged_push(ws), 10, "the engage to reach the agent")
            assert pushed["version"] > before["version"]
        wait_for(lambda: effects_done(desk_db), 20, "the engage's effects to run on the worker")

    # Deliveries whose task could not be queued wait, untried, for the periodic sweep; do
    # now what it does once they are old enough: each is sent, once.
    waiting = desk_db.sql(
        "SELECT state, attempts FROM approvals_webhookdelivery "
        "WHERE event = 'escalation.opened' AND state <> 'sent'"
    )
    assert set(waiting) <= {("pending", 0)}, waiting
    desk_db.python(
        "from datetime import timedelta\n"
        "from approvals.notifications import stalled_deliveries, webhook_deliver\n"
        "for pk in stalled_deliveries(older_than=timedelta(0)):\n"
        "    assert webhook_deliver(delivery_id=pk)"
    )
    deliveries = desk_db.sql(
        "SELECT state FROM approvals_webhookdelivery WHERE event = 'escalation.opened'"
    )
    opened = [key for key in receiver.received if " escalation.opened:" in key]
    state = desk_db.state(agents)
    lost = state["lost"] + len(deliveries) - len(opened)
    duplicates = state["duplicates"] + sum(n - 1 for n in receiver.received.values())
    figures(
        "Redis stopped",
        agents,
        lost,
        duplicates,
        redis_down=f"{outage:.1f} s",
        requests_during_outage=during,
        agent_socket_closed_with=close_code,
        webhooks=len(deliveries),
        left_to_the_sweep=len(waiting),
    )
    show_logs(logs)
    assert close_code == 1012
    assert during > 20, "the agents barely ran during the outage"
    assert agents.tally.errors == {}, agents.tally.bad_bodies[:5]
    assert lost == 0 and duplicates == 0
    assert deliveries and set(deliveries) == {("sent",)}
    assert not any(state[name] for name in HALF_WRITTEN), state
    # Said once per outage, not once per request.
    uvicorn_log = (logs / "uvicorn.log").read_text()
    assert uvicorn_log.count("Redis is unreachable") == 1, uvicorn_log[-3000:]
    assert uvicorn_log.count("Redis answers again") == 1


def test_a_hanging_redis_never_holds_a_request_for_long(
    desk_db: PrivateDatabase, redis: PrivateRedis, tmp_path: Path
) -> None:
    tokens, logs = desk_db.seed()["tokens"], tmp_path / "desk"
    with desk_on(desk_db, logs, API_RATE_LIMIT="100000") as desk:
        agents = Agents(desk.url, tokens)
        agents.start()
        time.sleep(2)
        sent_before = agents.tally.sent
        redis.hang(30)
        hung = time.monotonic()
        time.sleep(10)
        agents.stop()  # returns once every request in flight has its answer
        drained = time.monotonic() - hung
        during = agents.tally.sent - sent_before
        assert drained < 30, "requests waited for Redis to wake up"
        redis.restart()  # ends the hang
        agents.start(1)
        time.sleep(2)
        agents.stop()
    state = desk_db.state(agents)
    # A request pays at most one socket timeout: the first Redis call that times out marks
    # Redis as out for the process, and the rest of the request does without it.
    bound = settings.REDIS_SOCKET_TIMEOUT + 2
    slow = sum(1 for took, _, _ in agents.tally.durations if took > 1)
    figures(
        "Redis hanging",
        agents,
        state["lost"],
        state["duplicates"],
        requests_during_hang=during,
        requests_over_1_s=slow,
        bound=f"{bound} s",
    )
    show_logs(logs)
    assert during > 20, "the agents barely ran during the hang"
    assert agents.tally.slowest < bound
    assert agents.tally.errors == {}, agents.tally.bad_bodies[:5]
    assert state["lost"] == 0 and state["duplicates"] == 0
    assert not any(state[name] for name in HALF_WRITTEN), state


def test_an_engage_while_the_broker_is_down_takes_effect_once_it_is_back(
    desk_db: PrivateDatabase, redis: PrivateRedis, receiver: Receiver, tmp_path: Path
) -> None:
    seeded = desk_db.seed(agents=1, webhooks=[receiver.url])
    token, logs = seeded["tokens"][0], tmp_path / "desk"
    statuses: Counter[str] = Counter()
    with desk_on(desk_db, logs) as desk:
        auth = {"Authorization": f"Bearer {token}"}

        def propose(marker: str, amount: str = "10.00") -> Any:
            reply = http(
                "POST",
                f"{desk.url}/api/v1/actions",
                order(marker, amount),
                {**auth, "Idempotency-Key": marker},
            )
            statuses[str(reply.status)] += 1
            return reply

        # What the engage must stop: allowed actions not yet run, an open escalation.
        allowed = [propose(f"allowed-{n}") for n in range(3)]
        pending = propose("big", amount="900.00")
        assert [r.status for r in [*allowed, pending]] == [201] * 4
        assert pending.json()["status"] == "pending"
        redis.stop()
        started = time.monotonic()
        status, page = engage(desk, seeded["session"])
        engage_took = time.monotonic() - started
        statuses[str(status)] += 1
        assert engaged(status, page), page[:500]
        assert desk_db.one("SELECT engaged FROM approvals_killswitch WHERE scope = %s", [DOMAIN])
        # The switch holds at once, without the broker.
        refused = propose("after")
        assert refused.status == 423, refused.body[:300]
        time.sleep(3)
        assert not effects_done(desk_db), "the effects ran without a broker"
        redis.start()
        back = time.monotonic()
        wait_for(lambda: effects_done(desk_db), 30, "the engage's effects once the broker is back")
        effects_after = time.monotonic() - back
        hook = f"/hook killswitch.engaged:{change_id(desk_db)}"
        wait_for(lambda: receiver.received[hook], 20, "the engage's webhook")
        time.sleep(1)  # a second delivery, if there were one, would come now

    ids = [r.json()["id"] for r in allowed]
    cancelled = desk_db.one(
        "SELECT count(*) FROM approvals_action WHERE id::text = ANY(%s) AND status = 'cancelled'",
        [ids],
    )
    events = desk_db.sql(
        "SELECT object_id, count(*) FROM approvals_auditevent WHERE action = "
        "'action.cancelled' GROUP BY object_id"
    )
    frozen = desk_db.one(
        "SELECT status FROM approvals_action WHERE id = %s", [pending.json()["id"]]
    )
    lost = len(ids) - cancelled + (frozen != "escalated")
    duplicates = sum(n - 1 for _, n in events) + sum(n - 1 for n in receiver.received.values())
    print(
        f"\nBroker down during an engage: {statuses.total()} requests, answers "
        f"{dict(statuses)}, engage answered in {engage_took:.2f} s, effects ran "
        f"{effects_after:.1f} s after Redis was back, {cancelled} of {len(ids)} unexecuted "
        f"actions cancelled, lost {lost}, duplicates {duplicates}"
    )
    show_logs(logs)
    assert lost == 0 and duplicates == 0
    assert receiver.received[hook] == 1


def test_postgres_restarted_under_load_answers_503_then_recovers(
    cluster: PrivatePostgres, desk_db: PrivateDatabase, tmp_path: Path
) -> None:
    seeded = desk_db.seed()
    tokens, logs = seeded["tokens"], tmp_path / "desk"
    # A pool that gives up on the database after 2 s, not 10, keeps the test short.
    with desk_on(desk_db, logs, DB_POOL_TIMEOUT="2", API_RATE_LIMIT="100000") as desk:
        agents = Agents(desk.url, tokens)
        agents.start()
        time.sleep(2)
        restart_at = time.monotonic()
        cluster.restart()
        restarted = time.monotonic()
        time.sleep(4)
        agents.stop()
        # The same processes answer, through new connections: no restart of the desk.
        assert all(process.poll() is None for process in desk.processes)
        after = [r for r in agents.tally.timeline if r[0] > restarted + 1]

        # Restarted while the pool holds idle connections: the first requests after it get
        # new ones, not the broken ones.
        cluster.restart()
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        idle_restart = [
            http("GET", f"{desk.url}/api/v1/killswitches", headers=auth).status for _ in range(20)
        ]

        # Down for longer: pages and the API answer 503 once the pool gives up waiting.
        cluster.stop()
        cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={seeded['session']}"}
        page = http("GET", f"{desk.url}/killswitches/", headers=cookie)
        api = http("GET", f"{desk.url}/api/v1/killswitches", headers=auth)
        ready = http("GET", f"{desk.url}/readyz")
        alive = http("GET", f"{desk.url}/healthz")
        cluster.start()
        back = wait_for(
            lambda: http("GET", f"{desk.url}/readyz").status == 200, 20, "the desk to be ready"
        )

    state = desk_db.state(agents)
    half_written = {name: state[name] for name in HALF_WRITTEN}
    failed_after = [r for r in after if not r[2].startswith("2")]
    verified = manage(desk_db.env, "audit", "verify")
    figures(
        "PostgreSQL restarted",
        agents,
        state["lost"],
        state["duplicates"],
        restart=f"{restarted - restart_at:.1f} s",
        requests_after_restart=len(after),
        errors_after_restart=len(failed_after),
        after_an_idle_restart=dict(Counter(idle_restart)),
        half_written=sum(half_written.values()),
    )
    show_logs(logs)
    assert set(agents.tally.errors) <= {"503"}, agents.tally.errors
    assert agents.tally.bad_bodies == []  # every refusal a problem document
    assert state["lost"] == 0 and state["duplicates"] == 0
    assert half_written == dict.fromkeys(HALF_WRITTEN, 0), half_written
    assert len(after) > 20 and failed_after == [], failed_after[:5]
    assert idle_restart == [200] * 20, idle_restart
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert page.status == 503 and page.headers["Content-Type"].startswith("text/html")
    assert b"briefly unavailable" in page.body and page.headers["Retry-After"]
    assert api.status == 503 and api.headers["Content-Type"] == "application/problem+json"
    assert api.json()["status"] == 503 and api.headers["Retry-After"]
    assert ready.status == 503 and not ready.json()["checks"]["database"]["ok"]
    assert alive.status == 200  # the process answers: it is the database that is out
    assert back


def test_a_worker_killed_during_kill_switch_effects_loses_and_repeats_nothing(
    desk_db: PrivateDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    unexecuted = 1500
    seeded = desk_db.seed(agents=1, webhooks=[receiver.url], unexecuted=unexecuted)
    logs = tmp_path / "desk"
    with desk_on(desk_db, logs) as desk:
        first_worker = desk.processes[1]
        assert engaged(*engage(desk, seeded["session"]))
        change = change_id(desk_db)
        wait_for(
            lambda: desk_db.locked("approvals_killswitchchange", change),
            20,
            "the worker to start the effects",
            every=0.01,
        )
        time.sleep(0.3)  # well into them
        stop_group(first_worker, signal.SIGKILL)
        killed = time.monotonic()
        # Killed inside the effects' transaction: none of it stayed.
        assert not effects_done(desk_db)
        assert not desk_db.one("SELECT count(*) FROM approvals_action WHERE status = 'cancelled'")
        second = start_worker(logs / "celery-2.log", desk.env, desk.queue, logs)
        try:
            wait_for(lambda: effects_done(desk_db), 60, "another worker to run the effects")
            redone = time.monotonic() - killed
            hook = f"/hook killswitch.engaged:{change}"
            wait_for(lambda: receiver.received[hook], 20, "the engage's webhook")
            time.sleep(2)  # a second run of the effects or a second delivery would show now
        finally:
            stop_group(second)

    still_allowed = desk_db.one("SELECT count(*) FROM approvals_action WHERE status <> 'cancelled'")
    events = desk_db.sql(
        "SELECT object_id, count(*) FROM approvals_auditevent WHERE action = "
        "'action.cancelled' GROUP BY object_id"
    )
    lost = still_allowed + unexecuted - len(events)
    duplicates = sum(n - 1 for _, n in events) + sum(n - 1 for n in receiver.received.values())
    summary = desk_db.one("SELECT effects_summary FROM approvals_killswitchchange")
    print(
        f"\nWorker killed during kill switch effects: {unexecuted} unexecuted actions, "
        f"effects redone {redone:.1f} s after the kill ({summary}), lost {lost}, "
        f"duplicates {duplicates}"
    )
    show_logs(logs)
    assert lost == 0 and duplicates == 0
    assert summary.startswith(f"cancelled {unexecuted} ")
    assert receiver.received[hook] == 1


def test_a_worker_killed_during_webhook_delivery_loses_and_repeats_nothing(
    desk_db: PrivateDatabase, tmp_path: Path
) -> None:
    receiver = Receiver(hold=True)  # the first delivery stays in flight until released
    try:
        hooks = [f"{receiver.url}/{n}" for n in range(6)]
        seeded = desk_db.seed(agents=1, webhooks=hooks)
        logs = tmp_path / "desk"
        with desk_on(desk_db, logs) as desk:
            first_worker = desk.processes[1]
            assert engaged(*engage(desk, seeded["session"]))  # tells every webhook
            assert receiver.arrived.wait(30), "no delivery reached the receiver"
            stop_group(first_worker, signal.SIGKILL)  # while it waits for the answer
            receiver.release.set()
            second = start_worker(logs / "celery-2.log", desk.env, desk.queue, logs)
            try:
                wait_for(
                    lambda: len(receiver.received) == len(hooks),
                    60,
                    "every delivery to reach the receiver",
                )
                time.sleep(2)  # a second copy of any of them would arrive now
            finally:
                stop_group(second)
    finally:
        receiver.close()
    states = Counter(
        dict(desk_db.sql("SELECT state, count(*) FROM approvals_webhookdelivery GROUP BY state"))
    )
    lost = len(hooks) - len(receiver.received)
    duplicates = sum(n - 1 for n in receiver.received.values())
    # The delivery in flight is not lost either: once its claim is older than the lease (no
    # send takes longer), the sweep hands it to a worker again.
    resent = desk_db.python(
        "from django.db.models import F\n"
        "from approvals.models import WebhookDelivery\n"
        "from approvals.notifications import claim_lease, stalled_deliveries\n"
        "claimed = WebhookDelivery.objects.filter(state='sending')\n"
        "ids = list(claimed.values_list('pk', flat=True))\n"
        "claimed.update(attempted_at=F('attempted_at') - claim_lease())\n"
        "print(ids and set(ids) <= set(stalled_deliveries()))"
    ).strip()
    print(
        f"\nWorker killed during webhook delivery: {len(hooks)} deliveries, states "
        f"{dict(states)}, lost {lost}, duplicates {duplicates}, the one in flight handed "
        f"to the sweep once its claim lease passed: {resent}"
    )
    show_logs(logs)
    assert lost == 0 and duplicates == 0
    # The one in flight when its worker died is held by that claim, not sent again at once;
    # every other delivery is sent once, by the next worker.
    assert states == {"sent": len(hooks) - 1, "sending": 1}, (states, receiver.held)
    assert resent == "True"


@pytest.mark.django_db
def test_without_redis_the_rate_limit_counts_in_the_process_and_results_stay_unlimited(
    settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (both modes): the cache is a Redis nobody listens on."""
    from django.test import Client

    from approvals.api import ratelimit
    from incidentdesk.outage import Outage
    from tests.agents import agent_token

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    settings.API_RATE_LIMIT = 3
    monkeypatch.setattr(ratelimit, "redis_outage", Outage())
    monkeypatch.setattr(ratelimit, "requests", ratelimit.Counter())
    faults_domain()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {agent_token('agent-0', DOMAIN, SCOPE)}")

    def propose(n: int) -> Any:
        key = f"key-{n}"
        body = order(f"m{n}")
        return client.post(
            "/api/v1/actions", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
        )

    proposals = [propose(n) for n in range(4)]
    assert [r.status_code for r in proposals] == [201, 201, 201, 429]
    assert 1 <= int(proposals[3]["Retry-After"]) <= 61
    result = {"ok": True, "result": {}, "post_state": {"open_orders": 1}}
    path = f"/api/v1/actions/{proposals[0].json()['id']}/result"
    reports = [client.post(path, result, content_type="application/json") for _ in range(5)]
    assert [r.status_code for r in reports] == [200] * 5  # past the limit, and not counted
    assert propose(4).status_code == 429
    outages = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(outages) == 1, [r.getMessage() for r in caplog.records]
