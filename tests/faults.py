"""Fault injection for tests: the faults domain and its seed data, agents that keep proposing
through a fault, what a half-written change would look like, and an endpoint that counts
webhooks. The servers the faults are done to are in tests/fault_servers.py."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DOMAIN = "faults"
SCOPE = "create_order:create"
# Small orders are allowed; big ones escalate to tier 2 (a timer, a live push, a webhook).
POLICY = {
    "tools": [
        {
            "name": "create_order",
            "verb": "create",
            "amount": {"params": ["total"], "currency": "USD"},
        },
    ],
    "rules": [
        {
            "id": "spend-cap",
            "when": {"amount_over": "500"},
            "outcome": "escalate",
            "tier": 2,
            "reason": "over the spend cap",
        },
        {
            "id": "allow-orders",
            "match": {"tools": ["create_order"]},
            "outcome": "allow",
            "reason": "small orders",
        },
    ],
    "default_outcome": "deny",
    "default_tier": None,
}


def order(marker: str, amount: str = "10.00") -> dict[str, Any]:
    """A proposal the policy allows (or, over 500, escalates), named by `marker`."""
    return {
        "session_id": "faults",
        "tool": "create_order",
        "verb": "create",
        "params": {"marker": marker, "total": amount},
        "amount": {"value": amount, "currency": "USD"},
        "pre_action_state": {"open_orders": 0},
    }


def faults_domain(webhooks: Sequence[str] = ()) -> None:
    """The domain the fault tests' agents act in, with its policy and `webhooks`."""
    from approvals.audit import Actor
    from approvals.models import Webhook
    from approvals.policy import PolicyDocument, domain_ensure, policy_publish

    actor = Actor.system("tests")
    domain, created = domain_ensure(slug=DOMAIN, name="Faults", description="", actor=actor)
    if created:
        document = PolicyDocument.model_validate(POLICY)
        policy_publish(domain=domain, document=document, actor=actor)
    Webhook.objects.bulk_create(Webhook(domain=domain, url=url) for url in webhooks)


def unexecuted_actions(token: str, count: int) -> None:
    """`count` allowed actions that have not run yet: work for an engage's effects. The first
    is proposed through the service; the rest are copies of it."""
    from approvals.agents import token_authenticate
    from approvals.api import ProposalData
    from approvals.models import Action
    from tests.agents import record_proposal

    data = ProposalData(
        session_id="faults",
        step_index=None,
        tool="create_order",
        verb="create",
        params={"marker": "0", "total": "10"},
        target_ids=[],
        amount=None,
        currency="",
        blast_records=None,
        blast_population=None,
        pre_action_state={"open_orders": 0},
        compensation=None,
    )
    first = record_proposal(token_authenticate(token), data)
    assert first.status == "allowed", first.rule
    fields = {f.attname: getattr(first, f.attname) for f in Action._meta.concrete_fields}
    Action.objects.bulk_create(
        Action(**{**fields, "id": uuid.uuid4(), "params": {"marker": str(n)}})
        for n in range(1, count)
    )


