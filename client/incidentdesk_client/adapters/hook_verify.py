"""incidentdesk-hook verify: run the configured hooks with probe calls and say what each
decided, because a hook that silently never runs looks exactly like one that allows."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incidentdesk_client.adapters.hook_calls import (
    BLOCK,
    FORMATS,
    BadInput,
    Call,
    Format,
    Probe,
    State,
    Verbs,
    canonical,
    explain,
)
from incidentdesk_client.client import Desk
from incidentdesk_client.errors import (
    DeskError,
)


@dataclass(frozen=True)
class Handler:
    event: str
    matcher: str
    command: str
    timeout: float

    def matches(self, tool: str) -> bool:
        if self.matcher in ("", "*"):
            return True
        try:
            return re.fullmatch(self.matcher, tool) is not None
        except re.error:
            return self.matcher == tool


@dataclass
class Run:
    decision: str  # allow, block, ask, none, error, timeout
    detail: str
    seconds: float


@dataclass
class ProbeResult:
    probe: Probe
    desk_says: str
    desk_refuses: bool
    runs: list[Run]
    action: str

    @property
    def decision(self) -> str:
        if not self.runs:
            return "none"
        for decision in ("block", "timeout", "error", "ask", "allow"):
            if any(run.decision == decision for run in self.runs):
                return decision
        return "none"

    @property
    def ok(self) -> bool:
        return self.decision == "block" if self.desk_refuses else self.decision != "block"

    @property
    def hook_did(self) -> str:
        return {
            "block": "blocked it",
            "allow": "allowed it",
            "ask": "left it to the user",
            "timeout": "did not finish",
            "error": "failed without blocking",
        }.get(self.decision, "made no decision")


def settings_paths(given: str | None) -> list[Path]:
    if given:
        return [Path(given)]
    candidates = [
        Path.home() / ".claude" / "settings.json",
        Path(".claude") / "settings.json",
        Path(".claude") / "settings.local.json",
        Path.home() / ".gemini" / "settings.json",
        Path(".gemini") / "settings.json",
    ]
    return [path for path in candidates if path.is_file()]


def objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in a list of a settings file (anything else there is skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def configured(paths: list[Path]) -> tuple[list[Handler], dict[str, str]]:
    """The command hooks before tool use in the settings files, and the env they set."""
    handlers: list[Handler] = []
    env: dict[str, str] = {}
    for path in paths:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot read {path}: {error}") from error
        if not isinstance(document, dict):
            raise BadInput(f"{path} is not a JSON object")
        if isinstance(document.get("env"), dict):
            env.update({k: str(v) for k, v in document["env"].items()})
        hooks = document.get("hooks") if isinstance(document.get("hooks"), dict) else {}
        for fmt in FORMATS.values():
            for group in objects(hooks.get(fmt.pre_event)):
                for hook in objects(group.get("hooks")):
                    if hook.get("type", "command") != "command" or not hook.get("command"):
                        continue
                    timeout = hook.get("timeout")
                    seconds = (
                        float(timeout) * fmt.timeout_unit
                        if isinstance(timeout, (int, float))
                        else fmt.default_handler_timeout
                    )
                    matcher = str(group.get("matcher") or "")
                    command = str(hook["command"])
                    handlers.append(Handler(fmt.pre_event, matcher, command, seconds))
    return handlers, env


def run_handler(
    handler: Handler, payload: dict[str, Any], env: dict[str, str], limit: float
) -> Run:
    started = time.monotonic()
    try:
        done = subprocess.run(
            handler.command,
            shell=True,
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            env=env,
            timeout=min(limit, handler.timeout),
        )
    except subprocess.TimeoutExpired:
        seconds = time.monotonic() - started
        return Run("timeout", f"still running after {seconds:.0f} s", seconds)
    seconds = time.monotonic() - started
    stderr = " ".join(done.stderr.split())[:200]
    if done.returncode == BLOCK:
        return Run("block", f"exit 2: {stderr}", seconds)
    if done.returncode != 0:
        return Run("error", f"exit {done.returncode} (does not block): {stderr}", seconds)
    try:
        output = json.loads(done.stdout) if done.stdout.strip() else {}
    except ValueError:
        return Run("none", "exit 0, stdout is not JSON", seconds)
    output = output if isinstance(output, dict) else {}
    specific = output.get("hookSpecificOutput")
    specific = specific if isinstance(specific, dict) else {}
    decision = specific.get("permissionDecision") or output.get("decision")
    reason = specific.get("permissionDecisionReason") or output.get("reason") or ""
    if output.get("continue") is False or decision in ("deny", "block"):
        return Run("block", f"{decision or 'stop'}: {reason}", seconds)
    if decision in ("allow", "approve"):
        return Run("allow", f"allow: {reason}", seconds)
    if decision == "ask":
        return Run("ask", f"ask the user: {reason}", seconds)
    return Run("none", "exit 0 with no decision", seconds)


def verify(args: argparse.Namespace) -> int:
    paths = settings_paths(args.settings)
    handlers, settings_env = configured(paths)
    where = ", ".join(map(str, paths)) or "no settings file found"
    if not handlers:
        print(f"FAIL: no PreToolUse (or BeforeTool) command hook in {where}")
        return 1
    env = {**os.environ, **settings_env}
    url = args.url or env.get("INCIDENTDESK_URL", "")
    token = args.token or env.get("INCIDENTDESK_TOKEN", "")
    desk = Desk(url, token, retries=0, watch_kill_switches=False) if url and token else None
    print(f"hooks before tool use in {where}:")
    for handler in handlers:
        print(f"  {handler.event} matcher {handler.matcher or '*'!r}: {handler.command}")
    print(f"desk: {url or '(INCIDENTDESK_URL is not set)'}")
    results: list[ProbeResult] = []
    with tempfile.TemporaryDirectory(prefix="incidentdesk-verify-") as state_dir:
        env.update(INCIDENTDESK_HOOK_STATE=state_dir, INCIDENTDESK_HOOK_TIMEOUT=str(args.wait))
        for fmt in FORMATS.values():
            mine = [h for h in handlers if h.event == fmt.pre_event]
            if mine:
                results += [
                    probe_once(fmt, probe, mine, env, desk, State(Path(state_dir)), args.wait)
                    for probe in fmt.probes
                ]
    for result in results:
        slowest = max((run.seconds for run in result.runs), default=0.0)
        ran = "; ".join(run.detail for run in result.runs) or "no hook matches this tool"
        # A hook that blocks what the desk allows is safe, if in the way: a note, not a failure.
        mark = "ok  " if result.ok else "FAIL" if result.desk_refuses else "note"
        print(
            f"{mark} {result.probe.tool} ({result.probe.label}): the desk {result.desk_says}; "
            f"the hook {result.hook_did} in {slowest:.2f} s [{ran}]; {result.action}"
        )
    failed = [r for r in results if not r.ok and r.desk_refuses]
    for result in failed:
        print(
            f"FAIL: {result.probe.label} ({result.probe.tool} {canonical(result.probe.params)}) "
            f"was not blocked, though the desk {result.desk_says}"
        )
    if not failed:
        print(f"verify: {len(results)} probes, each decided as the desk decides")
    return 1 if failed else 0


def probe_once(
    fmt: Format,
    probe: Probe,
    handlers: list[Handler],
    env: dict[str, str],
    desk: Desk | None,
    state: State,
    wait: float,
) -> ProbeResult:
    session_id = f"incidentdesk-verify-{time.strftime('%Y%m%dT%H%M%S')}"
    call_id = f"verify-{uuid.uuid4().hex}"
    payload = fmt.payload(probe, session_id, call_id)
    call = fmt.call(payload, pre=True)
    verbs = Verbs.load(fmt.verbs, env.get("INCIDENTDESK_HOOK_VERBS"))
    desk_says, refuses = expectation(desk, call, verbs)
    runs = [run_handler(h, payload, env, wait + 20) for h in handlers if h.matches(probe.tool)]
    action = "the desk recorded no action for it"
    found = state.use(call)
    if found is not None and desk is not None:
        try:
            recorded = desk.proposal(str(found[1]["action_id"]))
        except DeskError as error:
            action = f"action {found[1]['action_id']} not readable: {error}"
        else:
            action = f"the desk recorded action {recorded.id}: {recorded.status}"
            # What the desk did decide, rather than what its policy said beforehand.
            refuses = recorded.status not in ("allowed", "approved", "modified")
            if recorded.verdict.get("may_execute"):
                # Never run: say so, so that no allowed action is left open.
                recorded.report(False, error="incidentdesk-hook verify probe: not run")
    return ProbeResult(probe, desk_says, refuses, runs, action)


def expectation(desk: Desk | None, call: Call, verbs: Verbs) -> tuple[str, bool]:
    """What the desk says of a probe call, and whether it refuses it (escalations count: with
    nobody deciding during the probe, the hook must block). A desk that cannot be asked
    refuses everything: the hook must fail closed."""
    if desk is None:
        return "cannot be asked (no URL or token)", True
    try:
        switches = desk.kill_switch_state().get("switches", {})
        engaged = [s for s in switches.values() if s.get("engaged")]
        if engaged:
            return f"is stopped by the kill switch {engaged[0]['scope']}", True
        verdict = explain(desk, call, verbs)
    except DeskError as error:
        return f"cannot be asked ({error})", True
    outcome, rule = verdict.get("outcome"), verdict.get("rule")
    if outcome == "allow" and not verdict.get("in_scope", True):
        return f"refuses it (out of the token's scopes; the policy would allow by {rule})", True
    return f"says {outcome} ({rule})", outcome != "allow"
