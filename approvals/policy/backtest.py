"""A policy's backtest: replay a candidate policy over a domain's past actions and count the
verdicts that would change, before anyone publishes it. Nothing is written but the audited
run itself.

Each action is replayed twice, under the domain's current policy and under the candidate, the
same way: as the agent proposed it (its params, and the verb, amount, targets and blast radius
it claimed where a policy's registry does not work them out), at the time it was proposed, so
rate rules count the same agent's earlier calls of the tool (in any domain, as proposals do;
in the window and just before it).
Both sides are the rules, the unregistered-tool floor and the default; the flapping guard and
the tier raise for actions with no known undo depend on what happened since, and are left out
of both.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from approvals.audit import Actor, audit_record
from approvals.core import Refused
from approvals.models import Action, Domain
from approvals.policy.claims import CallClaim, ClaimRefused, proposal_from
from approvals.policy.documents import PolicyDocument
from approvals.policy.engine import Facts, decide, rate_windows
from approvals.policy.versions import policy_current

S = Action.Status

BACKTEST_MAX_ACTIONS = 50_000  # the newest this many of the window; the run says if it cut
CHANGES_SHOWN = 200
MAX_WINDOW = timedelta(days=90)


@dataclass(frozen=True)
class Replayed:
    """One action whose verdict would change."""

    action_id: str
    agent: str
    tool: str
    created_at: datetime
    before: str  # "allow", "deny", "escalate (tier 2)", ...
    after: str
    rule_before: str
    rule_after: str


@dataclass
class Backtest:
    domain: str
    since: datetime
    until: datetime
    version: int  # the current version, which the candidate is compared with
    replayed: int = 0
    cut: bool = False  # the window held more than BACKTEST_MAX_ACTIONS actions
    changes: list[Replayed] = field(default_factory=list)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)  # the candidate's rule, per change

    @property
    def changed(self) -> int:
        return sum(self.transitions.values())

    @property
    def transition_rows(self) -> list[tuple[str, str, int]]:
        """(now, with the candidate, how many), the most frequent first."""
        return [(before, after, n) for (before, after), n in self.transitions.most_common()]

    @property
    def rule_rows(self) -> list[tuple[str, int]]:
        return self.by_rule.most_common()

    @property
    def changes_shown(self) -> list[Replayed]:
        return self.changes[:CHANGES_SHOWN]

    def summary(self) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "compared_with_version": self.version,
            "replayed": self.replayed,
            "changed": self.changed,
            "cut_at": BACKTEST_MAX_ACTIONS if self.cut else None,
            "transitions": {f"{a} -> {b}": n for (a, b), n in self.transitions.most_common()},
            "by_rule": dict(self.by_rule.most_common()),
        }


def replay(document: PolicyDocument, action: Action, facts: Facts) -> tuple[str, str]:
    """The verdict `document` gives the action as it was proposed: (outcome, rule)."""
    try:
        proposal = proposal_from(document, _claim(action))
    except ClaimRefused as exc:
        return "refused by the registry", f"registry: {exc.field}"
    verdict, _ = decide(document, 0, proposal, facts)
    if verdict.outcome == "escalate":
        return f"escalate (tier {verdict.tier or 1})", verdict.rule
    return verdict.outcome, verdict.rule


def _claim(action: Action) -> CallClaim:
    return CallClaim(
        agent=action.agent.name,
        tool=action.tool,
        verb=action.verb,
        params=action.params,
        amount=action.amount,
        currency=action.currency,
        blast_records=action.blast_records,
        blast_population=action.blast_population,
        target_ids=tuple(str(t) for t in action.target_ids or []),
        has_snapshot=action.pre_action_state is not None,
        compensation_tool=(action.compensation or {}).get("tool"),
    )


class _History:
    """When each (agent, tool) was called, to count rate windows as of each replayed call."""

    def __init__(self, rows: list[tuple[int, str, datetime]]) -> None:
        self.times: defaultdict[tuple[int, str], list[datetime]] = defaultdict(list)
        for agent_id, tool, created in rows:
            self.times[(agent_id, tool)].append(created)
        for times in self.times.values():
            times.sort()

    def facts(self, action: Action) -> Facts:
        times = self.times[(action.agent_id, action.tool)]
        at = action.created_at

        def recent_count(window_seconds: int, cap: int) -> int:
            start = bisect.bisect_left(times, at - timedelta(seconds=window_seconds))
            end = bisect.bisect_left(times, at)  # earlier calls only
            return min(cap, end - start)

        return Facts(recent_count=recent_count)


def policy_backtest(
    *, domain: Domain, document: PolicyDocument, since: timedelta, actor: Actor
) -> Backtest:
    """Replay `document` over the domain's actions proposed in the last `since`; audited."""
    if since <= timedelta(0) or since > MAX_WINDOW:
        raise Refused(
            422,
            "Invalid window",
            f"a backtest window is more than 0 and at most {MAX_WINDOW.days} days",
            field="since",
        )
    until = timezone.now()
    start = until - since
    current, version = policy_current(domain)
    run = Backtest(domain=domain.slug, since=start, until=until, version=version)
    actions = list(
        Action.objects.filter(domain=domain, created_at__gte=start, created_at__lte=until)
        .select_related("agent")
        .order_by("-created_at")[: BACKTEST_MAX_ACTIONS + 1]
    )
    run.cut = len(actions) > BACKTEST_MAX_ACTIONS
    actions = sorted(actions[:BACKTEST_MAX_ACTIONS], key=lambda a: (a.created_at, str(a.pk)))
    windows = rate_windows(document) + rate_windows(current)
    lookback = max((window for window, _ in windows), default=0)
    # Rate rules count an agent's calls of a tool in every domain, as proposals do.
    history = _History(
        list(
            Action.objects.filter(
                agent_id__in={a.agent_id for a in actions},
                tool__in={a.tool for a in actions},
                created_at__gte=(actions[0].created_at if actions else start)
                - timedelta(seconds=lookback),
                created_at__lte=until,
            ).values_list("agent_id", "tool", "created_at")
        )
    )
    for action in actions:
        run.replayed += 1
        facts = history.facts(action)
        before, rule_before = replay(current, action, facts)
        after, rule_after = replay(document, action, facts)
        if after == before:
            continue
        run.transitions[(before, after)] += 1
        run.by_rule[rule_after] += 1
        if len(run.changes) < CHANGES_SHOWN:
            run.changes.append(
                Replayed(
                    action_id=str(action.pk),
                    agent=action.agent.name,
                    tool=action.tool,
                    created_at=action.created_at,
                    before=before,
                    after=after,
                    rule_before=rule_before,
                    rule_after=rule_after,
                )
            )
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="policy.backtested",
            domain=domain.slug,
            object_type="policy",
            object_id=domain.slug,
            summary=f"Policy for {domain.slug} backtested over {run.replayed} actions since "
            f"{start:%Y-%m-%d %H:%M}: {run.changed} verdicts would change",
            data={**run.summary(), "candidate": document.model_dump(mode="json")},
        )
    return run
