"""The kill switch state, kept in memory and pushed by the desk over /ws/agent/.

A background thread holds a websocket to the desk (a small RFC 6455 client on the standard
library) and replaces its state with every full state the desk pushes. When the socket is down,
it polls GET /api/v1/killswitches instead, and keeps trying to reconnect. Checking the state
costs no network unless it is older than `max_state_age`: then the check asks the desk once,
and if the desk cannot be reached it fails closed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from typing import Any, Callable

from incidentdesk_client.errors import DeskError, DeskUnavailable, KillSwitchEngaged, Unauthorized

log = logging.getLogger("incidentdesk_client")

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked frame, as a client sends it."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def handshake(url: str, headers: dict[str, str]) -> tuple[str, int, bool, bytes]:
    """Where to connect (host, port, TLS) and the upgrade request to send there."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return host, port, secure, ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgraded(head: bytes) -> None:
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 101 " not in status + " ":
        raise ConnectionError(f"websocket refused: {status}")


class _WebSocket:
    """Just enough of a websocket client: handshake, text frames in, pings answered."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        host, port, secure, request = handshake(url, headers)
        raw = socket.create_connection((host, port), timeout=timeout)
        if secure:
            raw = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
        self.sock = raw
        self.sock.sendall(request)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the desk closed the connection during the handshake")
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        upgraded(head)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the desk closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        self.sock.sendall(frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def receive(self, on_ping: Callable[[], None]) -> str | None:
        """The next text message; None when the desk closes the socket."""
        message = b""
        while True:
            first, second = self._read(2)
            opcode, final = first & 0x0F, bool(first & 0x80)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            if second & 0x80:  # a server must not mask, but tolerate it
                mask = self._read(4)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read(length)))
            else:
                payload = self._read(length)
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                on_ping()
            elif opcode == OP_CLOSE:
                with contextlib.suppress(OSError):
                    self._send(OP_CLOSE, payload[:2])
                return None
            elif opcode in (OP_TEXT, 0x0):
                message += payload
                if final:
                    return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(OP_CLOSE, struct.pack("!H", 1000))
        self.sock.close()


class SwitchBoard:
    """The switches over this agent's domain, as last pushed or polled."""

    def __init__(self, url: str, token: str, *, max_state_age: float = 60.0) -> None:
        self.ws_url = url.replace("http", "ws", 1).rstrip("/") + "/ws/agent/"
        self.token = token
        self.max_state_age = max_state_age
        self.version = -1
        self.switches: dict[str, dict[str, Any]] = {}
        self.confirmed_at: float | None = None  # monotonic time the state was last known good
        self.source = ""  # "push" or "poll": where the state last came from
        self.connected = False
        self._lock = threading.Lock()
        # Verdicts the desk pushed for this agent's actions, by action id, newest last.
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._verdict_pushed = threading.Condition(self._lock)

    def _apply(self, state: dict[str, Any], source: str) -> None:
        with self._lock:
            if state.get("version", -1) >= self.version:
                self.version = state["version"]
                self.switches = state.get("switches", {})
                self.source = source
                self._verdict_pushed.notify_all()  # a wait for a verdict checks the switches
            self.confirmed_at = time.monotonic()

    @staticmethod
    def acknowledgement(state: dict[str, Any]) -> str:
        """What the agent answers to a pushed state: it holds that version now."""
        return json.dumps({"type": "killswitch.ack", "version": state.get("version", 0)})

    def _take_verdict(self, verdict: dict[str, Any]) -> None:
        with self._verdict_pushed:
            self._verdicts[str(verdict.get("id"))] = verdict
            while len(self._verdicts) > 1000:
                self._verdicts.pop(next(iter(self._verdicts)))
            self._verdict_pushed.notify_all()

    def pushed_verdict(self, action_id: str, timeout: float) -> dict[str, Any] | None:
        """A decided verdict for `action_id` pushed over the socket, waiting up to `timeout`
        seconds for one; None if none came, or once a switch over the domain is engaged (the
        caller then asks the desk)."""
        deadline = time.monotonic() + timeout
        with self._verdict_pushed:
            while True:
                decided = self._decided(action_id)
                if decided is not None:
                    return decided
                left = deadline - time.monotonic()
                if left <= 0 or not self._listening():
                    return None  # the caller asks the desk, which says why it stops
                self._verdict_pushed.wait(min(left, 1.0))

    def _decided(self, action_id: str) -> dict[str, Any] | None:
        """The decided verdict pushed for `action_id`, taken; call with the lock held."""
        verdict = self._verdicts.get(action_id)
        if verdict is not None and verdict.get("status") != "pending":
            return self._verdicts.pop(action_id)
        return None

    def _listening(self) -> bool:
        """Whether a pushed verdict may still come: connected, and no switch engaged."""
        return self.connected and not any(s.get("engaged") for s in self.switches.values())

    def _confirm(self) -> None:
        with self._lock:
            self.confirmed_at = time.monotonic()

    @property
    def age(self) -> float | None:
        return None if self.confirmed_at is None else time.monotonic() - self.confirmed_at

    @property
    def stale(self) -> bool:
        age = self.age
        return age is None or age > self.max_state_age

    def engaged(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.switches.values() if s.get("engaged")]

    def unconfirmed(self, exc: DeskUnavailable) -> DeskUnavailable:
        age = self.age
        known = "never known" if age is None else f"{age:.0f} s old"
        return DeskUnavailable(
            f"kill switch state is {known} and the desk cannot be reached: failing closed ({exc})"
        )

    def raise_if_engaged(self) -> None:
        for switch in self.engaged():
            raise KillSwitchEngaged(
                f"kill switch {switch['scope']} engaged by {switch.get('changed_by')}: "
                f"{switch.get('reason')}",
                {"kill_switch": switch, "reason": switch.get("reason", "")},
            )


