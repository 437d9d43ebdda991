from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from approvals import audit, live
from approvals.killswitches import engaged_switches, killswitch_state, state_for
from approvals.models import Action, AgentToken, RollbackPlan
from approvals.operators import operator_live_permissions
from approvals.queue import (
    QueueFilters,
    decision_context,
    frozen_context,
    open_escalations,
    queue_count,
    queue_groups,
)
from approvals.roles import perm
from approvals.rollbacks import plan_context
from approvals.tokens import TokenError, token_authenticate
from incidentdesk.outage import REDIS_DOWN, redis_outage

logger = logging.getLogger(__name__)

# Sent when the credentials a socket was opened with no longer hold: a client should not
# reconnect with them (4000-4999 are the application's own close codes).
CLOSE_ACCESS_ENDED = 4401
# Sent when the channel layer failed: reconnect (the state comes whole on connect).
CLOSE_SERVICE_RESTART = 1012

# One rendering per message and permission variant, shared by every socket in this process:
# a push to 500 open pages renders its fragment once, not 500 times.
_RENDERS_KEPT = 256
_renders: OrderedDict[tuple[Any, ...], asyncio.Future[Any]] = OrderedDict()


async def render_once(key: tuple[Any, ...], render: Callable[[], Any]) -> Any:
    future = _renders.get(key)
    if future is None:
        future = asyncio.get_running_loop().create_future()
        _renders[key] = future
        while len(_renders) > _RENDERS_KEPT:
            _renders.popitem(last=False)
        try:
            future.set_result(await database_sync_to_async(render)())
        except Exception as exc:
            _renders.pop(key, None)
            future.set_exception(exc)
    return await future


def chain_status_html(verification_id: int | None, *, can_verify: bool) -> str | None:
    """The chain status fragment, or None when the message is about an outdated run."""
    latest = audit.latest_verification()
    if verification_id is not None and (latest is None or latest.pk != verification_id):
        return None
    return render_to_string(
        "approvals/audit.html#chain_status", {"verification": latest, "can_verify": can_verify}
    )


@dataclass(frozen=True)
class QueueChange:
    """One escalation change, loaded once per message for every page in this process."""

    action: Action | None  # None once it left the queue
    queue_count: int
    frozen: dict[str, Any]


def queue_change(action_id: str) -> QueueChange:
    return QueueChange(
        open_escalations().filter(pk=action_id).first(), queue_count(), frozen_context()
    )


def queue_push_html(action_id: str, change: QueueChange, *, rows: bool, insert: bool,
                    count: bool) -> str:  # fmt: skip
    return render_to_string(
        "approvals/queue_push.html",
        {"action_id": action_id, "a": change.action, "rows": rows, "insert": insert,
         "count": count, "queue_count": change.queue_count, "oob": True, **change.frozen},
    )  # fmt: skip


def queue_groups_html(filters: QueueFilters) -> str:
    groups, total = queue_groups(filters)
    context = {"groups": groups, "total": total, "filters": filters, "oob": True,
               **frozen_context()}  # fmt: skip
    return render_to_string("approvals/queue.html#groups", context)


def banner_html() -> str:
    return render_to_string(
        "approvals/killswitch_banner.html",
        {"engaged_switches": engaged_switches(), "oob": True},
    )


def count_html() -> str:
    return render_to_string(
        "approvals/queue_count.html", {"queue_count": queue_count(), "oob": True}
    )


def plan_progress_html(plan_id: str, can_run: bool) -> str:
    plan = RollbackPlan.objects.select_related("domain").filter(pk=plan_id).first()
    if plan is None:
        return ""
    granted = frozenset({perm("run_rollback")} if can_run else set())
    context = {**plan_context(plan, Permissions(granted)), "oob": True}
    return render_to_string("approvals/rollback_plan.html#progress", context)


@functools.cache
def live_in_sync_html() -> str:
    return render_to_string("approvals/live_status.html", {"live_state": "open", "oob": True})


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class Permissions:
    """Stands in for the user where a rule asks `has_perm` or who they are (renders for live
    pushes)."""

    def __init__(self, granted: frozenset[str], username: str = "") -> None:
        self.granted, self.username = granted, username

    def has_perm(self, name: str) -> bool:
        return name in self.granted

    def get_username(self) -> str:
        return self.username


