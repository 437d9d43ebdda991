from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic import Strict as PydanticStrict

from approvals.api.proposals import ProposalData
from approvals.core import (
    MAX_INTEGER,
    TARGET_ID_MAX,
    TARGET_ID_PATTERN,
)
from approvals.policy import AMOUNT_MAX

Verb = Literal["read", "create", "update", "delete", "spend", "execute"]


IDENTIFIER = r"^[A-Za-z0-9_.:-]{1,100}$"


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema counts one (5 and 5.0), never a boolean or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


JSONInteger = BeforeValidator(_json_integer)


Count = Annotated[int, Field(ge=0, le=MAX_INTEGER), JSONInteger]


StepIndex = Annotated[int, Field(ge=0, le=2**31 - 1), JSONInteger]


Flag = Annotated[bool, PydanticStrict()]


AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,13})(\.[0-9]{1,4})?$"


def _amount(value: Any) -> Any:
    """A decimal string is taken exactly; a JSON number (a binary float) to 4 places."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a number")
    if isinstance(value, str):
        if not re.fullmatch(AMOUNT_PATTERN, value):
            raise ValueError("must be a decimal string like 450.00 (up to 4 decimal places)")
        return Decimal(value)
    if isinstance(value, int | float):
        number = Decimal(repr(value))
        if not number.is_finite() or abs(number) > AMOUNT_MAX:  # rounding would overflow
            raise ValueError(f"must be a number from 0 to {AMOUNT_MAX}")
        return round(number, 4)
    raise ValueError("must be a decimal string or a number")


AmountValue = Annotated[
    Decimal,
    BeforeValidator(_amount),
    Field(ge=0, le=AMOUNT_MAX),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": AMOUNT_PATTERN},
                {"type": "number", "minimum": 0, "maximum": AMOUNT_MAX},
            ],
            "description": "a decimal string, taken exactly, or a number, rounded to 4 places",
        }
    ),
]


TargetId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TARGET_ID_MAX,
        pattern=TARGET_ID_PATTERN,
        description="a target's id in its system: one path segment (no control characters, "
        'no "/", not "." or "..")',
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Amount(Strict):
    value: AmountValue
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD")


class BlastRadius(Strict):
    records: Count = Field(description="records the action touches")
    population: Count = Field(gt=0, description="records of that kind in all")

    @model_validator(mode="after")
    def records_within_population(self) -> BlastRadius:
        if self.records > self.population:
            raise ValueError("records cannot exceed population")
        return self


class Compensation(Strict):
    tool: str = Field(pattern=IDENTIFIER, description="the call that undoes this one")
    params: dict[str, Any] = Field(default_factory=dict)


class ActionIn(Strict):
    session_id: str = Field(pattern=IDENTIFIER)
    step_index: StepIndex | None = Field(default=None, description="the reasoning step behind it")
    tool: str = Field(pattern=IDENTIFIER)
    verb: Verb | None = Field(
        default=None,
        description="checked against the tool registry (a mismatch is 422); needed only for a "
        "tool the domain has not registered",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    target_ids: list[TargetId] = Field(default_factory=list, max_length=100_000)
    amount: Amount | None = None
    blast_radius: BlastRadius | None = None
    pre_action_state: Any = Field(default=None, description="snapshot of the targets now")
    compensation: Compensation | None = None

    def data(self) -> ProposalData:
        return ProposalData(
            session_id=self.session_id,
            step_index=self.step_index,
            tool=self.tool,
            verb=self.verb,
            params=self.params,
            target_ids=self.target_ids,
            amount=self.amount.value if self.amount else None,
            currency=self.amount.currency if self.amount else "",
            blast_records=self.blast_radius.records if self.blast_radius else None,
            blast_population=self.blast_radius.population if self.blast_radius else None,
            pre_action_state=self.pre_action_state,
            compensation=self.compensation.model_dump(mode="json") if self.compensation else None,
        )


class ResultIn(Strict):
    ok: Flag
    result: Any = None
    post_state: Any = Field(default=None, description="state of the targets after the call")
    error: str = Field(default="", max_length=10_000)


class StartIn(Strict):
    params: dict[str, Any] = Field(description="the params the agent is about to run the tool with")


class StepIn(Strict):
    index: StepIndex
    kind: Literal["thought", "observation", "tool_call", "tool_result"]
    content: str = Field(max_length=100_000)
    data: dict[str, Any] = Field(default_factory=dict)


class StepsIn(Strict):
    steps: list[StepIn] = Field(min_length=1, max_length=1000)


class Verdict(Strict):
    """The desk's answer about one action (responses only)."""

    id: str
    status: str = Field(
        description="allowed | denied | pending, then approved | modified | rejected | expired | "
        "cancelled, then succeeded | failed, then rolled_back | rollback_failed"
    )
    may_execute: bool
    rule: str
    reason: str
    policy_version: int
    tier: int | None
    expires_at: str | None
    run_by: str | None = Field(
        description="an allowed or approved action may start until then (APPROVAL_TTL)"
    )
    params: dict[str, Any] = Field(
        description="the params to run with (an operator's, if modified)"
    )
    modified: bool
    decided_by: str | None = Field(
        description="who decided an escalation: an operator, or escalation-timer when it expired"
    )
    decision_reason: str = Field(description="why, in the decider's words (empty if none given)")
    kill_switch: dict[str, Any] | None = Field(
        default=None,
        description="on reads: the engaged kill switch over the action's domain, if any "
        "(then may_execute is false)",
    )