class KillSwitches(SwitchBoard):
    """The board kept by a background thread (the blocking client)."""

    def __init__(
        self,
        url: str,
        token: str,
        poll: Callable[[], dict[str, Any]],
        *,
        max_state_age: float = 60.0,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__(url, token, max_state_age=max_state_age)
        self._poll = poll
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._socket: _WebSocket | None = None
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise KillSwitchEngaged if a switch over this domain is engaged, and DeskUnavailable
        (failing closed) if the state is too old and the desk cannot confirm it."""
        if self.stale:
            try:
                self._apply(self._poll(), "poll")
            except DeskUnavailable as exc:
                raise self.unconfirmed(exc) from exc
        self.raise_if_engaged()

    # The watcher thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="incidentdesk-kill-switches", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._socket is not None:
            self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def wait_until_known(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.confirmed_at is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.confirmed_at is not None

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._socket = _WebSocket(
                    self.ws_url, {"Authorization": f"Bearer {self.token}"}, timeout=10
                )
                self._socket.sock.settimeout(None)
                self.connected, delay = True, 0.5
                while not self._stop.is_set():
                    text = self._socket.receive(on_ping=self._confirm)
                    if text is None:
                        break
                    message = json.loads(text)
                    if message.get("type") == "killswitch.state":
                        self._apply(message, "push")
                        self._socket.send_text(self.acknowledgement(message))
                    elif message.get("type") == "action.verdict":
                        self._take_verdict(message)
            except (OSError, ConnectionError, ValueError) as exc:
                if not self._stop.is_set():
                    log.warning("kill switch socket down (%s); polling until it is back", exc)
            finally:
                self.connected = False
                if self._socket is not None:
                    self._socket.close()
                    self._socket = None
            # Down: poll now and then, and try the socket again with a growing delay.
            until = time.monotonic() + delay
            while not self._stop.is_set() and time.monotonic() < until:
                try:
                    self._apply(self._poll(), "poll")
                except Unauthorized as exc:
                    # Revoked or expired: nothing more to watch with this token. Checks now
                    # find the state stale, ask the desk, and fail with the same error.
                    log.error("kill switch watch stopped: %s", exc)
                    return
                except DeskUnavailable:
                    pass  # down as well: the socket's warning said so; checks fail closed
                except DeskError as exc:
                    log.warning("kill switch poll failed: %s", exc)
                self._stop.wait(min(self.poll_interval, max(0.0, until - time.monotonic())))
            delay = min(delay * 2, 5.0)
