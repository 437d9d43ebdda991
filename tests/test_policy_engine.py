"""Property tests of the policy engine: order, thresholds on both sides, windows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from approvals.policy import DEFAULT_RULE, Facts, PolicyDocument, Proposal, Rule, evaluate

TOOLS = ["create_order", "cancel_order", "update_discount", "delete_snapshot"]
VERBS = ["read", "create", "update", "delete", "spend", "execute"]

proposals = st.builds(
    Proposal,
    agent=st.sampled_from(["buyer", "janitor", "support"]),
    tool=st.sampled_from(TOOLS),
    verb=st.sampled_from(VERBS),
    amount=st.none() | st.decimals(min_value=0, max_value=10_000, places=2),
    blast_records=st.none() | st.integers(0, 10_000),
    blast_population=st.none() | st.integers(1, 10_000),
    target_ids=st.lists(st.sampled_from(["acct-1", "snap-prod-1", "snap-dev-2"]), max_size=3).map(
        tuple
    ),
    has_snapshot=st.booleans(),
    has_compensation=st.booleans(),
)

rules = st.builds(
    lambda i, tools, verbs, outcome, amount: Rule.model_validate(
        {
            "id": f"r{i}",
            "match": {"tools": tools, "verbs": verbs},
            "when": {"amount_over": amount} if amount is not None else {},
            "outcome": outcome,
            "tier": 1 if outcome == "escalate" else None,
            "reason": f"rule {i}",
        }
    ),
    st.integers(0, 10**6),
    st.lists(st.sampled_from([*TOOLS, "*"]), min_size=1, max_size=2),
    st.lists(st.sampled_from([*VERBS, "*"]), min_size=1, max_size=2),
    st.sampled_from(["allow", "deny", "escalate"]),
    st.none() | st.decimals(min_value=0, max_value=10_000, places=2),
)


def policy(*rule_list: Rule, default: str = "escalate") -> PolicyDocument:
    unique = {rule.id: rule for rule in rule_list}
    return PolicyDocument(
        rules=list(unique.values()),
        default_outcome=default,  # type: ignore[arg-type]
        default_tier=1 if default == "escalate" else None,
    )


def decide(document: PolicyDocument, proposal: Proposal, facts: Facts | None = None):
    verdict, _ = evaluate(document, 7, proposal, facts or Facts())
    return verdict


@given(st.lists(rules, max_size=6), st.lists(rules, max_size=6), proposals)
def test_first_applicable_rule_wins(before, after, proposal) -> None:
    always = Rule(id="always", outcome="deny", reason="catch-all")
    ids = {r.id for r in before}
    document = policy(*before, always, *[r for r in after if r.id not in ids])
    verdict, trace = evaluate(document, 7, proposal, Facts())
    applied = [t.rule for t in trace if t.matched]
    assert applied == [verdict.rule], "evaluation stops at the first rule that applies"
    # Nothing after a rule that always applies can decide.
    assert verdict.rule in {r.id for r in before} | {"always"}
    position = [r.id for r in document.rules].index(verdict.rule)
    assert all(not t.matched for t in trace[:position])
    assert verdict.version == 7


@given(st.lists(rules, max_size=8), proposals)
def test_the_default_closes_the_policy(rule_list, proposal) -> None:
    document = policy(*rule_list, default="deny")
    verdict = decide(document, proposal)
    if verdict.rule == DEFAULT_RULE:
        assert verdict.outcome == "deny" and verdict.tier is None
    else:
        assert verdict.rule in {r.id for r in document.rules}


@given(
    st.decimals(min_value=0, max_value=100_000, places=2),
    st.decimals(min_value=0, max_value=100_000, places=2),
)
def test_amount_cap_applies_only_above_the_cap(amount, cap) -> None:
    document = policy(
        Rule.model_validate(
            {
                "id": "cap",
                "when": {"amount_over": cap},
                "outcome": "escalate",
                "tier": 1,
                "reason": "over cap",
            }
        ),
        default="allow",
    )
    verdict = decide(
        document, Proposal(agent="a", tool="create_order", verb="spend", amount=amount)
    )
    assert (verdict.rule == "cap") == (amount > cap)


def test_amount_cap_at_the_edges() -> None:
    document = policy(
        Rule.model_validate(
            {
                "id": "cap",
                "when": {"amount_over": "500"},
                "outcome": "escalate",
                "tier": 1,
                "reason": "over cap",
            }
        ),
        default="allow",
    )
    for amount, expected in [("499.99", "default"), ("500", "default"), ("500.01", "cap")]:
        proposal = Proposal(agent="a", tool="t", verb="spend", amount=Decimal(amount))
        assert decide(document, proposal).rule == expected, amount
    assert decide(document, Proposal(agent="a", tool="t", verb="spend")).rule == "default"


@given(st.integers(0, 20_000), st.integers(1, 20_000), st.floats(0, 1))
def test_blast_radius_fraction(records, population, fraction) -> None:
    records = min(records, population)
    document = policy(
        Rule.model_validate(
            {
                "id": "blast",
                "when": {"blast_radius_over": fraction},
                "outcome": "escalate",
                "tier": 2,
                "reason": "wide",
            }
        ),
        default="allow",
    )
    proposal = Proposal(
        agent="a", tool="t", verb="update", blast_records=records, blast_population=population
    )
    assert (decide(document, proposal).rule == "blast") == (records / population > fraction)


def test_two_percent_of_accounts_is_over_one_percent() -> None:
    document = policy(
        Rule.model_validate(
            {
                "id": "blast",
                "when": {"blast_radius_over": 0.01},
                "outcome": "escalate",
                "tier": 2,
                "reason": "wide",
            }
        ),
        default="allow",
    )
    wide = Proposal(agent="a", tool="t", verb="update", blast_records=200, blast_population=10_000)
    narrow = Proposal(
        agent="a", tool="t", verb="update", blast_records=100, blast_population=10_000
    )
    assert decide(document, wide).rule == "blast"
    assert decide(document, narrow).rule == "default"


@given(st.integers(0, 50), st.integers(0, 50), st.integers(1, 86_400))
def test_rate_counts_this_proposal_in_its_window(earlier, limit, window) -> None:
    asked: list[tuple[int, int]] = []

    def recent(window_seconds: int, cap: int) -> int:
        asked.append((window_seconds, cap))
        return min(earlier, cap)

    document = policy(
        Rule.model_validate(
            {
                "id": "rate",
                "when": {"rate_over": {"count": limit, "window_seconds": window}},
                "outcome": "escalate",
                "tier": 1,
                "reason": "too many",
            }
        ),
        default="allow",
    )
    verdict = decide(document, Proposal(agent="a", tool="t", verb="create"), Facts(recent))
    assert (verdict.rule == "rate") == (earlier + 1 > limit)
    assert asked == [(window, limit)]


def test_database_facts_are_asked_only_when_a_rule_needs_them() -> None:
    def fail(*args) -> int:
        raise AssertionError("not needed")

    document = policy(
        Rule(id="reads", match={"verbs": ["read"]}, outcome="allow", reason="reads"),  # type: ignore[arg-type]
        Rule.model_validate(
            {
                "id": "rate",
                "when": {"rate_over": {"count": 1, "window_seconds": 60}},
                "outcome": "escalate",
                "tier": 1,
                "reason": "too many",
            }
        ),
    )
    read = Proposal(agent="a", tool="t", verb="read")
    assert decide(document, read, Facts(recent_count=fail, rolled_back=fail)).rule == "reads"


def test_protected_targets_irreversible_and_flapping() -> None:
    document = policy(
        Rule.model_validate(
            {
                "id": "protected",
                "when": {"protected_targets": ["snap-prod-*"]},
                "outcome": "deny",
                "reason": "protected",
            }
        ),
        Rule.model_validate(
            {
                "id": "flap",
                "when": {"repeat_of_rolled_back": True},
                "outcome": "escalate",
                "tier": 2,
                "reason": "flapping",
            }
        ),
        Rule.model_validate(
            {
                "id": "irreversible",
                "when": {"irreversible_without_snapshot": True},
                "outcome": "escalate",
                "tier": 2,
                "reason": "no undo",
            }
        ),
        default="allow",
    )
    prod = Proposal(agent="a", tool="t", verb="delete", target_ids=("snap-dev-1", "snap-prod-9"))
    assert decide(document, prod).rule == "protected"
    repeat = Proposal(agent="a", tool="t", verb="update", has_snapshot=True)
    assert (
        decide(document, repeat, Facts(rolled_back=lambda: [datetime(2026, 1, 1, tzinfo=UTC)])).rule
        == "flap"
    )
    bare_delete = Proposal(agent="a", tool="t", verb="delete")
    assert decide(document, bare_delete).rule == "irreversible"
    compensated = Proposal(agent="a", tool="t", verb="spend", has_compensation=True)
    assert decide(document, compensated).rule == "default"


def test_policy_documents_are_validated_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="needs a tier"):
        Rule.model_validate({"id": "x", "outcome": "escalate", "reason": "r"})
    with pytest.raises(ValidationError, match="used twice"):
        PolicyDocument.model_validate(
            {"rules": [{"id": "x", "outcome": "allow", "reason": "r"}] * 2}
        )
    with pytest.raises(ValidationError) as error:
        PolicyDocument.model_validate(
            {"rules": [{"id": "x", "outcome": "allow", "reason": "r", "when": {"amount_ovr": 5}}]}
        )
    assert error.value.errors()[0]["loc"] == ("rules", 0, "when", "amount_ovr")


def test_a_registered_tool_must_be_complete_enough_to_judge() -> None:
    with pytest.raises(ValidationError, match="spend tool says which params make its amount"):
        PolicyDocument.model_validate(
            {"rules": [], "tools": [{"name": "pay_invoice", "verb": "spend"}]}
        )
    with pytest.raises(ValidationError, match="compensating_tool"):
        PolicyDocument.model_validate(
            {"rules": [], "tools": [{"name": "order", "verb": "create", "undo": "compensate"}]}
        )
    document = PolicyDocument.model_validate(
        {
            "rules": [],
            "tools": [
                {
                    "name": "pay_invoice",
                    "verb": "spend",
                    "amount": {"params": ["total"], "currency": "EUR"},
                }
            ],
        }
    )
    assert document.tool("pay_invoice") is not None and document.tool("other") is None
