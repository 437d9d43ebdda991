"""Live updates: the one home of group names, event types and how they are sent.

Events carry ids, never markup; consumers load the rows and render the same template
partials as the pages, so a missed message is harmless (every message is a full state).
Group names may hold letters, digits, '-', '_' and '.' only.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from incidentdesk.outage import REDIS_DOWN, redis_outage

AUDIT_GROUP = "audit"


QUEUE_GROUP = "approvals.queue"


KILLSWITCH_GROUP = "killswitches"  # agents' sockets and every desk page (the banner)


# Event types: the consumer method that handles "audit.verification" is audit_verification.
AUDIT_VERIFICATION = "audit.verification"


ESCALATION_UPDATED = "escalation.updated"


KILLSWITCH_CHANGED = "killswitch.changed"


ROLLBACK_UPDATED = "rollback.updated"


ACCESS_CHANGED = "access.changed"  # a token revoked, a sign-out, a role changed: check again


PRESENCE_GROUP = "agents.presence"  # pages that show which agents heard the switches


PRESENCE_CHANGED = "presence.changed"  # an agent connected, left, acknowledged or polled


def action_group(action_id: object) -> str:
    return f"action.{action_id}"


def rollback_group(plan_id: object) -> str:
    return f"rollback.{plan_id}"


def agent_group(agent_id: object) -> str:
    """Every socket of one agent."""
    return f"agent.{agent_id}"


def operator_group(user_id: object) -> str:
    """Every desk page one operator has open."""
    return f"operator.{user_id}"


_server_loop: asyncio.AbstractEventLoop | None = None


def bind_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Embedded mode: send from worker threads through the server's own loop.

    The in-memory channel layer lives in that loop; a send from another loop is only seen
    when the server loop next wakes up (about a second later).
    """
    global _server_loop
    _server_loop = loop


def message(event_type: str, **payload: Any) -> dict[str, Any]:
    # The id lets consumers in one process share the work a message causes.
    return {"type": event_type, "message_id": uuid.uuid4().hex, **payload}


def send(group: str | tuple[str, ...], event_type: str, **payload: Any) -> None:
    """Send one message to one group, or the same message (one id) to several.

    At most REDIS_SOCKET_TIMEOUT seconds: the channel layer's own socket timeout is longer,
    for its blocking reads (settings.py), and a Redis that hangs must not hold the caller."""
    layer = get_channel_layer()
    if layer is None:
        return
    event = message(event_type, **payload)
    groups = (group,) if isinstance(group, str) else group

    async def send_all() -> None:
        for name in groups:
            await layer.group_send(name, event)

    async def send_all_in_time() -> None:
        try:
            async with asyncio.timeout(settings.REDIS_SOCKET_TIMEOUT):
                await send_all()
        except TimeoutError:
            raise RedisTimeoutError("the channel layer did not answer in time") from None

    loop = _server_loop
    if loop is not None and loop.is_running():  # embedded: the in-memory layer
        asyncio.run_coroutine_threadsafe(send_all(), loop).result(timeout=5)
    else:
        async_to_sync(send_all_in_time)()


def send_on_commit(group: str | tuple[str, ...], event_type: str, **payload: Any) -> None:
    """Send once the current transaction commits; never for a change that rolled back.

    While Redis is out (incidentdesk/outage.py) the message is lost, never the change that
    committed: pages and agents get the whole state again when they reconnect."""

    def send_after_commit() -> None:
        if not redis_outage.usable():
            return
        try:
            try:
                send(group, event_type, **payload)
            except RedisConnectionError:  # a connection pooled before Redis restarted
                send(group, event_type, **payload)
        except REDIS_DOWN as exc:
            redis_outage.failed(f"live update {event_type}", exc)
        else:
            redis_outage.worked()

    transaction.on_commit(send_after_commit, robust=True)


def audit_verification_changed(verification_id: int) -> None:
    send_on_commit(AUDIT_GROUP, AUDIT_VERIFICATION, verification_id=verification_id)


def escalation_changed(action_id: object, *, agent_id: object) -> None:
    """An escalation was opened, approved in part, decided, raised a tier or expired. The
    agent's sockets get its verdict."""
    # One message to every group: a page in two of them handles it once.
    groups = (QUEUE_GROUP, action_group(action_id), agent_group(agent_id))
    send_on_commit(groups, ESCALATION_UPDATED, action_id=str(action_id))


def killswitch_changed(version: int, switches: dict[str, Any]) -> None:
    """Every switch's state rides along, so no process has to read it back to pass it on."""
    send_on_commit(KILLSWITCH_GROUP, KILLSWITCH_CHANGED, version=version, switches=switches)


def rollback_changed(plan_id: object) -> None:
    """A plan changed state or finished a batch of steps."""
    send_on_commit(rollback_group(plan_id), ROLLBACK_UPDATED, plan_id=str(plan_id))


def agent_access_changed(agent_id: object) -> None:
    """A token of this agent was revoked (or the agent quarantined): its sockets check theirs."""
    send_on_commit(agent_group(agent_id), ACCESS_CHANGED)


def operator_access_changed(user_id: object) -> None:
    """This operator signed out or their role changed: their pages check their access."""
    send_on_commit(operator_group(user_id), ACCESS_CHANGED)


def presence_changed() -> None:
    """What the desk knows of the agents' sockets and acknowledgements changed."""
    send_on_commit(PRESENCE_GROUP, PRESENCE_CHANGED)
