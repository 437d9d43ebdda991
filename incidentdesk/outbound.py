"""Outgoing HTTP (webhooks, connectors), bounded: one deadline for the whole exchange, a cap on
the answer read, and redirects never followed.

The deadline covers connecting, sending, waiting for the answer and reading all of it: every
read from the socket waits at most until the deadline, so a server that trickles a byte a
second is cut off at the deadline, not a socket timeout per byte later. (Name resolution and a
TLS handshake are bounded by the time left when they start, but not re-checked within.)
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from dataclasses import dataclass
from typing import Any

REDIRECTS = range(300, 400)


class OutboundError(Exception):
    """The exchange failed; the message says how (never the URL, which may be a secret)."""


class Unanswered(OutboundError):
    """No complete answer: the connection failed, broke, or the deadline passed. Trying again
    later may work."""


class TooLarge(OutboundError):
    """The answer is longer than the limit."""


class Redirected(OutboundError):
    """The answer is a redirect, which is not followed."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}, a redirect: redirects are not followed")
        self.status = status


class DeadlinePassed(TimeoutError):
    pass


@dataclass
class Deadline:
    at: float = float("inf")
    seconds: float = 0.0

    def start(self, seconds: float) -> None:
        self.at, self.seconds = time.monotonic() + seconds, seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlinePassed(f"no complete answer within {self.seconds:g} s")
        return left


class _TimedReader(io.RawIOBase):
    """A socket's reads, each allowed only the time left before the deadline."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: Deadline) -> None:
        self.raw, self.sock, self.deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(self.deadline.remaining())
        try:
            return int(self.raw.readinto(buffer))
        except TimeoutError:
            self.deadline.remaining()  # past the deadline: say so
            raise

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_TimedReader(self.fp.detach(), sock, deadline))


class _Bounded(http.client.HTTPConnection):
    deadline: Deadline

    def connect(self) -> None:
        self.timeout = self.deadline.remaining()
        super().connect()
        self.deadline.remaining()

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.deadline.remaining())
        super().send(data)

    # http.client makes its response with self.response_class(sock, method=...): a method
    # serves as well as a class, and hands the response this connection's deadline.
    def response_class(  # type: ignore[override]
        self, sock: Any, *args: Any, **kwargs: Any
    ) -> http.client.HTTPResponse:
        return _Response(sock, *args, deadline=self.deadline, **kwargs)


class BoundedHTTPConnection(_Bounded):
    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.deadline = Deadline()


class BoundedHTTPSConnection(_Bounded, http.client.HTTPSConnection):
    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.deadline = Deadline()


def connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    """A connection to `netloc` (kept alive between exchanges) for `exchange`."""
    if scheme == "https":
        return BoundedHTTPSConnection(netloc)
    return BoundedHTTPConnection(netloc)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    will_close: bool


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    *,
    body: bytes | None,
    headers: dict[str, str],
    seconds: float,
    max_bytes: int,
) -> Answer:
    """Send one request on `conn` (from `connection`) and read its whole answer, within
    `seconds` in all. Raises Unanswered, TooLarge (over `max_bytes` of body) or Redirected.
    After an error the connection is closed."""
    assert isinstance(conn, _Bounded)
    conn.deadline.start(seconds)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        over = f"answered {response.status} with more than the limit of {max_bytes} bytes"
        length = response.getheader("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise TooLarge(f"{over} ({int(length)})")
        payload = response.read(max_bytes + 1)
        if len(payload) > max_bytes:
            raise TooLarge(over)
        if response.status in REDIRECTS:
            raise Redirected(response.status)
        return Answer(response.status, payload, response.will_close)
    except OutboundError:
        conn.close()
        raise
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        if isinstance(exc, DeadlinePassed):
            raise Unanswered(str(exc)) from exc
        raise Unanswered(f"{exc.__class__.__name__}: {exc}") from exc
    finally:
        conn.deadline.at = float("inf")
