"""The demo domains' starting policies, after the incidents in the reference stories."""

from __future__ import annotations

from typing import Any

FLAPPING = {
    "id": "flapping",
    "description": "The agent is repeating something a person already rolled back.",
    "when": {"repeat_of_rolled_back": True},
    "outcome": "escalate",
    "tier": 2,
    "reason": "repeats an action that was rolled back",
}


IRREVERSIBLE = {
    "id": "irreversible-without-undo",
    "description": "Nothing to restore and no compensating call: a person must agree first.",
    "when": {"irreversible_without_snapshot": True},
    "outcome": "escalate",
    "tier": 2,
    "reason": "irreversible and no pre-action snapshot or compensation",
}


ALLOW_READS = {
    "id": "allow-reads",
    "match": {"verbs": ["read"]},
    "outcome": "allow",
    "reason": "reads change nothing",
}


DEFAULT_POLICIES: dict[str, dict[str, Any]] = {
    "billing": {
        "comment": "Discounts: escalate anything touching more than 1% of accounts",
        "tools": [
            {"name": "list_accounts", "verb": "read", "description": "accounts of a plan"},
            {
                "name": "update_discount",
                "verb": "update",
                "undo": "restore",
                "targets": "account_ids",
                "population": 10_000,
                "description": "set the discount rate of accounts",
            },
        ],
        "rules": [
            ALLOW_READS,
            FLAPPING,
            {
                "id": "blast-radius",
                "description": "More than 1% of the records in scope changes at once.",
                "when": {"blast_radius_over": 0.01},
                "outcome": "escalate",
                "tier": 2,
                "reason": "touches more than 1% of the population",
            },
            {
                "id": "update-rate",
                "match": {"verbs": ["update"]},
                "when": {"rate_over": {"count": 30, "window_seconds": 3600}},
                "outcome": "escalate",
                "tier": 1,
                "reason": "more than 30 updates in an hour",
            },
            IRREVERSIBLE,
            {
                "id": "allow-small-changes",
                "match": {"verbs": ["create", "update"]},
                "outcome": "allow",
                "reason": "small, reversible change",
            },
        ],
        "default_outcome": "escalate",
        "default_tier": 1,
    },
    "procurement": {
        "comment": "Orders: $500 autonomous cap; a runaway ordering loop is stopped early",
        "tools": [
            {
                "name": "create_order",
                "verb": "create",
                "undo": "compensate",
                "compensating_tool": "cancel_order",
                "amount": {"params": ["qty", "unit_price"], "currency": "USD"},
                "description": "order qty units of a sku from the vendor",
            },
            {
                "name": "cancel_order",
                "verb": "update",
                "targets": "order_id",
                "description": "cancel an open order",
            },
        ],
        "rules": [
            ALLOW_READS,
            FLAPPING,
            {
                "id": "order-rate",
                "description": "The runaway loop: an agent ordering again and again.",
                "match": {"tools": ["create_order"]},
                "when": {"rate_over": {"count": 3, "window_seconds": 3600}},
                "outcome": "escalate",
                "tier": 1,
                "reason": "more than 3 orders in an hour by this agent",
            },
            {
                "id": "spend-cap",
                "when": {"amount_over": "500"},
                "outcome": "escalate",
                "tier": 1,
                "reason": "over the $500 autonomous spending cap",
            },
            IRREVERSIBLE,
            {
                "id": "allow-orders-under-cap",
                "match": {"verbs": ["create", "spend", "update"]},
                "outcome": "allow",
                "reason": "within the autonomous spending cap",
            },
        ],
        "default_outcome": "escalate",
        "default_tier": 1,
    },
    "devops": {
        "comment": "Protected snapshots are never deleted by an agent",
        "tools": [
            {"name": "list_snapshots", "verb": "read", "description": "snapshots and their use"},
            {
                "name": "delete_snapshot",
                "verb": "delete",
                "targets": "snapshot_id",
                "description": "delete a storage snapshot: it cannot be brought back",
            },
            {
                "name": "restart_service",
                "verb": "execute",
                "targets": "service",
                "description": "restart one service",
            },
        ],
        "rules": [
            {
                "id": "protected-targets",
                "description": "Production and critical staging snapshots.",
                "match": {"verbs": ["delete", "update", "execute"]},
                "when": {"protected_targets": ["snap-prod-*", "snap-staging-*"]},
                "outcome": "deny",
                "reason": "protected target: production and staging snapshots are off limits",
            },
            ALLOW_READS,
            FLAPPING,
            {
                "id": "deletes-need-a-person",
                "match": {"verbs": ["delete"]},
                "outcome": "escalate",
                "tier": 2,
                "reason": "deletion needs two people",
            },
            {
                "id": "allow-restarts",
                "match": {"tools": ["restart_*"], "verbs": ["execute"]},
                "outcome": "allow",
                "reason": "restarts are routine",
            },
        ],
        "default_outcome": "escalate",
        "default_tier": 1,
    },
}
