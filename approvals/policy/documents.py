from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        min_length=1,
        max_length=3,
        description="the params whose product is the amount: [total], or [qty, unit_price]",
    )
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
