"""The Origin check of the operators' websocket.

A browser sends the desk's session cookie with a websocket opened by any page, so the socket
is refused unless the page that opens it is the desk's own: its Origin (scheme, host and port)
must equal one of CSRF_TRUSTED_ORIGINS, or, when none are set, the origin the browser connected
to: the Host header it sent (an ALLOWED_HOSTS name), under https when HTTPS is set or the
connection is secure, else http. Behind nginx the Host is the browser's, passed on as is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port

DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> Origin | None:
    """An origin as the browser writes it (`https://desk.example.com:8443`), or None when the
    value is not one (`null`, a path, another scheme)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def _matches(origin: Origin, trusted: str) -> bool:
    """Whether `origin` is the trusted origin, where `https://*.example.com` stands for the
    domain and its subdomains (as in CSRF_TRUSTED_ORIGINS)."""
    wildcard = "://*." in trusted
    pattern = parse_origin(trusted.replace("://*.", "://", 1))
    if pattern is None:
        return False
    scheme, host, port = pattern
    if (origin[0], origin[2]) != (scheme, port):
        return False
    return origin[1] == host or (wildcard and origin[1].endswith("." + host))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The one value of a header; None when it is missing or sent twice."""
    values = [value for key, value in scope.get("headers", []) if key.lower() == name]
    return bytes(values[0]).decode("latin-1") if len(values) == 1 else None


def host_origin(scope: dict[str, Any]) -> Origin | None:
    """The desk's origin as this connection reached it, from its Host header; None when that
    host is not one of ALLOWED_HOSTS."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, port = split_domain_port(host.lower())
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    secure = settings.HTTPS or scope.get("scheme") in ("wss", "https")
    scheme = "https" if secure else "http"
    return scheme, domain.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]


def origin_allowed(scope: dict[str, Any]) -> bool:
    raw = _header(scope, b"origin")
    origin = parse_origin(raw) if raw else None
    if origin is None:
        return False
    if settings.CSRF_TRUSTED_ORIGINS:
        return any(_matches(origin, trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS)
    return origin == host_origin(scope)


class DeskOriginValidator:
    """ASGI middleware: a websocket whose Origin is not the desk's own is refused (403)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
