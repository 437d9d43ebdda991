"""Agents and their tokens: issuing, authenticating, scope checks and revocation.

A token reads `idk_<id>_<secret>`. The `idk_<id>` part is its public prefix, safe to log and
to grep for; only an HMAC-SHA256 of the whole token, keyed with TOKEN_PEPPER, is stored.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from approvals import live
from approvals.audit import Actor, audit_record
from approvals.core import (
    Refused,
    counter_bump,
    counter_read,
    counters_shared,
    model_from_row,
    model_width,
    sql_columns,
    sql_table,
)
from approvals.models import Agent, AgentToken, Domain
from incidentdesk.outage import REDIS_DOWN, redis_outage

PREFIX = "idk_"


SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+:[a-z*?]+$")


VERBS = ("read", "create", "update", "delete", "spend", "execute")


class TokenError(Exception):
    """A token was refused; the message says why, for the audit trail (not for the caller)."""


def token_digest(token: str) -> str:
    return hmac.new(settings.TOKEN_PEPPER.encode(), token.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    record: AgentToken


def _validate_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise ValueError("a token needs at least one scope (tool:verb, e.g. create_order:create)")
    for scope in scopes:
        if not SCOPE_PATTERN.match(scope):
            raise ValueError(f"scope {scope!r} is not tool:verb (e.g. create_order:create, *:read)")
        verb = scope.split(":", 1)[1]
        if not any(fnmatch.fnmatchcase(v, verb) for v in VERBS):
            raise ValueError(f"scope {scope!r} names no verb; verbs are: {', '.join(VERBS)}")
    return list(dict.fromkeys(scopes))


@transaction.atomic
def agent_save(*, agent: Agent, actor: Actor) -> Agent:
    """Create or change an agent's record (name, description, owner), audited."""
    created = agent.pk is None
    before: dict[str, object] = (
        {} if created else dict(Agent.objects.values("description", "owner_id").get(pk=agent.pk))
    )
    try:
        agent.full_clean()
    except ValidationError as exc:
        raise ValueError(f"agent {agent.name!r}: {'; '.join(exc.messages)}") from None
    agent.save()
    after = {"description": agent.description, "owner_id": agent.owner_id}
    changed = sorted(k for k in after if before.get(k) != after[k])
    if created or changed:
        audit_record(
            actor=actor,
            action="agent.created" if created else "agent.changed",
            object_type="agent",
            object_id=agent.pk,
            summary=f"Agent {agent.name} "
            + ("created" if created else f"changed: {', '.join(changed)}"),
            data={"owner": agent.owner.get_username() if agent.owner else None},
        )
    return agent


@transaction.atomic
def token_issue(
    *, agent_name: str, domain_slug: str, scopes: list[str], ttl: int | None, actor: Actor
) -> IssuedToken:
    """Create the agent if needed and issue a token; the secret is returned once, never stored.
    A quarantined agent gets none until it is released."""
    scopes = _validate_scopes(scopes)
    ttl = settings.TOKEN_DEFAULT_TTL if ttl is None else ttl
    if not 60 <= ttl <= settings.TOKEN_MAX_TTL:
        raise ValueError(f"ttl must be between 60 and {settings.TOKEN_MAX_TTL} seconds, not {ttl}")
    domain = Domain.objects.filter(slug=domain_slug).first()
    if domain is None:
        raise ValueError(f"no domain {domain_slug!r}")
    # Locked, so a quarantine either sees this token (and revokes it) or is seen here.
    agent = Agent.objects.select_for_update().filter(name=agent_name).first() or agent_save(
        agent=Agent(name=agent_name), actor=actor
    )
    if agent.quarantined_at is not None:
        raise ValueError(f"no token issued: {quarantine_note(agent)}")
    prefix = PREFIX + secrets.token_hex(6)
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    record = AgentToken.objects.create(
        agent=agent,
        domain=domain,
        prefix=prefix,
        digest=token_digest(token),
        scopes=scopes,
        created_by=actor.name,
        expires_at=timezone.now() + timedelta(seconds=ttl),
    )
    audit_record(
        actor=actor,
        action="token.issued",
        domain=domain.slug,
        object_type="token",
        object_id=prefix,
        summary=f"Token {prefix} issued to {agent_name}",
        data={"agent": agent_name, "scopes": scopes, "ttl": ttl},
    )
    return IssuedToken(token=token, record=record)


@transaction.atomic
def token_revoke(*, prefix: str, actor: Actor) -> AgentToken:
    token = AgentToken.objects.select_for_update().filter(prefix=prefix).first()
    if token is None:
        raise ValueError(f"no token with prefix {prefix!r}")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="token.revoked",
            domain=token.domain.slug,
            object_type="token",
            object_id=prefix,
            summary=f"Token {prefix} revoked",
        )
        live.agent_access_changed(token.agent_id)
        transaction.on_commit(access_changed, robust=True)
    return token