def seed(*, agents: int = 4, webhooks: Sequence[str] = (), unexecuted: int = 0) -> dict[str, Any]:
    """Run in a desk process on a private database: the faults domain, a token for each agent,
    an on-call operator's session (its cookie), and `unexecuted` allowed actions not yet run."""
    from django.conf import settings
    from django.test import Client

    from approvals.audit import Actor
    from approvals.core import ONCALL
    from approvals.desk import operator_ensure
    from tests.agents import agent_token

    faults_domain(webhooks)
    tokens = [agent_token(f"agent-{n}", DOMAIN, SCOPE) for n in range(agents)]
    oncall, _ = operator_ensure(
        username="otto-oncall", role=ONCALL, password=uuid.uuid4().hex, actor=Actor.system("tests")
    )
    client = Client()
    client.force_login(oncall)
    if unexecuted:
        unexecuted_actions(tokens[0], unexecuted)
    return {"tokens": tokens, "session": client.cookies[settings.SESSION_COOKIE_NAME].value}


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """The first true value `check` returns; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


STATE_QUERIES = {
    "missing": "SELECT count(*) FROM unnest(%(accepted)s::text[]) m WHERE NOT EXISTS "
    "(SELECT 1 FROM approvals_action a WHERE a.params->>'marker' = m)",
    "results_unrecorded": "SELECT count(*) FROM unnest(%(reported)s::uuid[]) r WHERE NOT "
    "EXISTS (SELECT 1 FROM approvals_action a WHERE a.id = r AND a.status = 'succeeded')",
    "duplicates": "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM "
    "approvals_action GROUP BY params->>'marker') c",
    "actions_without_audit": "SELECT count(*) FROM approvals_action a WHERE NOT EXISTS "
    "(SELECT 1 FROM approvals_auditevent e WHERE e.object_type = 'action' AND "
    "e.object_id = a.id::text AND e.action IN ('action.allowed', 'action.escalated'))",
    "results_without_audit": "SELECT count(*) FROM approvals_action a WHERE a.status = "
    "'succeeded' AND NOT EXISTS (SELECT 1 FROM approvals_auditevent e WHERE "
    "e.object_id = a.id::text AND e.action = 'action.succeeded')",
    "actions_without_answer": "SELECT count(*) FROM approvals_action a WHERE NOT EXISTS "
    "(SELECT 1 FROM approvals_idempotencyrecord r WHERE r.response_body->>'id' = a.id::text)",
    "answers_without_action": "SELECT count(*) FROM approvals_idempotencyrecord r WHERE NOT "
    "EXISTS (SELECT 1 FROM approvals_action a WHERE a.id::text = r.response_body->>'id')",
}
HALF_WRITTEN = (
    "actions_without_audit",
    "results_without_audit",
    "actions_without_answer",
    "answers_without_action",
)


# What agents are told, and what the desk recorded, for one fault.


@dataclass
class Tally:
    """Every request the agents sent: its outcome ("201", "503", "connection error", ...)
    and how long it took."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    durations: list[tuple[float, str, str]] = field(default_factory=list)  # (s, what, outcome)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # (sent at, what, outcome)
    bad_bodies: list[str] = field(default_factory=list)  # errors that were not problem documents

    def add(self, what: str, outcome: str, started: float, took: float) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.durations.append((took, what, outcome))
            self.timeline.append((started, what, outcome))

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.outcomes.items()) if not k.startswith("2")}

    @property
    def slowest(self) -> float:
        return max((d for d, _, _ in self.durations), default=0.0)


@dataclass
class Reply:
    outcome: str  # the status, or the kind of failure
    body: Any = None
    content_type: str = ""


