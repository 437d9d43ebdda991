"""The policy engine: per-domain ordered rules, first match wins, a default closes the policy.

A rule matches a proposal when its tool, verb and agent patterns match and every condition it
names holds. Conditions that need the database (rate, rolled-back repeats) are asked through
`Facts`, and only when a rule that could match needs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from django.db import transaction
from pydantic import BaseModel, ConfigDict, Field, model_validator

from approvals.audit import Actor, audit_record
from approvals.models import Domain, PolicyVersion

Outcome = Literal["allow", "deny", "escalate"]
IRREVERSIBLE_VERBS = frozenset({"delete", "spend", "execute"})
MAX_TIER = 3


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Match(Strict):
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    verbs: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    agents: list[str] = Field(default_factory=lambda: ["*"], min_length=1)


class Rate(Strict):
    count: int = Field(ge=0, description="more than this many earlier actions ...")
    window_seconds: int = Field(gt=0, le=30 * 24 * 3600, description="... in this window")


class Conditions(Strict):
    amount_over: Decimal | None = Field(default=None, ge=0)
    blast_radius_over: float | None = Field(default=None, ge=0, le=1)
    rate_over: Rate | None = None
    protected_targets: list[str] = Field(default_factory=list)
    irreversible_without_snapshot: bool = False
    repeat_of_rolled_back: bool = False


class Rule(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    description: str = ""
    match: Match = Field(default_factory=Match)
    when: Conditions = Field(default_factory=Conditions)
    outcome: Outcome
    tier: int | None = Field(default=None, ge=1, le=MAX_TIER)
    reason: str = Field(min_length=1, max_length=300)

    @model_validator(mode="after")
    def tier_goes_with_escalate(self) -> Rule:
        if self.outcome == "escalate" and self.tier is None:
            raise ValueError("an escalate rule needs a tier (1 to 3)")
        if self.outcome != "escalate" and self.tier is not None:
            raise ValueError("only an escalate rule has a tier")
        return self


class PolicyDocument(Strict):
    """A policy as written in files and the admin."""

    rules: list[Rule]
    default_outcome: Outcome = "escalate"
    default_tier: int | None = Field(default=1, ge=1, le=MAX_TIER)
    comment: str = Field(default="", max_length=300)

    @model_validator(mode="after")
    def unique_rule_ids(self) -> PolicyDocument:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        if self.default_outcome == "escalate" and self.default_tier is None:
            raise ValueError("an escalating default needs a default_tier")
        return self


@dataclass(frozen=True)
class Proposal:
    agent: str
    tool: str
    verb: str
    amount: Decimal | None = None
    blast_records: int | None = None
    blast_population: int | None = None
    target_ids: tuple[str, ...] = ()
    has_snapshot: bool = False
    has_compensation: bool = False


@dataclass
class Facts:
    """What the engine may ask the database, asked lazily and at most once each."""

    # (window_seconds, cap) -> earlier actions in the window, counted up to cap at most.
    recent_count: Callable[[int, int], int] = lambda window_seconds, cap: 0
    rolled_back_repeat: Callable[[], bool] = lambda: False
    _counts: dict[tuple[int, int], int] = field(default_factory=dict)
    _repeat: bool | None = None

    def count_within(self, window_seconds: int, cap: int) -> int:
        key = (window_seconds, cap)
        if key not in self._counts:
            self._counts[key] = self.recent_count(window_seconds, cap)
        return self._counts[key]

    def repeat(self) -> bool:
        if self._repeat is None:
            self._repeat = self.rolled_back_repeat()
        return self._repeat


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    tier: int | None
    rule: str
    reason: str
    version: int


@dataclass(frozen=True)
class Trace:
    rule: str
    matched: bool
    why: str


DEFAULT_RULE = "default"


def _matches(patterns: list[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _check(rule: Rule, proposal: Proposal, facts: Facts) -> str | None:
    """None if the rule applies, else the first reason it does not."""
    if not _matches(rule.match.tools, proposal.tool):
        return f"tool {proposal.tool} not in {rule.match.tools}"
    if not _matches(rule.match.verbs, proposal.verb):
        return f"verb {proposal.verb} not in {rule.match.verbs}"
    if not _matches(rule.match.agents, proposal.agent):
        return f"agent {proposal.agent} not in {rule.match.agents}"
    when = rule.when
    if when.amount_over is not None and not (
        proposal.amount is not None and proposal.amount > when.amount_over
    ):
        return f"amount {proposal.amount} is not over {when.amount_over}"
    if when.blast_radius_over is not None:
        records, population = proposal.blast_records, proposal.blast_population
        if not (
            records is not None and population and records / population > when.blast_radius_over
        ):
            return f"blast radius {records}/{population} is not over {when.blast_radius_over:.2%}"
    if when.protected_targets and not any(
        _matches(when.protected_targets, target) for target in proposal.target_ids
    ):
        return "no protected target"
    if when.irreversible_without_snapshot and not (
        proposal.verb in IRREVERSIBLE_VERBS
        and not proposal.has_snapshot
        and not proposal.has_compensation
    ):
        return "reversible, or a snapshot or compensation was given"
    if when.rate_over is not None:
        # This proposal would be the agent's (earlier + 1)th with this tool in the window.
        # Counting stops at the limit: the rule only needs to know whether it is reached.
        earlier = facts.count_within(when.rate_over.window_seconds, when.rate_over.count)
        if earlier + 1 <= when.rate_over.count:
            return (
                f"{earlier + 1} actions in {when.rate_over.window_seconds} s "
                f"is not over {when.rate_over.count}"
            )
    if when.repeat_of_rolled_back and not facts.repeat():
        return "not a repeat of a rolled-back action"
    return None


def evaluate(
    document: PolicyDocument, version: int, proposal: Proposal, facts: Facts
) -> tuple[Verdict, list[Trace]]:
    """The verdict of the first rule that applies (or the default), and why each rule before it
    did not."""
    trace: list[Trace] = []
    for rule in document.rules:
        why_not = _check(rule, proposal, facts)
        if why_not is None:
            trace.append(Trace(rule.id, True, "applies"))
            return Verdict(rule.outcome, rule.tier, rule.id, rule.reason, version), trace
        trace.append(Trace(rule.id, False, why_not))
    tier = document.default_tier if document.default_outcome == "escalate" else None
    reason = f"no rule applied; the policy's default is {document.default_outcome}"
    trace.append(Trace(DEFAULT_RULE, True, reason))
    return Verdict(document.default_outcome, tier, DEFAULT_RULE, reason, version), trace


# Parsed policy versions by id. Versions never change once written, so this never goes stale.
_parsed: dict[tuple[int, Any], PolicyDocument] = {}


def policy_current(domain: Domain) -> tuple[PolicyDocument, int]:
    """The domain's newest policy version; a domain without one escalates everything to tier 1."""
    latest = (
        PolicyVersion.objects.filter(domain=domain)
        .order_by("-version")
        .values("id", "version", "created_at")
    ).first()
    if latest is None:
        return PolicyDocument(rules=[], comment="no policy published"), 0
    # Keyed by creation time too: SQLite may give a new row the id of one rolled back.
    key = (latest["id"], latest["created_at"])
    document = _parsed.get(key)
    if document is None:
        document = _parsed[key] = document_of(PolicyVersion.objects.get(pk=latest["id"]))
    return document, latest["version"]