def token_authenticate(raw: str) -> AgentToken:
    """The live token behind `raw`, or TokenError saying why not."""
    if not raw.startswith(PREFIX):
        raise TokenError("not an IncidentDesk token")
    token = _token_by_digest(token_digest(raw))
    if token is None:
        raise TokenError("unknown token")
    if token.agent.quarantined_at is not None:
        raise TokenError(f"token {token.prefix}: {quarantine_note(token.agent)}")
    if token.revoked_at is not None:
        raise TokenError(f"token {token.prefix} was revoked")
    if token.expires_at <= timezone.now():
        raise TokenError(f"token {token.prefix} expired")
    return token


@cache
def _token_sql() -> str:
    return (
        f"SELECT {sql_columns(AgentToken, 't')}, {sql_columns(Agent, 'a')}, "
        f"{sql_columns(Domain, 'd')} FROM {sql_table(AgentToken)} t "
        f"JOIN {sql_table(Agent)} a ON a.id = t.agent_id "
        f"JOIN {sql_table(Domain)} d ON d.id = t.domain_id WHERE t.digest = %s"
    )


def _token_by_digest(digest: str) -> AgentToken | None:
    """The token with its agent and domain, in one query (on every agent API request)."""
    with connection.cursor() as cursor:
        cursor.execute(_token_sql(), [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    a, b = model_width(AgentToken), model_width(AgentToken) + model_width(Agent)
    token = model_from_row(AgentToken, row[:a])
    token.agent = model_from_row(Agent, row[a:b])
    token.domain = model_from_row(Domain, row[b:])
    return token


# Tokens this process authenticated lately, by digest. A kept token is used only while the
# access version it was read under is still the current one (a revocation or a quarantine
# changes it, after commit), and for KEEP_SECONDS at most: if a change of the version was lost
# to a Redis outage, a kept token is read from the database again within that time.
ACCESS_VERSION = "agent-access-version"
KEEP_SECONDS = 10.0
KEEP_MAX = 10_000


@dataclass(frozen=True)
class Kept:
    token: AgentToken
    version: str
    until: float  # time.monotonic()


_kept: dict[str, Kept] = {}


def token_kept(raw: str) -> Kept | None:
    """The token behind `raw` as this process last authenticated it, if it may still be used
    without the database: the caller must also find its version still current."""
    digest = token_digest(raw)
    kept = _kept.get(digest)
    if kept is None:
        return None
    if time.monotonic() > kept.until or kept.token.expires_at <= timezone.now():
        _kept.pop(digest, None)
        return None
    return kept


def token_keep(raw: str, token: AgentToken, version: str) -> None:
    """Keep a token just authenticated, read under access version `version`."""
    if len(_kept) >= KEEP_MAX:
        _kept.clear()
    _kept[token_digest(raw)] = Kept(token, version, time.monotonic() + KEEP_SECONDS)


def token_forget(raw: str) -> None:
    _kept.pop(token_digest(raw), None)


def access_version() -> str | None:
    """The current access version, from the cache every web process shares; None where the
    cache is each process's own (embedded mode): there no token is kept."""
    return counter_read(ACCESS_VERSION) if counters_shared() else None


def access_changed() -> None:
    """A token was revoked (or its agent quarantined): no process may use what it kept."""
    _kept.clear()
    try:
        counter_bump(ACCESS_VERSION)
    except REDIS_DOWN as exc:
        redis_outage.failed("announcing a revoked token", exc)


def token_allows(token: AgentToken, *, tool: str, verb: str) -> bool:
    for scope in token.scopes:
        tool_pattern, verb_pattern = scope.split(":", 1)
        if fnmatch.fnmatchcase(tool, tool_pattern) and fnmatch.fnmatchcase(verb, verb_pattern):
            return True
    return False


def quarantine_note(agent: Agent) -> str:
    """Why a quarantined agent is refused, in words for whoever is refused."""
    since = timezone.localtime(agent.quarantined_at) if agent.quarantined_at else None
    when = f"{since:%Y-%m-%d %H:%M:%S %Z}" if since else "an unknown time"
    return (
        f"agent {agent.name} is quarantined since {when} ({agent.quarantine_reason}); "
        "an incident commander must release it"
    )


class Quarantined(Refused):
    """423: the agent is quarantined."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(
            423,
            "Agent quarantined",
            quarantine_note(agent),
            extra={
                "quarantine": {
                    "agent": agent.name,
                    "since": agent.quarantined_at.isoformat() if agent.quarantined_at else None,
                    "reason": agent.quarantine_reason,
                }
            },
        )
        self.agent = agent


def agent_admission_check(agent: Agent) -> None:
    """Refuse (423) any request of a quarantined agent. Call it on the agent's row as read under
    its lock (select_for_update): that read sees a quarantine that committed while the request
    waited for the lock."""
    if agent.quarantined_at is not None:
        raise Quarantined(agent)
