"""Sign-in throttling, on django-axes: which address a sign-in comes from, what is kept of the
username typed, the page a locked-out client gets, and the one audit event per lockout.

Axes counts failed sign-ins (the desk's login page and the admin's) per LOGIN_LOCKOUT_BY,
by default the pair of username and client address; at LOGIN_FAILURE_LIMIT the pair is locked
for LOGIN_COOLOFF_SECONDS. Failures are counted, not audited: a password typed into the
username field would otherwise stay in the append-only trail. For the same reason axes keeps
the username of an existing account as is, and anything else only as a keyed hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from axes.helpers import get_client_parameters, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import salted_hmac

from approvals.audit import Actor, audit_record
from approvals.models import AuditEvent

# A username no account has is kept as this prefix and a keyed hash of what was typed. The
# colon cannot be in a username, so the two never meet.
UNKNOWN_PREFIX = "unknown:"


LOCK_OBJECT_TYPE = "signin_lock"


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: the connection's, unless that is a trusted proxy
    (TRUSTED_PROXIES); then the right-most address in X-Forwarded-For that is not a trusted
    proxy. Entries further left were written by the client and prove nothing."""
    remote = request.META.get("REMOTE_ADDR") or None
    trusted = _networks(tuple(settings.TRUSTED_PROXIES))
    peer = _address(remote) if remote else None
    if peer is None or not any(peer in network for network in trusted):
        return str(peer) if peer is not None else remote
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # not written by a proxy: the last trusted hop is all that is known
        peer = address
        if not any(address in network for network in trusted):
            break
    return str(peer)


def attempted_username(
    request: HttpRequest, credentials: dict[str, Any] | None = None
) -> str | None:
    """What axes keeps of the username of a sign-in: an existing account's username as is;
    anything else (a typo, a guess, a password typed into the wrong field) as a keyed hash,
    which still counts repeated attempts with the same text but cannot be read back."""
    field = get_user_model().USERNAME_FIELD
    source: Any = credentials if credentials else request.POST
    typed = source.get(field)
    if typed is None or typed == "":
        return None
    typed = str(typed)
    known: dict[str, bool] = request.__dict__.setdefault("_signin_known_usernames", {})
    if typed not in known:
        known[typed] = get_user_model()._default_manager.filter(**{field: typed}).exists()
    if known[typed]:
        return typed
    digest = salted_hmac("approvals.signin.username", typed, algorithm="sha256").hexdigest()[:32]
    return UNKNOWN_PREFIX + digest


def _request_parameters(
    request: HttpRequest, credentials: dict[str, Any] | None
) -> list[dict[str, Any]]:
    return get_client_parameters(
        attempted_username(request, credentials),
        getattr(request, "axes_ip_address", None) or client_ip(request),
        request.META.get("HTTP_USER_AGENT", "<unknown>")[:255],
        request,
        credentials,
    )


def _locked_until(
    request: HttpRequest, credentials: dict[str, Any] | None, parameters: dict[str, Any]
) -> datetime | None:
    """When the lock on one set of parameters ends (None: it is not locked): once fewer than
    the failure limit of its counted failures are younger than the cool-off."""
    cool_off = get_cool_off(request) or timedelta(0)
    limit = get_failure_limit(request, credentials)
    counted = AccessAttempt.objects.filter(
        **parameters, attempt_time__gte=timezone.now() - cool_off
    ).order_by("-attempt_time")
    failures = 0
    for attempt_time, count in counted.values_list("attempt_time", "failures_since_start"):
        failures += count
        if failures >= limit:
            return attempt_time + cool_off
    return None


def lockout(
    request: HttpRequest, credentials: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], datetime]:
    """The sets of lockout parameters that are locked for this request, and when the last of
    those locks ends."""
    locked, until = [], None
    for parameters in _request_parameters(request, credentials):
        ends = _locked_until(request, credentials, parameters)
        if ends is not None:
            locked.append(parameters)
            until = ends if until is None else max(until, ends)
    return locked, until or timezone.now() + (get_cool_off(request) or timedelta(0))


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 with the time to try again (AXES_LOCKOUT_CALLABLE)."""
    if not isinstance(credentials, dict):
        credentials = getattr(request, "axes_credentials", None)
    _, until = lockout(request, credentials)
    seconds = max(1, math.ceil((until - timezone.now()).total_seconds()))
    context = {
        "until": until,
        "minutes": math.ceil(seconds / 60),
        "failure_limit": get_failure_limit(request, credentials),
    }
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


def _lock_key(parameters: list[dict[str, Any]]) -> str:
    canonical = "|".join(
        ",".join(f"{name}={value}" for name, value in sorted(each.items())) for each in parameters
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


def signin_lockout_record(*, request: HttpRequest, credentials: dict[str, Any] | None) -> bool:
    """Write the lockout of this request's username and address to the audit trail, once per
    lockout: a client that keeps trying while locked adds nothing. Returns whether it wrote.

    The username is kept only when it names an existing account."""
    locked, until = lockout(request, credentials)
    if not locked:
        return False
    key = _lock_key(locked)
    cool_off = get_cool_off(request) or timedelta(0)
    username = attempted_username(request, credentials)
    if username is not None and username.startswith(UNKNOWN_PREFIX):
        username = None
    ip_address = getattr(request, "axes_ip_address", None) or client_ip(request)
    limit = get_failure_limit(request, credentials)
    with transaction.atomic():
        # Concurrent failures of one client take turns here, so only one of them records.
        for parameters in locked:
            list(AccessAttempt.objects.select_for_update().filter(**parameters).values_list("pk"))
        recorded = AuditEvent.objects.filter(
            object_type=LOCK_OBJECT_TYPE, object_id=key, created_at__gte=timezone.now() - cool_off
        )
        if recorded.exists():
            return False
        who = f"{username!r}" if username else "an unknown username"
        by = " and ".join("+".join(sorted(each)) for each in locked)
        audit_record(
            actor=Actor.system("login"),
            action="auth.locked_out",
            object_type=LOCK_OBJECT_TYPE,
            object_id=key,
            summary=f"Sign-in locked for {who} from {ip_address or 'an unknown address'} after "
            f"{limit} failures (by {by}), until {until.isoformat(timespec='seconds')}",
            data={
                "username": username,
                "ip_address": ip_address,
                "failure_limit": limit,
                "locked_by": [sorted(each) for each in locked],
                "until": until.isoformat(),
            },
        )
    return True


def on_locked_out(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """axes' user_locked_out signal, sent on the failure that locks and on each attempt while
    locked."""
    if request is not None:
        signin_lockout_record(
            request=request, credentials=getattr(request, "axes_credentials", None)
        )
