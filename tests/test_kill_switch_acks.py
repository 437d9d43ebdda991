"""Agents acknowledge every kill switch state they hold; an engage is contained once every
agent connected under it has, and the desk records how long that took."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from incidentdesk_client import Desk as AgentDesk
from websockets.sync.client import ClientConnection

from approvals.audit import Actor
from approvals.killswitches import containment, killswitch_set
from approvals.models import AgentLink, AuditEvent, KillSwitchChange
from tests.agents import agent_token, call, decide_on_the_desk, escalated_action
from tests.conftest import session_cookie
from tests.servers import Desk, agent_socket, http, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def state_of(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] == "killswitch.state":
            return message


def page_of(desk: Desk, user: Any, path: str = "/killswitches/") -> str:
    cookies = "; ".join(f"{k}={v}" for k, v in session_cookie(user).items())
    reply = http("GET", desk.url + path, None, {"Cookie": cookies})
    assert reply.status == 200
    return reply.body.decode()


def links_of(agent: str) -> list[AgentLink]:
    return list(AgentLink.objects.filter(agent__name=agent, closed_at=None))


def engage(scope: str = "procurement") -> KillSwitchChange:
    return killswitch_set(
        scope=scope, engaged=True, actor=Actor("user", "otto"), reason="runaway orders"
    )


def test_an_engage_is_contained_when_the_last_connected_agent_acknowledges(
    desk: Desk, oncall: Any
) -> None:
    client = AgentDesk(desk.url, agent_token("buyer", "procurement", "*:read"))
    silent_token = agent_token("mute-bot", "procurement", "*:read")
    try:
        assert client.kill_switches is not None and client.kill_switches.wait_until_known()
        with agent_socket(desk, silent_token) as silent:
            connected = state_of(silent)
            wait_until(lambda: links_of("buyer") and links_of("mute-bot"), 10, "both sockets")
            change = engage()
            assert sorted(change.awaited) == sorted(
                link.pk for link in links_of("buyer") + links_of("mute-bot")
            )
            # The client acknowledges on its own; the raw socket has not yet.
            wait_until(
                lambda: links_of("buyer")[0].acked_version == change.pk, 10, "the client's ack"
            )
            assert state_of(silent)["version"] == change.pk > connected["version"]
            change.refresh_from_db()
            assert change.contained_at is None
            assert containment(change).missing == ["mute-bot"]
            page = page_of(desk, oncall)
            assert "Waiting</strong> for 1 of 2 agents: mute-bot" in page
            assert 'id="told-mute-bot" data-state="silent"' in page
            assert 'id="told-buyer" data-state="acknowledged"' in page

            silent.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
            contained = KillSwitchChange.objects.filter(pk=change.pk, contained_at__isnull=False)
            wait_until(contained.exists, 10, "the engage contained")
    finally:
        client.close()
    change.refresh_from_db()
    last_ack = max(link.acked_at for link in AgentLink.objects.filter(acked_version=change.pk))
    assert change.contained_at == last_ack
    assert 0 < change.time_to_contain < 10
    event = AuditEvent.objects.get(action="killswitch.contained")
    assert event.data == {
        "version": change.pk,
        "sockets": 2,
        "agents": 2,
        "seconds": change.time_to_contain,
    }
    page = page_of(desk, oncall)
    assert f'Contained in <span class="time-to-contain">{change.time_to_contain:.3f}' in page


def test_an_acknowledgement_of_a_version_never_sent_counts_for_nothing(desk: Desk) -> None:
    with agent_socket(desk, agent_token("liar-bot", "procurement", "*:read")) as ws:
        version = state_of(ws)["version"]
        wait_until(lambda: links_of("liar-bot"), 10, "the socket")
        change = engage()
        assert state_of(ws)["version"] == change.pk
        ws.send(json.dumps({"type": "killswitch.ack", "version": change.pk + 1000}))
        ws.send("not json at all")
        ws.send(json.dumps({"type": "killswitch.ack", "version": "7"}))
        time.sleep(1)
        assert links_of("liar-bot")[0].acked_version == 0
        assert version < change.pk
        ws.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
        wait_until(lambda: links_of("liar-bot")[0].acked_version == change.pk, 10, "the ack")


def test_a_poll_contains_an_agent_whose_socket_went_away(desk: Desk) -> None:
    token = agent_token("flaky-bot", "procurement", "*:read")
    with agent_socket(desk, token) as ws:
        state_of(ws)
        wait_until(lambda: links_of("flaky-bot"), 10, "the socket")
        change = engage()
    wait_until(lambda: not links_of("flaky-bot"), 10, "the socket closed, never acknowledged")
    change.refresh_from_db()
    assert change.contained_at is None
    polled = call(desk, token, "GET", "/killswitches")
    assert polled.status == 200 and polled.json()["version"] == change.pk
    change.refresh_from_db()
    assert change.contained_at is not None
    assert AuditEvent.objects.filter(action="killswitch.contained").count() == 1


def test_an_engage_with_no_agent_connected_has_nothing_to_wait_for(desk: Desk) -> None:
    agent_token("idle-bot", "procurement", "*:read")  # a token, but no socket
    change = engage()
    assert change.awaited == [] and change.time_to_contain == 0.0


def test_a_decision_is_pushed_to_the_agent_socket(desk: Desk, approver: Any) -> None:
    with agent_socket(desk, agent_token("buyer", "procurement", "*:read")) as ws:
        state_of(ws)
        action = escalated_action(agent="buyer")
        decide_on_the_desk(desk, approver, action.pk, "approve")
        while True:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "action.verdict" and message["status"] != "pending":
                break
    assert message["id"] == str(action.pk)
    assert message["status"] == "approved" and message["may_execute"] is True
    assert message["decided_by"] == approver.username


def test_the_client_takes_a_pushed_verdict_instead_of_polling(desk: Desk, approver: Any) -> None:
    client = AgentDesk(desk.url, agent_token("buyer", "procurement", "*:read"), poll_wait=30)
    try:
        assert client.kill_switches is not None and client.kill_switches.wait_until_known()
        wait_until(lambda: client.kill_switches.connected, 10, "the client's socket")
        action = escalated_action(agent="buyer")
        decide_on_the_desk(desk, approver, action.pk, "reject")
        asked: list[str] = []
        client.verdict = lambda action_id, **_: asked.append(action_id)  # type: ignore[method-assign]
        verdict = client.wait_for_decision({"id": str(action.pk), "status": "pending"})
    finally:
        client.close()
    assert verdict["status"] == "rejected" and verdict["decision_reason"] == "no"
    assert asked == []  # the push answered: no request for the verdict


def test_the_agents_page_shows_tokens_sockets_and_the_state_each_acknowledged(
    desk: Desk, viewer: Any
) -> None:
    token = agent_token("buyer", "procurement", "*:read", ttl=3600)
    agent_token("idle-bot", "devops", "*:read")
    with agent_socket(desk, token) as ws:
        version = state_of(ws)["version"]
        wait_until(lambda: links_of("buyer"), 10, "the socket")
        change = engage()
        assert state_of(ws)["version"] == change.pk > version
        ws.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
        wait_until(lambda: links_of("buyer")[0].acked_version == change.pk, 10, "the ack")
        page = page_of(desk, viewer, "/agents/")
    buyer = page[
        page.index('id="agent-buyer"') : page.index("</tr>", page.index('id="agent-buyer"'))
    ]
    idle = page[page.index('id="agent-idle-bot"') :]
    idle = idle[: idle.index("</tr>")]
    prefix = AgentLink.objects.get(agent__name="buyer").agent.tokens.get().prefix
    assert f"<code>{prefix}</code> <code>procurement</code> *:read" in buyer
    assert "(in 59\xa0minutes)" in buyer or "(in 1\xa0hour)" in buyer
    assert 'data-sockets="1">connected (1 socket); acknowledged version ' + str(change.pk) in buyer
    assert 'data-sockets="0">not connected' in idle and "never" in idle


def test_sockets_closed_or_abandoned_a_week_ago_are_forgotten() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from approvals.agents import token_authenticate
    from approvals.killswitches import links_purge

    token = token_authenticate(agent_token("buyer", "procurement", "*:read"))
    now, old = timezone.now(), timezone.now() - timedelta(days=8)
    rows = {
        "closed-long-ago": {"closed_at": old, "seen_at": old},
        "abandoned": {"closed_at": None, "seen_at": old},
        "closed-today": {"closed_at": now, "seen_at": old},
        "open": {"closed_at": None, "seen_at": now},
    }
    for channel, times in rows.items():
        AgentLink.objects.create(
            agent_id=token.agent_id,
            domain_id=token.domain_id,
            channel=channel,
            connected_at=old,
            **times,
        )
    assert links_purge() == 2
    assert set(AgentLink.objects.values_list("channel", flat=True)) == {"closed-today", "open"}


def test_every_socket_of_an_agent_must_acknowledge_unless_it_closed_and_another_did(
    desk: Desk,
) -> None:
    """An agent may run several processes, each with its own socket: one that heard does not
    speak for one that did not. A socket that closed without acknowledging is covered once its
    agent acknowledges elsewhere."""
    token = agent_token("fleet-bot", "procurement", "*:read")
    with agent_socket(desk, token) as one, agent_socket(desk, token) as two:
        state_of(one), state_of(two)
        wait_until(lambda: len(links_of("fleet-bot")) == 2, 10, "both sockets")
        three = agent_socket(desk, token)
        state_of(three)
        wait_until(lambda: len(links_of("fleet-bot")) == 3, 10, "the third socket")
        change = engage()
        assert len(change.awaited) == 3
        one.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
        wait_until(
            lambda: any(link.acked_version == change.pk for link in links_of("fleet-bot")),
            10,
            "the first ack",
        )
        three.close()  # gone without a word: covered by the agent's other acknowledgements
        wait_until(lambda: len(links_of("fleet-bot")) == 2, 10, "the third socket closed")
        change.refresh_from_db()
        assert change.contained_at is None  # the second socket is open and silent
        assert containment(change).missing == ["fleet-bot"]
        two.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
        contained = KillSwitchChange.objects.filter(pk=change.pk, contained_at__isnull=False)
        wait_until(contained.exists, 10, "the engage contained")
    event = AuditEvent.objects.get(action="killswitch.contained")
    assert event.data["sockets"] == 3 and event.data["agents"] == 1


def test_a_socket_that_closes_unheard_is_covered_by_its_agents_other_socket(desk: Desk) -> None:
    token = agent_token("pair-bot", "procurement", "*:read")
    with agent_socket(desk, token) as one:
        state_of(one)
        two = agent_socket(desk, token)
        state_of(two)
        wait_until(lambda: len(links_of("pair-bot")) == 2, 10, "both sockets")
        change = engage()
        one.send(json.dumps({"type": "killswitch.ack", "version": change.pk}))
        wait_until(
            lambda: any(link.acked_version == change.pk for link in links_of("pair-bot")),
            10,
            "the ack",
        )
        change.refresh_from_db()
        assert change.contained_at is None
        two.close()  # its close is the last word: the agent heard on the other socket
        contained = KillSwitchChange.objects.filter(pk=change.pk, contained_at__isnull=False)
        wait_until(contained.exists, 10, "the engage contained when the socket closed")


def test_a_poll_covers_only_the_sockets_of_its_own_domain(desk: Desk) -> None:
    here = agent_token("two-domain-bot", "procurement", "*:read")
    elsewhere = agent_token("two-domain-bot", "billing", "*:read")
    with agent_socket(desk, here) as ws:
        state_of(ws)
        wait_until(lambda: links_of("two-domain-bot"), 10, "the socket")
        change = engage()
    wait_until(lambda: not links_of("two-domain-bot"), 10, "the socket closed unheard")
    assert call(desk, elsewhere, "GET", "/killswitches").json()["version"] == change.pk
    change.refresh_from_db()
    assert change.contained_at is None  # billing's poll says nothing of procurement's socket
    call(desk, here, "GET", "/killswitches")
    change.refresh_from_db()
    assert change.contained_at is not None


def test_a_socket_its_process_stopped_confirming_waits_for_its_agent_to_be_told() -> None:
    """A process that died leaves its sockets open in the table: past AGENT_LINK_STALE_SECONDS
    they count as gone, and the agent's poll covers them."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from approvals.agents import token_authenticate
    from approvals.killswitches import killswitch_polled

    token = token_authenticate(agent_token("ghost-bot", "procurement", "*:read"))
    now = timezone.now()
    AgentLink.objects.create(
        agent_id=token.agent_id,
        domain_id=token.domain_id,
        channel="ghost",
        connected_at=now,
        seen_at=now,
    )
    change = engage()
    assert len(change.awaited) == 1
    long_ago = now - timedelta(seconds=settings.AGENT_LINK_STALE_SECONDS + 1)
    AgentLink.objects.filter(channel="ghost").update(seen_at=long_ago)  # its process died
    change.refresh_from_db()
    assert change.contained_at is None
    killswitch_polled(token=token, version=change.pk)
    change.refresh_from_db()
    assert change.contained_at is not None


def test_the_async_client_takes_a_pushed_verdict_too(desk: Desk, approver: Any) -> None:
    import asyncio

    from incidentdesk_client import AsyncDesk

    token = agent_token("buyer", "procurement", "*:read")
    action = escalated_action(agent="buyer")
    asked: list[str] = []

    async def scenario() -> dict[str, Any]:
        async with AsyncDesk(desk.url, token, poll_wait=30) as client:
            assert client.kill_switches is not None
            assert await client.kill_switches.wait_until_known()
            await asyncio.to_thread(decide_on_the_desk, desk, approver, action.pk, "reject")

            async def no_poll(action_id: str, **_: Any) -> dict[str, Any]:
                asked.append(action_id)
                raise AssertionError("asked the desk instead of taking the push")

            client.verdict = no_poll  # type: ignore[method-assign]
            return await client.wait_for_decision({"id": str(action.pk), "status": "pending"})

    verdict = asyncio.run(scenario())
    assert verdict["status"] == "rejected" and asked == []
