from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from incidentdesk.outage import REDIS_DOWN, redis_outage

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
    rendering = _renders.get(key)
    if rendering is None:
        # Its own task: a socket that closes while it waits (the first or any other) cancels
        # only its own wait, never the rendering the other sockets wait for.
        rendering = asyncio.get_running_loop().create_task(database_sync_to_async(render)())
        rendering.add_done_callback(lambda done: _forget_failed(key, done))
        _renders[key] = rendering
        while len(_renders) > _RENDERS_KEPT:
            _renders.popitem(last=False)
    return await asyncio.shield(rendering)


def _forget_failed(key: tuple[Any, ...], done: asyncio.Future[Any]) -> None:
    """A rendering that failed is tried again by the next socket that asks for it."""
    if (done.cancelled() or done.exception() is not None) and _renders.get(key) is done:
        del _renders[key]


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

    async def add_to_group(self, group: str) -> None:
        """Join a group; once more if the first try met a connection pooled before Redis
        restarted (the server closed it: the retry takes a new one)."""
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except RedisConnectionError:
            await self.channel_layer.group_add(group, self.channel_name)

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
