from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from approvals.policy.documents import AMOUNT_MAX, PolicyDocument


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
        raise ClaimRefused(
            f"params.{name}", f"{tool} takes its amount from params.{name}: send it as a number"
        )
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        raise ClaimRefused(f"params.{name}", f"params.{name} is not a number") from None
    if not number.is_finite() or not 0 <= number <= AMOUNT_MAX:
        raise ClaimRefused(
            f"params.{name}", f"params.{name} must be a number from 0 to {AMOUNT_MAX}"
        )
    return number


def _targets(params: dict[str, Any], name: str, tool: str) -> tuple[str, ...]:
    from approvals.core import target_id_problem

    value = params.get(name)
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not ids:
        raise ClaimRefused(
            f"params.{name}",
            f"{tool} names its targets in params.{name}: a target id or a list of them",
        )
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
            raise ClaimRefused(
                "verb", f"{claim.tool} is not in this domain's tool registry: say its verb"
            )
        return Proposal(
            agent=claim.agent,
            tool=claim.tool,
            verb=claim.verb,
            amount=claim.amount,
            currency=claim.currency,
            blast_records=claim.blast_records,
            blast_population=claim.blast_population,
            target_ids=claim.target_ids,
            has_snapshot=claim.has_snapshot,
            has_compensation=claim.compensation_tool is not None or claim.compensation_connected,
            registered=False,
        )
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
            raise ClaimRefused(
                "amount",
                f"{tool} amounts to {amount:f} {currency} by its params "
                f"({' x '.join(spec.amount.params)}), not {claim.amount:f} "
                f"{claim.currency}",
            )
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
            raise ClaimRefused(
                "blast_radius.records",
                f"{tool} touches {len(targets)} records by its params, not {records}",
            )
        records = len(targets)
    population = claim.blast_population
    if spec.population is not None:
        if population is not None and population != spec.population:
            raise ClaimRefused(
                "blast_radius.population",
                f"{tool}'s population is {spec.population} in the registry, not {population}",
            )
        population = spec.population
    if claim.compensation_tool is not None and claim.compensation_tool != spec.compensating_tool:
        undone = spec.compensating_tool or "nothing (it is not compensated)"
        raise ClaimRefused(
            "compensation.tool", f"{tool} is undone by {undone}, not {claim.compensation_tool}"
        )
    return Proposal(
        agent=claim.agent,
        tool=tool,
        verb=spec.verb,
        amount=amount,
        currency=currency,
        blast_records=records,
        blast_population=population,
        target_ids=targets,
        has_snapshot=spec.undo == "restore" and claim.has_snapshot,
        has_compensation=spec.undo == "compensate",
        registered=True,
    )


def overlaps(targets: tuple[str, ...] | list[str], other: list[str]) -> bool:
    """Whether two calls of one tool act on the same thing: a shared target, or both none."""
    return bool(set(targets) & set(other)) or not targets and not other