def decision_html(action_id: str, permissions: Permissions) -> str:
    action = Action.objects.select_related("agent", "domain").filter(pk=action_id).first()
    if action is None:
        return ""
    context = {**decision_context(action, permissions), "oob": True}
    return render_to_string("approvals/review.html#decision", context)


class LiveConsumer(AsyncWebsocketConsumer):
    """A socket whose channel layer (Redis) fails is closed cleanly rather than crashing:
    its cleanup runs, the client is told to come back (1012) and gets the whole state when it
    does, and the log says so once per outage (incidentdesk/outage.py), not once a socket."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except REDIS_DOWN as exc:
            redis_outage.failed("a websocket's channel layer", exc)
            with contextlib.suppress(Exception):
                await self.disconnect(CLOSE_SERVICE_RESTART)  # cleanup first, then groups
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})

    # Every LIVE_RECHECK_SECONDS the socket checks that what opened it still holds: a backstop
    # for changes no message announced (an expiry, an admin's edit, a revocation by another
    # process in embedded mode, where the channel layer lives in this one).
    recheck: asyncio.Task[None] | None = None

    def start_rechecks(self) -> None:
        self.recheck = asyncio.get_running_loop().create_task(self._recheck_periodically())

    def stop_rechecks(self) -> None:
        if self.recheck is not None:
            self.recheck.cancel()

    async def _recheck_periodically(self) -> None:
        while True:
            await asyncio.sleep(settings.LIVE_RECHECK_SECONDS)
            await self.access_changed({})

    async def access_changed(self, event: dict[str, Any]) -> None:
        raise NotImplementedError


class DeskConsumer(LiveConsumer):
    """The operators' live channel: pushes the same template partials the pages render.

    Anonymous users and users without desk access are refused at the handshake. On every
    connect the current state is sent, so a page that was disconnected catches up.
    """

    joined: list[str]
    permissions: set[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.joined = []
        if user is None or not user.is_authenticated:
            await self.close()
            return
        self.user_id, self.username = user.pk, user.get_username()
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        self.permissions = await database_sync_to_async(user.get_all_permissions)()
        if perm("view_desk") not in self.permissions:
            await self.close()
            return
        # Signing out or a role change closes the page at once (through this group); anything
        # else that ends the session (expiry, an admin's edit) within LIVE_RECHECK_SECONDS.
        await self.join(live.operator_group(self.user_id))
        # A page asks for the topics it shows (?topics=audit); it gets those its user may see.
        query = parse_qs(self.scope.get("query_string", b"").decode())
        topics = {t for value in query.get("topics", []) for t in value.split(",")}
        if "audit" in topics and perm("view_audit") in self.permissions:
            await self.join(live.AUDIT_GROUP)
        self.rows = "queue" in topics
        self.count = "count" in topics
        self.filters, _ = QueueFilters.from_query({k: v[0] for k, v in query.items()})
        self.action_id = next((t[7:] for t in topics if t.startswith("action-")), "")
        self.plan_id = next((t[9:] for t in topics if t.startswith("rollback-")), "")
        if self.plan_id and not _is_uuid(self.plan_id):
            self.plan_id = ""
        self.seen: deque[str] = deque(maxlen=64)
        if self.rows or self.count:
            await self.join(live.QUEUE_GROUP)
        await self.join(live.KILLSWITCH_GROUP)  # the banner, on every page
        if self.action_id:
            await self.join(live.action_group(self.action_id))
        if self.plan_id:
            await self.join(live.rollback_group(self.plan_id))
        await self.accept()
        # Catch up: a page that was disconnected gets the whole current state.
        if live.AUDIT_GROUP in self.joined:
            html = await database_sync_to_async(chain_status_html)(None, can_verify=self.can_verify)
            await self.send(text_data=html)
        if self.rows:
            html = await database_sync_to_async(queue_groups_html)(self.filters)
            await self.send(text_data=html)
        if self.count:
            await self.send(text_data=await database_sync_to_async(count_html)())
        if self.action_id:
            html = await database_sync_to_async(decision_html)(
                self.action_id, Permissions(frozenset(self.permissions), self.username)
            )
            await self.send(text_data=html)
        if self.plan_id:
            html = await database_sync_to_async(plan_progress_html)(self.plan_id, self.can_run)
            await self.send(text_data=html)
        # Last: the page is up to date now, and its status says so.
        await self.send(text_data=live_in_sync_html())
        self.start_rechecks()

    async def access_changed(self, event: dict[str, Any]) -> None:
        """Close the page's socket once its session no longer grants the desk; otherwise
        render what follows with the operator's current permissions."""
        permissions = await database_sync_to_async(operator_live_permissions)(
            session_key=self.session_key, user_id=self.user_id
        )
        if permissions is None or perm("view_desk") not in permissions:
            await self.close(code=CLOSE_ACCESS_ENDED)
            return
        self.permissions = permissions

    @property
    def can_run(self) -> bool:
        return perm("run_rollback") in self.permissions

    @property
    def can_verify(self) -> bool:
        return perm("verify_audit") in self.permissions

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def disconnect(self, code: int) -> None:
        self.stop_rechecks()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The desk channel is one-way; operators act through permission-checked views.
        return

    async def escalation_updated(self, event: dict[str, Any]) -> None:
        if event["message_id"] in self.seen:
            return  # the same message through another group this page joined
        self.seen.append(event["message_id"])
        action_id = event["action_id"]
        parts = []
        if self.rows or self.count:
            change: QueueChange = await render_once(
                (event["message_id"], "load"), lambda: queue_change(action_id)
            )
            insert = (
                self.rows
                and change.action is not None
                and self.filters.matches(change.action, timezone.now())
            )
            variant = (self.rows, insert, self.count)
            parts.append(
                await render_once(
                    (event["message_id"], "queue", variant),
                    lambda: queue_push_html(action_id, change, rows=self.rows, insert=insert,
                                            count=self.count),
                )
            )  # fmt: skip
        if action_id == self.action_id:
            # Per user: the panel says whether this user modified the params being decided.
            granted, username = frozenset(self.permissions), self.username
            html = await render_once(
                (event["message_id"], "decision", granted, username),
                lambda: decision_html(action_id, Permissions(granted, username)),
            )
            parts.append(html)
        if parts:
            await self.send(text_data="".join(parts))

    async def killswitch_changed(self, event: dict[str, Any]) -> None:
        html = await render_once((event["message_id"], "banner"), banner_html)
        await self.send(text_data=html)

    async def rollback_updated(self, event: dict[str, Any]) -> None:
        plan_id, can_run = event["plan_id"], self.can_run
        html = await render_once(
            (event["message_id"], can_run), lambda: plan_progress_html(plan_id, can_run)
        )
        await self.send(text_data=html)

    async def audit_verification(self, event: dict[str, Any]) -> None:
        verification_id, can_verify = event["verification_id"], self.can_verify
        html = await render_once(
            (event["message_id"], can_verify),
            lambda: chain_status_html(verification_id, can_verify=can_verify),
        )
        if html is not None:
            await self.send(text_data=html)


