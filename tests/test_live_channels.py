"""Live channels hold through silence, and close when the credentials they opened with end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from approvals import live
from approvals.agents import token_authenticate, token_revoke
from approvals.audit import Actor
from approvals.core import VIEWER
from approvals.killswitches import agent_quarantine, fanout, killswitch_set
from approvals.live.consumers import CLOSE_ACCESS_ENDED
from tests.agents import agent_token
from tests.conftest import session_cookie
from tests.servers import Browser, Desk, agent_socket, running_desk
from tests.test_live import receive_until

pytestmark = pytest.mark.django_db(transaction=True)

QUIET_SECONDS = 15


@pytest.fixture(scope="module")
def live_desk(desk: Desk, tmp_path_factory, django_db_setup, django_db_blocker) -> Iterator[Desk]:
    """Where the revocations below come from another process (this one), they reach the desk
    as a message through Redis in production mode: the session's desk, whose periodic recheck
    is a minute away, proves that path. In embedded mode the channel layer lives inside the
    desk's process, so only its recheck can see them: a desk that rechecks every second."""
    if settings.REDIS_URL:
        yield desk
        return
    with running_desk(tmp_path_factory.mktemp("rechecking"), LIVE_RECHECK_SECONDS="1") as quick:
        yield quick


def desk_socket(desk: Desk, cookies: dict[str, str]) -> ClientConnection:
    header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    return connect(
        f"{desk.ws_url}/ws/desk/?topics=count",
        origin=desk.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": header},
        open_timeout=10,
        proxy=None,
    )


def closed_with(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the server closes the socket; the close code it sent."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        pass
    raise AssertionError(f"the server did not close the socket within {timeout} s")


def test_quiet_sockets_still_get_the_next_push(desk: Desk, viewer) -> None:
    """Nothing is sent for longer than any Redis read timeout, then a kill switch changes:
    the operator's page and the agent both hear it."""
    token = agent_token("quiet-bot", "procurement", "*:read")
    with agent_socket(desk, token) as agent, desk_socket(desk, session_cookie(viewer)) as page:
        assert json.loads(agent.recv(timeout=10))["type"] == "killswitch.state"
        receive_until(page, 'data-state="open"', timeout=10)  # caught up
        with pytest.raises(TimeoutError):  # silence, on both
            page.recv(timeout=QUIET_SECONDS)
        with pytest.raises(TimeoutError):
            agent.recv(timeout=0.1)
        killswitch_set(
            scope="procurement",
            engaged=True,
            actor=Actor("user", "otto"),
            reason="after the silence",
        )
        pushed = json.loads(agent.recv(timeout=10))
        assert pushed["switches"]["procurement"]["engaged"] is True
        receive_until(page, "after the silence", timeout=10)


def test_fan_out_joins_at_once_on_a_machine_just_booted(monkeypatch) -> None:
    """The per-process fan-out must hold its group membership from the first agent on, even
    when the monotonic clock is younger than the renewal period (a fresh machine)."""
    layer = InMemoryChannelLayer()
    monkeypatch.setattr(fanout, "get_channel_layer", lambda: layer)
    fan_out = fanout.AgentFanOut()
    fan_out.REJOIN_SECONDS = time.monotonic() + 3600  # the clock has run less than that
    received: list[Any] = []

    class Agent:
        domain = "procurement"

        async def send(self, text_data: str) -> None:
            received.append(json.loads(text_data))

    async def scenario() -> None:
        fan_out.add(Agent())  # type: ignore[arg-type]
        for _ in range(100):
            if layer.groups.get(live.KILLSWITCH_GROUP):
                break
            await asyncio.sleep(0.01)
        switches = {"procurement": {"scope": "procurement", "engaged": True}}
        await layer.group_send(
            live.KILLSWITCH_GROUP,
            live.message(live.KILLSWITCH_CHANGED, version=7, switches=switches),
        )
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert fan_out.task is not None
        fan_out.task.cancel()

    asyncio.run(scenario())
    assert received and received[0]["version"] == 7


def test_revoking_a_token_closes_its_socket(live_desk: Desk) -> None:
    desk = live_desk
    token = agent_token("revoked-bot", "procurement", "*:read")
    other = agent_token("revoked-bot", "procurement", "*:read")
    with agent_socket(desk, token) as revoked, agent_socket(desk, other) as kept:
        revoked.recv(timeout=10)
        kept.recv(timeout=10)
        token_revoke(prefix=token_authenticate(token).prefix, actor=Actor.system("tests"))
        assert closed_with(revoked) == CLOSE_ACCESS_ENDED
        # The agent's other, live token keeps its socket.
        killswitch_set(
            scope="procurement", engaged=True, actor=Actor("user", "otto"), reason="still heard"
        )
        assert "still heard" in str(kept.recv(timeout=10))


def test_quarantine_closes_every_socket_of_the_agent(live_desk: Desk) -> None:
    desk = live_desk
    tokens = [agent_token("loose-bot", "procurement", "*:read") for _ in range(2)]
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(agent_socket(desk, token)) for token in tokens]
        for ws in sockets:
            ws.recv(timeout=10)
        agent_quarantine(agent_name="loose-bot", actor=Actor("user", "otto"), reason="loops")
        assert [closed_with(ws) for ws in sockets] == [CLOSE_ACCESS_ENDED] * 2


def test_a_socket_closes_when_its_token_expires(desk: Desk) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from approvals.models import AgentToken

    token = agent_token("brief-bot", "procurement", "*:read")
    expires = timezone.now() + timedelta(seconds=2)
    AgentToken.objects.filter(prefix=token_authenticate(token).prefix).update(expires_at=expires)
    with agent_socket(desk, token) as ws:
        ws.recv(timeout=10)
        assert closed_with(ws, timeout=10) == CLOSE_ACCESS_ENDED
    assert timezone.now() >= expires


def test_signing_out_closes_the_operators_pages(desk: Desk, viewer) -> None:
    browser = Browser(desk.url, session_cookie(viewer))
    status, _ = browser.request("GET", "/")
    assert status == 200
    with desk_socket(desk, browser.cookies) as page:
        receive_until(page, 'id="queue-count"', timeout=10)
        status, _ = browser.request(
            "POST", "/logout/", data=b"", headers={"X-CSRFToken": browser.cookies["csrftoken"]}
        )
        assert status == 200
        assert closed_with(page) == CLOSE_ACCESS_ENDED


def test_a_role_taken_away_outside_the_desk_closes_pages_on_the_next_check(
    tmp_path: Path, django_db_setup, make_operator
) -> None:
    user = make_operator("vik-viewer", VIEWER)
    with (
        running_desk(tmp_path / "desk", LIVE_RECHECK_SECONDS="1") as quick,
        desk_socket(quick, session_cookie(user)) as page,
    ):
        receive_until(page, 'id="queue-count"', timeout=10)
        user.groups.clear()  # as the admin's user form does: no service, no message
        assert closed_with(page, timeout=10) == CLOSE_ACCESS_ENDED
