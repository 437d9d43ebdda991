"""The policy engine: per-domain ordered rules, first match wins, a default closes the policy.

A rule matches a proposal when its tool, verb and agent patterns match and every condition it
names holds. Conditions that need the database (rate, rolled-back repeats) are asked through
`Facts`, and only when a rule that could match needs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, model_validator

from approvals.audit import Actor, audit_record
from approvals.models import Action, Agent, Domain, PolicyVersion

Outcome = Literal["allow", "deny", "escalate"]
Verb = Literal["read", "create", "update", "delete", "spend", "execute"]
IRREVERSIBLE_VERBS = frozenset({"delete", "spend", "execute"})
MAX_TIER = 3
CAUTION = {"allow": 0, "escalate": 1, "deny": 2}
IDENTIFIER = r"^[A-Za-z0-9_.:-]{1,100}$"
AMOUNT_MAX = 10**14 - 1  # what an action's amount column holds, to 4 places


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


class AmountSpec(Strict):
    params: list[str] = Field(
        min_length=1, max_length=3,
        description="the params whose product is the amount: [total], or [qty, unit_price]",
    )  # fmt: skip
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class ToolSpec(Strict):
    """What the desk knows of one tool, whatever an agent says of it."""

    name: str = Field(pattern=IDENTIFIER)
    verb: Verb
    description: str = Field(default="", max_length=300)
    undo: Literal["restore", "compensate", "none"] = Field(
        default="none",
        description="restore: put the pre-action snapshot back; compensate: call "
        "compensating_tool; none: irreversible",
    )
    compensating_tool: str | None = Field(default=None, pattern=IDENTIFIER)
    amount: AmountSpec | None = None
    targets: str | None = Field(
        default=None, description="the param holding the target id, or a list of target ids"
    )
    population: int | None = Field(
        default=None, gt=0, description="records of the targets' kind in all (blast radius)"
    )

    @model_validator(mode="after")
    def undo_is_complete(self) -> ToolSpec:
        if (self.undo == "compensate") != (self.compensating_tool is not None):
            raise ValueError("undo: compensate goes with a compensating_tool, and only it")
        if self.verb == "spend" and self.amount is None:
            # Otherwise the amount a spending cap looks at would be the agent's word again.
            raise ValueError("a spend tool says which params make its amount")
        return self


class PolicyDocument(Strict):
    """A policy as written in files and the admin: the tool registry, the rules, a default."""

    rules: list[Rule]
    default_outcome: Outcome = "escalate"
    default_tier: int | None = Field(default=1, ge=1, le=MAX_TIER)
    tools: list[ToolSpec] = Field(default_factory=list)
    unregistered: Outcome = Field(
        default="escalate",
        description="the least caution for a tool not in the registry: the rules still run on "
        "the agent's word, and the stricter outcome wins ('allow': the rules alone)",
    )
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
        names = [tool.name for tool in self.tools]
        if len(names) != len(set(names)):
            raise ValueError("a tool is registered twice")
        return self

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)


@dataclass(frozen=True)
class Proposal:
    """What the rules judge: the tool's registered verb, amount and targets where the registry
    knows them, the agent's word where it does not (`registered` says which)."""

    agent: str
    tool: str
    verb: str
    amount: Decimal | None = None
    blast_records: int | None = None
    blast_population: int | None = None
    target_ids: tuple[str, ...] = ()
    has_snapshot: bool = False
    has_compensation: bool = False
    currency: str = ""
    registered: bool = True


@dataclass(frozen=True)
class CallClaim:
    """What an agent says of a call. Where the registry knows better, this is only checked."""

    agent: str
    tool: str
    verb: str | None
    params: dict[str, Any]
    target_ids: tuple[str, ...] = ()
    amount: Decimal | None = None
    currency: str = ""
    blast_records: int | None = None
    blast_population: int | None = None
    has_snapshot: bool = False
    compensation_tool: str | None = None
    compensation_connected: bool = False  # the domain's connector can compensate this tool


