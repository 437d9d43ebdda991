from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from approvals import audit, live
from approvals.roles import perm

# One rendering per message and permission variant, shared by every socket in this process:
# a push to 500 open pages renders its fragment once, not 500 times.
_RENDERS_KEPT = 256
_renders: OrderedDict[tuple[Any, ...], asyncio.Future[str | None]] = OrderedDict()


async def render_once(key: tuple[Any, ...], render: Callable[[], str | None]) -> str | None:
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


class DeskConsumer(AsyncWebsocketConsumer):
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
        self.permissions = await database_sync_to_async(user.get_all_permissions)()
        if perm("view_desk") not in self.permissions:
            await self.close()
            return
        # A page asks for the topics it shows (?topics=audit); it gets those its user may see.
        query = parse_qs(self.scope.get("query_string", b"").decode())
        topics = {t for value in query.get("topics", []) for t in value.split(",")}
        if "audit" in topics and perm("view_audit") in self.permissions:
            await self.join(live.AUDIT_GROUP)
        await self.accept()
        if live.AUDIT_GROUP in self.joined:
            html = await database_sync_to_async(chain_status_html)(None, can_verify=self.can_verify)
            await self.send(text_data=html)

    @property
    def can_verify(self) -> bool:
        return perm("verify_audit") in self.permissions

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def disconnect(self, code: int) -> None:
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The desk channel is one-way; operators act through permission-checked views.
        return

    async def audit_verification(self, event: dict[str, Any]) -> None:
        verification_id, can_verify = event["verification_id"], self.can_verify
        html = await render_once(
            (event["message_id"], can_verify),
            lambda: chain_status_html(verification_id, can_verify=can_verify),
        )
        if html is not None:
            await self.send(text_data=html)