class AgentFanOut:
    """Kill switch pushes to the agents connected to this process.

    One member per process in the channel layer group, not one per socket: a group send to a
    thousand sockets would be a thousand messages through Redis, read back one at a time. Here
    the process gets one message, renders each domain's state once, and writes it to its own
    sockets directly.
    """

    REJOIN_SECONDS = 600  # group memberships expire in the channel layer; renew them

    def __init__(self) -> None:
        self.agents: set[AgentConsumer] = set()
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # the channel layer failed: changes may have been missed

    def add(self, agent: AgentConsumer) -> None:
        self.agents.add(agent)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.listen())

    def discard(self, agent: AgentConsumer) -> None:
        self.agents.discard(agent)

    async def listen(self) -> None:
        """Hold this process's membership and pass each change on, for as long as agents are
        connected here. A lost Redis connection is retried, never the end of the pushes; once
        it is back, the sockets get the whole state, since changes may have been missed."""
        layer = get_channel_layer()
        while self.agents:
            try:
                await self._relay(layer)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                redis_outage.failed("the kill switch fan-out", exc)
                self.lost = True
                await asyncio.sleep(1)
            except Exception:
                logger.exception("kill switch fan-out failed; retrying in 1 s")
                self.lost = True
                await asyncio.sleep(1)

    async def _relay(self, layer: Any) -> None:
        channel = await layer.new_channel()
        joined: float | None = None  # not 0.0: a machine up for less than REJOIN_SECONDS
        while self.agents:
            if joined is None or time.monotonic() - joined > self.REJOIN_SECONDS:
                await layer.group_add(live.KILLSWITCH_GROUP, channel)
                joined = time.monotonic()
                if self.lost:  # changes may have been missed: every socket gets the state
                    redis_outage.worked()
                    self.lost = False
                    await self.push({})  # no state in it: read from the database
            try:
                message = await asyncio.wait_for(layer.receive(channel), self.REJOIN_SECONDS)
            except TimeoutError:
                continue
            if message.get("type") == live.KILLSWITCH_CHANGED:
                await self.push(message)

    async def push(self, message: dict[str, Any]) -> None:
        agents = list(self.agents)
        if "switches" in message:  # the state came with the message: no database round trip
            states = {
                domain: json.dumps({"type": "killswitch.state",
                                    **state_for(message["version"], message["switches"], [domain])})
                for domain in {agent.domain for agent in agents}
            }  # fmt: skip
        else:
            domains = {agent.domain for agent in agents}
            states = await database_sync_to_async(
                lambda: {domain: agent_state_json(domain) for domain in domains}
            )()
        await asyncio.gather(
            *(agent.send(text_data=states[agent.domain]) for agent in agents),
            return_exceptions=True,  # a socket closing meanwhile does not stop the others
        )