class ClaimRefused(Exception):
    """422: what the agent said contradicts the registry, or the params lack what it needs."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field, self.detail = field, detail


def _number(params: dict[str, Any], name: str, tool: str) -> Decimal:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ClaimRefused(f"params.{name}", f"{tool} takes its amount from params.{name}: "
                           "send it as a number")  # fmt: skip
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        raise ClaimRefused(f"params.{name}", f"params.{name} is not a number") from None
    if not number.is_finite() or not 0 <= number <= AMOUNT_MAX:
        raise ClaimRefused(f"params.{name}", f"params.{name} must be a number from 0 to "
                           f"{AMOUNT_MAX}")  # fmt: skip
    return number


def _targets(params: dict[str, Any], name: str, tool: str) -> tuple[str, ...]:
    from approvals.inputs import target_id_problem

    value = params.get(name)
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not ids:
        raise ClaimRefused(f"params.{name}", f"{tool} names its targets in params.{name}: "
                           "a target id or a list of them")  # fmt: skip
    for position, target in enumerate(ids):
        problem = target_id_problem(target)
        if problem is not None:
            where = f"params.{name}" + ("" if isinstance(value, str) else f".{position}")
            raise ClaimRefused(where, problem)
    return tuple(ids)


def proposal_from(document: PolicyDocument, claim: CallClaim) -> Proposal:
    """The proposal the rules judge: verb, amount, targets and reversibility from the registry
    and the params; the agent's word only for a tool the registry does not know."""
    spec = document.tool(claim.tool)
    if spec is None:
        if claim.verb is None:
            raise ClaimRefused("verb", f"{claim.tool} is not in this domain's tool registry: "
                               "say its verb")  # fmt: skip
        return Proposal(
            agent=claim.agent, tool=claim.tool, verb=claim.verb, amount=claim.amount,
            currency=claim.currency, blast_records=claim.blast_records,
            blast_population=claim.blast_population, target_ids=claim.target_ids,
            has_snapshot=claim.has_snapshot,
            has_compensation=claim.compensation_tool is not None or claim.compensation_connected,
            registered=False,
        )  # fmt: skip
    tool = spec.name
    if claim.verb is not None and claim.verb != spec.verb:
        raise ClaimRefused("verb", f"{tool} is registered as {spec.verb}, not {claim.verb}")
    amount, currency = claim.amount, claim.currency
    if spec.amount is not None:
        amount = Decimal(1)
        for name in spec.amount.params:
            amount *= _number(claim.params, name, tool)
        if not 0 <= amount <= AMOUNT_MAX:
            names = " x ".join(f"params.{name}" for name in spec.amount.params)
            detail = f"{tool}'s amount ({names}) must be from 0 to {AMOUNT_MAX}"
            raise ClaimRefused(f"params.{spec.amount.params[0]}", detail)
        amount, currency = amount.quantize(Decimal("0.0001")), spec.amount.currency
        if claim.amount is not None and (claim.amount != amount or claim.currency != currency):
            raise ClaimRefused("amount", f"{tool} amounts to {amount:f} {currency} by its params "
                               f"({' x '.join(spec.amount.params)}), not {claim.amount:f} "
                               f"{claim.currency}")  # fmt: skip
    targets, records = claim.target_ids, claim.blast_records
    if spec.targets is not None:
        targets = _targets(claim.params, spec.targets, tool)
        if claim.target_ids and sorted(claim.target_ids) != sorted(targets):
            raise ClaimRefused(
                "target_ids",
                f"{tool} acts on the targets in "
                f"params.{spec.targets}, which are not the target_ids sent",
            )
        if records is not None and records != len(targets):
            raise ClaimRefused("blast_radius.records", f"{tool} touches {len(targets)} "
                               f"records by its params, not {records}")  # fmt: skip
        records = len(targets)
    population = claim.blast_population
    if spec.population is not None:
        if population is not None and population != spec.population:
            raise ClaimRefused("blast_radius.population", f"{tool}'s population is "
                               f"{spec.population} in the registry, not {population}")  # fmt: skip
        population = spec.population
    if claim.compensation_tool is not None and claim.compensation_tool != spec.compensating_tool:
        undone = spec.compensating_tool or "nothing (it is not compensated)"
        raise ClaimRefused(
            "compensation.tool", f"{tool} is undone by {undone}, not {claim.compensation_tool}"
        )
    return Proposal(
        agent=claim.agent, tool=tool, verb=spec.verb, amount=amount, currency=currency,
        blast_records=records, blast_population=population, target_ids=targets,
        has_snapshot=spec.undo == "restore" and claim.has_snapshot,
        has_compensation=spec.undo == "compensate", registered=True,
    )  # fmt: skip


