"""The policy engine: per-domain ordered rules, first match wins, a default closes the policy.

A rule matches a proposal when its tool, verb and agent patterns match and every condition it
names holds. Conditions that need the database (rate, rolled-back repeats) are asked through
`Facts`, and only when a rule that could match needs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from approvals.models import Action, Agent, Domain
from approvals.policy.claims import CallClaim, Proposal, overlaps, proposal_from
from approvals.policy.documents import CAUTION, IRREVERSIBLE_VERBS, Outcome, PolicyDocument, Rule
from approvals.policy.versions import policy_current


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
        reason = (
            f"{proposal.tool} is not in the domain's tool registry: its verb, amount and "
            "targets are only the agent's word"
        )
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
        trace.append(
            Trace(
                FLAPPING_RULE,
                False,
                f"no rollback of {proposal.tool} on these "
                f"targets by this agent in the last {minutes} minutes",
            )
        )
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
        rule=FLAPPING_RULE,
        reason=reason,
        version=version,
        quarantine=quarantine,
    )
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


def rolled_back_on(
    target_ids: tuple[str, ...] | list[str], rows: Iterable[tuple[datetime | None, Any]]
) -> list[datetime]:
    """When the calls among `rows` (rolled_back_at, target_ids) that touched any of
    `target_ids` were rolled back, in the rows' order."""
    return [at for at, other in rows if at is not None and overlaps(target_ids, other)]


def rate_windows(document: PolicyDocument) -> list[tuple[int, int]]:
    """The (window_seconds, cap) counts the document's rate rules may ask of Facts."""
    return list(
        dict.fromkeys(
            (r.when.rate_over.window_seconds, r.when.rate_over.count)
            for r in document.rules
            if r.when.rate_over is not None
        )
    )


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
        return rolled_back_on(target_ids, rows.values_list("rolled_back_at", "target_ids"))

    def repeated_since(since: datetime) -> bool:
        later = same_tool.filter(created_at__gt=since).values_list("target_ids", flat=True)
        return any(overlaps(target_ids, other) for other in later)

    return Facts(recent_count=recent_count, rolled_back=rolled_back, repeated_since=repeated_since)


def policy_decide(
    domain: Domain, agent: Agent | None, claim: CallClaim
) -> tuple[Proposal, Verdict, list[Trace]]:
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
    return decide(document, version, proposal, facts_for(agent, proposal.tool, proposal.target_ids))