fan_out = AgentFanOut()


class AgentConsumer(LiveConsumer):
    """Agents' live channel (/ws/agent/, bearer token): the kill switches over the token's
    domain, as a full state with its version, on connect and after every change."""

    domain: str

    async def connect(self) -> None:
        headers = dict(self.scope.get("headers", []))
        scheme, _, raw = headers.get(b"authorization", b"").decode().partition(" ")
        token = None
        if scheme.lower() == "bearer" and raw:
            token = await database_sync_to_async(_live_token)(raw.strip())
        if token is None:
            await self.close()  # before accept: the handshake is refused (403)
            return
        self.domain = token.domain.slug
        self.raw_token = raw.strip()
        self.agent_group = live.agent_group(token.agent_id)
        # Revoking a token (or quarantining its agent) closes its sockets through this group;
        # expiry closes them on time.
        await self.channel_layer.group_add(self.agent_group, self.channel_name)
        lifetime = (token.expires_at - timezone.now()).total_seconds()
        self.expiry = asyncio.get_running_loop().call_later(
            max(0.0, lifetime), lambda: asyncio.ensure_future(self.close(code=CLOSE_ACCESS_ENDED))
        )
        await self.accept()
        fan_out.add(self)
        await self.send(text_data=await database_sync_to_async(agent_state_json)(self.domain))
        self.start_rechecks()

    async def access_changed(self, event: dict[str, Any]) -> None:
        if await database_sync_to_async(_live_token)(self.raw_token) is None:
            await self.close(code=CLOSE_ACCESS_ENDED)

    async def disconnect(self, code: int) -> None:
        fan_out.discard(self)
        self.stop_rechecks()
        if hasattr(self, "agent_group"):
            self.expiry.cancel()
            await self.channel_layer.group_discard(self.agent_group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return  # one-way: agents act through the HTTP API


def _live_token(raw: str) -> AgentToken | None:
    try:
        return token_authenticate(raw)
    except TokenError:
        return None


def agent_state_json(domain: str) -> str:
    return json.dumps({"type": "killswitch.state", **killswitch_state([domain])})