def overlaps(targets: tuple[str, ...] | list[str], other: list[str]) -> bool:
    """Whether two calls of one tool act on the same thing: a shared target, or both none."""
    return bool(set(targets) & set(other)) or not targets and not other


@dataclass
class Facts:
    """What the engine may ask the database, asked lazily and at most once each."""

    # (window_seconds, cap) -> earlier actions in the window, counted up to cap at most.
    recent_count: Callable[[int, int], int] = lambda window_seconds, cap: 0
    # When each earlier call of the same tool on the same targets was rolled back, newest first.
    rolled_back: Callable[[], list[datetime]] = lambda: []
    # Whether the agent called the tool on the same targets again after `since`.
    repeated_since: Callable[[datetime], bool] = lambda since: False
    _counts: dict[tuple[int, int], int] = field(default_factory=dict)
    _rolled_back: list[datetime] | None = None

    def count_within(self, window_seconds: int, cap: int) -> int:
        key = (window_seconds, cap)
        if key not in self._counts:
            self._counts[key] = self.recent_count(window_seconds, cap)
        return self._counts[key]

    def rollbacks(self) -> list[datetime]:
        if self._rolled_back is None:
            self._rolled_back = self.rolled_back()
        return self._rolled_back

    def repeat(self) -> bool:
        """A repeat of a rolled-back action: the same tool, on the same targets, by this agent."""
        return bool(self.rollbacks())


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    tier: int | None
    rule: str
    reason: str
    version: int
    quarantine: bool = False  # the flapping guard's second repeat: stop the agent too


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


UNREGISTERED_RULE = "unregistered-tool"
FLAPPING_RULE = "flapping-guard"


def decide(
    document: PolicyDocument, version: int, proposal: Proposal, facts: Facts
) -> tuple[Verdict, list[Trace]]:
    """The verdict, and every step that led to it: the rules (first match wins), then the
    unregistered-tool floor, then the flapping guard. The last two only add caution: what the
    rules deny stays denied. Proposals and explain both come here."""
    verdict, trace = evaluate(document, version, proposal, facts)
    if proposal.registered:
        trace.append(Trace(UNREGISTERED_RULE, False, f"{proposal.tool} is in the registry"))
    elif CAUTION[document.unregistered] > CAUTION[verdict.outcome]:
        reason = (f"{proposal.tool} is not in the domain's tool registry: its verb, amount and "
                  "targets are only the agent's word")  # fmt: skip
        tier = document.default_tier or 1 if document.unregistered == "escalate" else None
        verdict = Verdict(document.unregistered, tier, UNREGISTERED_RULE, reason, version)
        trace.append(Trace(UNREGISTERED_RULE, True, reason))
    else:
        trace.append(
            Trace(
                UNREGISTERED_RULE,
                False,
                f"not registered, but the rules' "
                f"{verdict.outcome} is at least as cautious as {document.unregistered}",
            )
        )
    flapping = _flapping(facts)
    if flapping is None:
        minutes = settings.ROLLBACK_COOLDOWN_SECONDS // 60
        trace.append(Trace(FLAPPING_RULE, False, f"no rollback of {proposal.tool} on these "
                           f"targets by this agent in the last {minutes} minutes"))  # fmt: skip
        return verdict, trace
    if flapping == "escalate" and verdict.outcome == "deny":
        trace.append(Trace(FLAPPING_RULE, False, "a repeat after a rollback, already denied"))
        return verdict, trace
    minutes = settings.ROLLBACK_COOLDOWN_SECONDS // 60
    reason = (
        f"{proposal.tool} on these targets was rolled back within the last {minutes} "
        "minutes: "
        + (
            "a second repeat, so the agent is quarantined"
            if flapping == "quarantine"
            else "a person must approve a repeat"
        )
    )
    quarantine = flapping == "quarantine"
    verdict = Verdict(
        outcome="deny" if quarantine else "escalate",
        tier=None if quarantine else max(2, verdict.tier or 1),
        rule=FLAPPING_RULE, reason=reason, version=version, quarantine=quarantine,
    )  # fmt: skip
    trace.append(Trace(FLAPPING_RULE, True, reason))
    return verdict, trace