def document_of(version: PolicyVersion) -> PolicyDocument:
    return PolicyDocument.model_validate(
        {
            "rules": version.rules,
            "default_outcome": version.default_outcome,
            "default_tier": version.default_tier if version.default_outcome == "escalate" else None,
            "comment": version.comment,
        }
    )


@transaction.atomic
def policy_publish(*, domain: Domain, document: PolicyDocument, actor: Actor) -> PolicyVersion:
    """Store the document as the domain's next policy version."""
    Domain.objects.select_for_update().get(pk=domain.pk)
    latest = PolicyVersion.objects.filter(domain=domain).order_by("-version").first()
    version = PolicyVersion.objects.create(
        domain=domain,
        version=(latest.version + 1) if latest else 1,
        rules=document.model_dump(mode="json")["rules"],
        default_outcome=document.default_outcome,
        default_tier=document.default_tier or 1,
        created_by=actor.name,
        comment=document.comment,
    )
    audit_record(
        actor=actor,
        action="policy.published",
        domain=domain.slug,
        object_type="policy",
        object_id=f"{domain.slug}:v{version.version}",
        summary=f"Policy v{version.version} for {domain.slug} published"
        + (f": {document.comment}" if document.comment else ""),
        data={"version": version.version, "rules": [r.id for r in document.rules]},
    )
    return version


def policy_export(domain: Domain) -> dict[str, object]:
    document, version = policy_current(domain)
    return {"domain": domain.slug, "version": version, **document.model_dump(mode="json")}
