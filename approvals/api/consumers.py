from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from approvals import live
from approvals.agents import TokenError, token_authenticate
from approvals.api.proposals import action_verdict
from approvals.api.results import action_for_token
from approvals.core import Refused
from approvals.killswitches import (
    acknowledgements,
    agent_state_json,
    fan_out,
    link_close,
    link_open,
    link_seen,
)
from approvals.live.consumers import CLOSE_ACCESS_ENDED, LiveConsumer
from approvals.models import AgentToken

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 200  # an acknowledgement is a few dozen


class AgentConsumer(LiveConsumer):
    """Agents' live channel (/ws/agent/, bearer token).

    The desk sends the kill switches over the token's domain, as a full state with its version,
    on connect and after every change, and each verdict of the agent's escalated actions as it
    is decided. The agent sends one kind of message: `{"type": "killswitch.ack", "version": N}`
    once it holds the state of version N.
    """

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
        self.token = token
        self.domain = token.domain.slug
        self.raw_token = raw.strip()
        self.agent_group = live.agent_group(token.agent_id)
        # Revoking a token (or quarantining its agent) closes its sockets through this group;
        # expiry closes them on time. Verdicts come through it too.
        await self.add_to_group(self.agent_group)
        lifetime = (token.expires_at - timezone.now()).total_seconds()
        self.expiry = asyncio.get_running_loop().call_later(
            max(0.0, lifetime), lambda: asyncio.ensure_future(self.close(code=CLOSE_ACCESS_ENDED))
        )
        await database_sync_to_async(link_open)(token=token, channel=self.channel_name)
        await self.accept()
        fan_out.add(self)
        await self.send(text_data=await database_sync_to_async(agent_state_json)(self.domain))
        self.start_rechecks()

    async def access_changed(self, event: dict[str, Any]) -> None:
        if await database_sync_to_async(_live_token)(self.raw_token) is None:
            await self.close(code=CLOSE_ACCESS_ENDED)
            return
        await database_sync_to_async(link_seen)(channel=self.channel_name)

    async def disconnect(self, code: int) -> None:
        fan_out.discard(self)
        self.stop_rechecks()
        if hasattr(self, "agent_group"):
            self.expiry.cancel()
            await self.channel_layer.group_discard(self.agent_group, self.channel_name)
            await database_sync_to_async(link_close)(channel=self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        version = _acknowledged(text_data)
        if version is None:
            logger.warning(
                "agent socket %s sent a message that is not an acknowledgement",
                self.channel_name,
            )
            return
        acknowledgements.add(self.channel_name, version)

    async def escalation_updated(self, event: dict[str, Any]) -> None:
        verdict = await database_sync_to_async(_verdict)(self.token, event["action_id"])
        if verdict is not None:
            await self.send(text_data=json.dumps({"type": "action.verdict", **verdict}))


def _acknowledged(text: str | None) -> int | None:
    """The version in `{"type": "killswitch.ack", "version": N}`, else None."""
    if text is None or len(text) > MAX_MESSAGE_CHARS:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "killswitch.ack":
        return None
    version = message.get("version")
    if type(version) is not int or version < 0:
        return None
    return version


def _verdict(token: AgentToken, action_id: str) -> dict[str, Any] | None:
    try:
        action = action_for_token(token, action_id)
    except Refused:
        return None  # another token of the agent: another domain
    return action_verdict(action, check_kill=True)


def _live_token(raw: str) -> AgentToken | None:
    try:
        return token_authenticate(raw)
    except TokenError:
        return None
