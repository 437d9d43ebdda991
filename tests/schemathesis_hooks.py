"""What the agent API's OpenAPI document cannot say, told to Schemathesis.

Loaded by the Schemathesis CLI (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks) in
tests/test_api_schemathesis.py. Each hook stands for a rule the document states in words but
JSON Schema cannot express, so that a schema-valid case the desk rightly refuses is not
reported as a finding, while every other check stays on.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """A blast radius touches no more records than there are (a rule across two fields)."""
    body = case.body
    blast = body.get("blast_radius") if isinstance(body, dict) else None
    if isinstance(blast, dict):
        records, population = blast.get("records"), blast.get("population")
        numbers = all(type(n) in (int, float) for n in (records, population))
        if numbers and records > population:
            return False
    return True


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """A valid Idempotency-Key is fresh for each proposal, as a client sends it: reusing one
    with another body is a 422 by design (the IETF Idempotency-Key draft). Missing, empty and
    overlong keys are left as generated, so their refusal is still tested."""
    headers = case.headers
    if headers and 1 <= len(headers.get("Idempotency-Key", "")) <= 255:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    # The verb may be left out only for a tool the domain's registry knows (the document says
    # so in words); the generated tool names are not registered, so such a case names one.
    body = case.body
    if isinstance(body, dict) and "tool" in body and body.get("verb") is None:
        body["verb"] = "update"
    return case