def _flapping(facts: Facts) -> str | None:
    """During the cool-down after a rollback, the first repeat is escalated and a second one
    (a repeat after the last rollback had already been repeated) quarantines the agent."""
    since = timezone.now() - timedelta(seconds=settings.ROLLBACK_COOLDOWN_SECONDS)
    recent = [at for at in facts.rollbacks() if at >= since]
    if not recent:
        return None
    return "quarantine" if facts.repeated_since(max(recent)) else "escalate"


def facts_for(agent: Agent | None, tool: str, target_ids: tuple[str, ...] | list[str]) -> Facts:
    """The database behind the facts rules and the guard ask about one agent's call."""
    if agent is None:
        return Facts()
    same_tool = Action.objects.filter(agent=agent, tool=tool)

    def recent_count(window_seconds: int, cap: int) -> int:
        since = timezone.now() - timedelta(seconds=window_seconds)
        return same_tool.filter(created_at__gte=since)[:cap].count()

    def rolled_back() -> list[datetime]:
        rows = same_tool.filter(rolled_back_at__isnull=False).order_by("-rolled_back_at")
        return [at for at, other in rows.values_list("rolled_back_at", "target_ids")
                if at is not None and overlaps(target_ids, other)]  # fmt: skip

    def repeated_since(since: datetime) -> bool:
        later = same_tool.filter(created_at__gt=since).values_list("target_ids", flat=True)
        return any(overlaps(target_ids, other) for other in later)

    return Facts(recent_count=recent_count, rolled_back=rolled_back, repeated_since=repeated_since)


def policy_decide(domain: Domain, agent: Agent | None, claim: CallClaim
                  ) -> tuple[Proposal, Verdict, list[Trace]]:  # fmt: skip
    """The verdict the domain's current policy gives an agent's call now, with its trace."""
    document, version = policy_current(domain)
    proposal = proposal_from(document, claim)
    verdict, trace = decide(
        document, version, proposal, facts_for(agent, claim.tool, proposal.target_ids)
    )
    return proposal, verdict, trace


def policy_explain(*, domain: Domain, proposal: Proposal) -> tuple[Verdict, list[Trace]]:
    """Which step of the domain's current policy would decide `proposal` now, and why (the
    policies page: a proposal as an operator describes it)."""
    document, version = policy_current(domain)
    spec = document.tool(proposal.tool)
    if spec is None:
        proposal = replace(proposal, registered=False)
    else:  # what the registry knows, the operator's description does not override
        proposal = replace(
            proposal,
            verb=spec.verb,
            blast_population=spec.population or proposal.blast_population,
            has_snapshot=spec.undo == "restore" and proposal.has_snapshot,
            has_compensation=spec.undo == "compensate",
        )
    agent = Agent.objects.filter(name=proposal.agent).first()
    return decide(document, version, proposal, facts_for(agent, proposal.tool,
                                                         proposal.target_ids))  # fmt: skip


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
            "tools": version.tools,
            "unregistered": version.unregistered,
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
        tools=[tool.model_dump(mode="json", exclude_none=True) for tool in document.tools],
        unregistered=document.unregistered,
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
        data={
            "version": version.version,
            "rules": [r.id for r in document.rules],
            "tools": [t.name for t in document.tools],
            "unregistered": document.unregistered,
        },
    )
    return version


def policy_export(domain: Domain) -> dict[str, object]:
    document, version = policy_current(domain)
    return {"domain": domain.slug, "version": version, **document.model_dump(mode="json")}