def request(method: str, url: str, body: Any, headers: dict[str, str], timeout: float) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Reply(
                str(response.status),
                json.loads(response.read()),
                response.headers.get("Content-Type", ""),
            )
    except urllib.error.HTTPError as error:
        raw = error.read()
        content_type = error.headers.get("Content-Type", "")
        parsed: Any = raw.decode(errors="replace")
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
        return Reply(str(error.code), parsed, content_type)
    except TimeoutError:
        return Reply("client timeout")
    except (urllib.error.URLError, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Reply("client timeout" if isinstance(reason, TimeoutError) else "connection error")


@dataclass
class Agents:
    """Agents that propose and report in a loop through the HTTP agent API, as a client does:
    each proposal keeps its Idempotency-Key and is retried until the desk takes it, and each
    result of an allowed action is retried until the desk records it.

    Every `escalate_every`-th proposal is over the spend cap, so it escalates (a timer, a live
    push, a webhook) instead of being allowed."""

    url: str
    tokens: list[str]
    escalate_every: int = 5
    pause: float = 0.02
    request_timeout: float = 60
    tally: Tally = field(default_factory=Tally)
    accepted: dict[str, str] = field(default_factory=dict)  # marker -> action id
    escalated: set[str] = field(default_factory=set)  # action ids
    reported: set[str] = field(default_factory=set)  # action ids whose result was taken
    abandoned: list[str] = field(default_factory=list)  # markers never accepted
    unreported: list[str] = field(default_factory=list)  # allowed ids whose report never landed
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    give_up_after: float = 60
    rounds: int = 0

    def start(self, agents: int | None = None) -> None:
        """Start the agents (the first `agents` of them), or start them again after a stop."""
        self.stopping.clear()
        self.rounds += 1
        for n, token in enumerate(self.tokens[:agents]):
            thread = threading.Thread(target=self._run, args=(n, token), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 90) -> None:
        """Stop starting new work; wait for what each agent has in hand to be taken."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError(f"an agent was still busy {timeout} s after the stop")
        self.threads.clear()

    def _send(
        self, what: str, method: str, path: str, token: str, body: Any, key: str | None = None
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"}
        if key:
            headers["Idempotency-Key"] = key
        started = time.monotonic()
        reply = request(method, self.url + path, body, headers, self.request_timeout)
        self.tally.add(what, reply.outcome, started, time.monotonic() - started)
        if not reply.outcome.startswith(("2", "client", "connection")) and (
            reply.content_type != "application/problem+json"
        ):
            with self.tally.lock:
                self.tally.bad_bodies.append(f"{what} {reply.outcome}: {str(reply.body)[:300]}")
        return reply

    def _run(self, n: int, token: str) -> None:
        count = 0
        while not self.stopping.is_set():
            count += 1
            marker = f"{n}-{self.rounds}-{count}-{uuid.uuid4().hex[:8]}"
            big = count % self.escalate_every == 0
            self._one(token, marker, big)
            time.sleep(self.pause)

    def _retrying(
        self, attempt: Callable[[], Reply], done: Callable[[Reply], bool]
    ) -> Reply | None:
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            reply = attempt()
            if done(reply):
                return reply
            time.sleep(0.2)
        return None

    def _one(self, token: str, marker: str, big: bool) -> None:
        body = order(marker, amount="900.00" if big else "10.00")
        key = uuid.uuid4().hex
        proposed = self._retrying(
            lambda: self._send("propose", "POST", "/api/v1/actions", token, body, key),
            lambda reply: reply.outcome in ("200", "201"),
        )
        if proposed is None:
            self.abandoned.append(marker)
            return
        action_id = proposed.body["id"]
        with self.tally.lock:
            self.accepted[marker] = action_id
        if proposed.body["status"] == "pending":
            self.escalated.add(action_id)
            return
        result = {"ok": True, "result": {"order": marker}, "post_state": {"open_orders": 1}}
        path = f"/api/v1/actions/{action_id}/result"
        reported = self._retrying(
            lambda: self._send("result", "POST", path, token, result),
            lambda reply: reply.outcome == "200",
        )
        with self.tally.lock:
            (self.reported.add(action_id) if reported else self.unreported.append(action_id))


@dataclass
class Receiver:
    """A webhook endpoint that counts what it is sent, per delivery (path, event, subject).

    With `hold` set, the first request it gets waits, unanswered, until `release` is set:
    a sender caught in the middle of a delivery."""

    hold: bool = False
    received: Counter[str] = field(default_factory=Counter)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    held: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = f"{self.path} {body['event']}:{body.get('action_id') or body.get('version')}"
                with receiver.lock:
                    receiver.received[key] += 1
                    first = not receiver.arrived.is_set()
                    receiver.arrived.set()
                if receiver.hold and first:
                    receiver.held = key
                    receiver.release.wait(30)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender that died mid-request: nothing to answer

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def log_problems(*paths: Path) -> list[str]:
    """Tracebacks and error lines the servers wrote, as 'file: first line of each'."""
    found = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback") or " ERROR" in line or "CRITICAL" in line:
                found.append(f"{path.name}: {line[:200]}")
    return found
