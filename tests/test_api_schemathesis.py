"""Schemathesis, an independent client, against the agent API of a live desk.

It reads the OpenAPI document the desk serves, then sends what that document allows and what
it forbids, with a real token and every check on: a 500, an answer that breaks the document, a
valid request refused, an invalid one accepted, or a response slower than allowed is a
finding, and any finding fails this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.agents import agent_token
from tests.servers import ROOT, running_desk

pytestmark = pytest.mark.django_db(transaction=True)

# Verdict reads long-poll for up to API_MAX_WAIT seconds by design; the response-time check
# allows that plus a margin instead of being dropped.
MAX_WAIT = 2
MAX_RESPONSE_SECONDS = MAX_WAIT + 3
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "30"))
SEED = os.environ.get("SCHEMATHESIS_SEED")  # to replay a run: its seed is printed
CONFIG = ROOT / "tests" / "schemathesis.toml"


def fuzz_domain() -> None:
    """A domain whose policy allows whatever it does not know, so that generated proposals can
    run and report results: every operation is reached, not only the refusals."""
    from approvals.audit import Actor
    from approvals.policy import PolicyDocument, domain_ensure, policy_publish

    actor = Actor.system("tests")
    domain, _ = domain_ensure(slug="fuzz", name="Fuzz", description="", actor=actor)
    document = PolicyDocument(rules=[], default_outcome="allow", unregistered="allow")
    policy_publish(domain=domain, document=document, actor=actor)


def test_the_agent_api_holds_to_its_openapi_document(tmp_path: Path, django_db_setup) -> None:
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # The API is the same code in both modes; the suite runs it against the production
        # store once rather than twice (about 45 s each).
        pytest.skip("run against PostgreSQL: set DATABASE_URL and REDIS_URL")
    fuzz_domain()
    token = agent_token("schemathesis", "fuzz", "*:*")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    with running_desk(
        tmp_path / "desk", API_MAX_WAIT=str(MAX_WAIT), API_RATE_LIMIT="1000000"
    ) as desk:
        options = {
            "--checks": "all",
            "--max-response-time": str(MAX_RESPONSE_SECONDS),
            "--header": f"Authorization: Bearer {token}",
            "--max-examples": str(EXAMPLES),
            # The document states these limits in words; JSON Schema cannot say them for the
            # free-form params and snapshots, so nothing outside them is generated.
            "--generation-allow-x00": "false",
            "--generation-codec": "utf-8",
            **({"--seed": SEED} if SEED else {}),
        }
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG)]
        command += ["run", f"{desk.url}/api/v1/openapi.json", "--no-color"]
        command += [part for option in options.items() for part in option]
        run = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        desk_log = (tmp_path / "desk" / "uvicorn.log").read_text()
    report = _shortened(run.stdout)
    print(report)
    assert run.returncode == 0, report + run.stderr[-2000:]
    assert "Traceback" not in desk_log, desk_log[-4000:]
    assert "generated" in run.stdout and "No issues found" in run.stdout


def _shortened(output: str, width: int = 600) -> str:
    """The report with each line cut to `width` characters: a failing case may carry a body of
    many kilobytes, which would push the findings themselves out of sight."""
    return "\n".join(
        line if len(line) <= width else f"{line[:width]} [... {len(line) - width} more]"
        for line in output.splitlines()
    )
