"""Kill switch pushes to the agents' sockets in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from approvals import live
from approvals.killswitches.acks import Ack, killswitch_acknowledge
from approvals.killswitches.switches import killswitch_state, state_for
from incidentdesk.outage import REDIS_DOWN, redis_outage

logger = logging.getLogger(__name__)


class AgentSocket(Protocol):
    domain: str

    async def send(self, text_data: str) -> None: ...


class AgentFanOut:
    """Kill switch pushes to the agents connected to this process.

    One member per process in the channel layer group, not one per socket: a group send to a
    thousand sockets would be a thousand messages through Redis, read back one at a time. Here
    the process gets one message, renders each domain's state once, and writes it to its own
    sockets directly.
    """

    REJOIN_SECONDS = 600  # group memberships expire in the channel layer; renew them

    def __init__(self) -> None:
        self.agents: set[AgentSocket] = set()
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # the channel layer failed: changes may have been missed
        self.pushing = 0  # pushes being written to the sockets now

    def add(self, agent: AgentSocket) -> None:
        self.agents.add(agent)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.listen())

    def discard(self, agent: AgentSocket) -> None:
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
                domain: json.dumps(
                    {
                        "type": "killswitch.state",
                        **state_for(message["version"], message["switches"], [domain]),
                    }
                )
                for domain in {agent.domain for agent in agents}
            }
        else:
            domains = {agent.domain for agent in agents}
            states = await database_sync_to_async(
                lambda: {domain: agent_state_json(domain) for domain in domains}
            )()
        self.pushing += 1
        try:
            await asyncio.gather(
                *(agent.send(text_data=states[agent.domain]) for agent in agents),
                return_exceptions=True,  # a socket closing meanwhile does not stop the others
            )
        finally:
            self.pushing -= 1


fan_out = AgentFanOut()


class Acknowledgements:
    """What this process's agent sockets acknowledge, recorded together.

    After an engage every agent answers at once; one transaction per answer would queue them
    all behind the process's single database thread. Each answer keeps the time it arrived,
    and what arrives within GATHER_SECONDS of the first (and while a push is being written) is
    recorded in one transaction."""

    GATHER_SECONDS = 0.02

    def __init__(self) -> None:
        self.waiting: list[Ack] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, channel: str, version: int) -> None:
        self.waiting.append(Ack(channel=channel, version=version, at=timezone.now()))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._record())

    async def _record(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.GATHER_SECONDS)
            # The first sockets answer while the push is still being written to the rest:
            # recording holds the interpreter, so it waits until the last socket has the state.
            while fan_out.pushing:
                await asyncio.sleep(self.GATHER_SECONDS / 4)
            acks, self.waiting = self.waiting, []
            try:
                await database_sync_to_async(killswitch_acknowledge)(acks=acks)
            except Exception:
                logger.exception("%d kill switch acknowledgements were not recorded", len(acks))


acknowledgements = Acknowledgements()


def agent_state_json(domain: str) -> str:
    return json.dumps({"type": "killswitch.state", **killswitch_state([domain])})
