from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.template.loader import render_to_string
from django.utils import timezone

from approvals import live
from approvals.audit import chain_status_html
from approvals.core import Permissions, perm
from approvals.desk.operators import operator_live_permissions
from approvals.killswitches import banner_html, presence_html
from approvals.live.consumers import CLOSE_ACCESS_ENDED, LiveConsumer, render_once
from approvals.queue import (
    QueueChange,
    QueueFilters,
    count_html,
    decision_html,
    queue_change,
    queue_groups_html,
    queue_push_html,
)
from approvals.rollbacks import plan_progress_html

PRESENCE_SECONDS = 0.25


@functools.cache
def live_in_sync_html() -> str:
    return render_to_string("approvals/desk/live_status.html", {"live_state": "open", "oob": True})


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


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
        self.presence = "presence" in topics
        self.all_agents = query.get("agents") == ["all"]
        self.presence_due: asyncio.Task[None] | None = None
        self.presence_stale = False
        if self.plan_id and not _is_uuid(self.plan_id):
            self.plan_id = ""
        self.seen: deque[str] = deque(maxlen=64)
        if self.rows or self.count:
            await self.join(live.QUEUE_GROUP)
        await self.join(live.KILLSWITCH_GROUP)  # the banner, on every page
        if self.presence:
            await self.join(live.PRESENCE_GROUP)
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
        if self.presence:
            html = await database_sync_to_async(presence_html)(show_all=self.all_agents)
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
        await self.add_to_group(group)
        self.joined.append(group)

    async def disconnect(self, code: int) -> None:
        self.stop_rechecks()
        due = getattr(self, "presence_due", None)
        if due is not None:
            due.cancel()
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
                    lambda: queue_push_html(
                        action_id, change, rows=self.rows, insert=insert, count=self.count
                    ),
                )
            )
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

    async def presence_changed(self, event: dict[str, Any]) -> None:
        """Agents connect and acknowledge in bursts (a thousand after an engage): the panel is
        drawn at most once per PRESENCE_SECONDS, with whatever has arrived by then."""
        self.presence_stale = True
        if self.presence_due is None or self.presence_due.done():
            self.presence_due = asyncio.get_running_loop().create_task(self._send_presence())

    async def _send_presence(self) -> None:
        # What changes while a drawing is under way is drawn again after it.
        while self.presence_stale:
            await asyncio.sleep(PRESENCE_SECONDS)
            self.presence_stale = False
            show_all = self.all_agents
            bucket = int(time.monotonic() / PRESENCE_SECONDS)  # pages in this process share it
            html = await render_once(
                ("presence", show_all, bucket), functools.partial(presence_html, show_all=show_all)
            )
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
