"""incidentdesk-hook: the desk as the pre-tool hook of a coding agent.

Claude Code (and Codex, whose hooks take the same payload) and Gemini CLI run a command before
and after each tool call, with the call as JSON on stdin. `incidentdesk-hook pre` proposes the
call to the desk, waits for the verdict and answers the agent: exit 0 with an allow decision,
or exit 2 with the reason on stderr, which blocks the call and shows the reason to the model.
Anything that goes wrong (bad input, an unreachable desk, a crash, no decision in time) blocks.
`incidentdesk-hook post` reports what the tool returned; `incidentdesk-hook verify` runs the
configured hooks with probe calls and says what each decided.

    {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [
        {"type": "command", "command": "incidentdesk-hook pre || exit 2", "timeout": 330}]}]}}

Standard library and the core client only.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from incidentdesk_client.client import Desk, Proposal
from incidentdesk_client.errors import (
    ActionCancelled,
    ActionDenied,
    ActionExpired,
    ActionRejected,
    DeskError,
    DeskUnavailable,
    InvalidRequest,
    KillSwitchEngaged,
    OutOfScope,
    Unauthorized,
)
from incidentdesk_client.verdicts import jsonable, raise_killed, runnable

ALLOW, BLOCK = 0, 2
VERBS = frozenset({"read", "create", "update", "delete", "spend", "execute"})
SESSION_ID = re.compile(r"[^A-Za-z0-9_.:-]")
MAX_RESULT_CHARS = 16_000
STATE_MAX_AGE = 2 * 24 * 3600
# How long one verdict request is held open. The desk holds it until the action changes from
# what it was when the request arrived, so a decision made just before that is seen only when
# the wait ends: kept short, that costs seconds rather than half a minute.
POLL_SECONDS = 5


class BadInput(Exception):
    """The hook's stdin or configuration is not what it needs: the call is blocked."""


class NoDecision(DeskError):
    """Nobody decided within the hook's timeout: the call is blocked, the action stays open."""


# What the agent sends, and what it takes back


@dataclass(frozen=True)
class Call:
    """One tool call as the agent's hook payload describes it."""

    event: str
    session_id: str
    tool: str
    params: dict[str, Any]
    call_id: str = ""
    response: Any = None
    failed: bool = False
    error: str = ""

    @property
    def key(self) -> str:
        """The Idempotency-Key: the same for the pre and post hook of one tool use."""
        return f"hook:{self.call_id}"[:255] if self.call_id else ""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Probe:
    label: str
    tool: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Format:
    """One agent's hook protocol: its events, payload fields, decisions and tools."""

    name: str
    pre_event: str
    post_events: frozenset[str]
    failure_events: frozenset[str]
    verbs: dict[str, str]
    probes: tuple[Probe, ...]
    allow_output: Callable[[str, dict[str, Any] | None, str], dict[str, Any]]
    # Whether the agent can run a call with input the hook changed: given the proposed input
    # and the operator's, can the hook's answer say exactly that?
    can_update: Callable[[dict[str, Any], dict[str, Any]], bool]
    timeout_unit: float  # a handler's "timeout" in seconds per unit
    default_handler_timeout: float
    # How long pre waits for a decision unless told: well within the handler's timeout, after
    # which the agent cancels the hook.
    default_wait: float

    def call(self, payload: Any, *, pre: bool) -> Call:
        if not isinstance(payload, dict):
            raise BadInput("the hook payload is not a JSON object")
        event = payload.get("hook_event_name")
        wanted = {self.pre_event} if pre else self.post_events
        if event is not None and event not in wanted:
            stage = "pre" if pre else "post"
            raise BadInput(f"incidentdesk-hook {stage} got a {event!r} payload")
        tool, params = payload.get("tool_name"), payload.get("tool_input", {})
        session = payload.get("session_id")
        if not isinstance(tool, str) or not tool:
            raise BadInput("the hook payload has no tool_name")
        if not isinstance(params, dict):
            raise BadInput("the hook payload's tool_input is not a JSON object")
        if not isinstance(session, str) or not session:
            raise BadInput("the hook payload has no session_id")
        call_id = payload.get("tool_use_id")
        response = payload.get("tool_response")
        error = payload.get("error") or (
            response.get("error") if isinstance(response, dict) else None
        )
        return Call(
            event=event or (self.pre_event if pre else min(self.post_events)),
            session_id=SESSION_ID.sub("-", session)[:100],
            tool=tool,
            params=params,
            call_id=call_id if isinstance(call_id, str) else "",
            response=response,
            failed=event in self.failure_events or said_it_failed(response) or bool(error),
            error=str(error or ""),
        )

    def payload(self, probe: Probe, session_id: str, call_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "session_id": session_id,
            "transcript_path": "",
            "cwd": os.getcwd(),
            "hook_event_name": self.pre_event,
            "tool_name": probe.tool,
            "tool_input": probe.params,
        }
        if self.name == "claude":
            payload.update(permission_mode="default", tool_use_id=call_id)
        else:
            payload["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return payload


def said_it_failed(response: Any) -> bool:
    if not isinstance(response, dict):
        return False
    return (
        response.get("success") is False
        or bool(response.get("is_error") or response.get("isError"))
        or response.get("interrupted") is True
    )


def claude_allow(reason: str, updated: dict[str, Any] | None, context: str) -> dict[str, Any]:
    decision: dict[str, Any] = {
        "hookEventName": "PreToolUse",
        "permissionDecision": "allow",
        "permissionDecisionReason": reason,
    }
    if updated is not None:
        decision["updatedInput"] = updated
    if context:
        decision["additionalContext"] = context
    return {"hookSpecificOutput": decision}


def gemini_allow(reason: str, updated: dict[str, Any] | None, context: str) -> dict[str, Any]:
    output: dict[str, Any] = {"decision": "allow", "reason": reason}
    if updated is not None:
        output["hookSpecificOutput"] = {"hookEventName": "BeforeTool", "tool_input": updated}
    if context:
        output["systemMessage"] = context
    return output


def replaces_whole_input(proposed: dict[str, Any], run: dict[str, Any]) -> bool:
    return True


def merges_into_input(proposed: dict[str, Any], run: dict[str, Any]) -> bool:
    """Gemini CLI merges the hook's tool_input over the model's: a key the operator removed
    cannot be removed that way."""
    return set(proposed) <= set(run)


DESTRUCTIVE = "rm -rf /"
PROBE_FILE = str(Path(tempfile.gettempdir()) / "incidentdesk-hook-probe.txt")

CLAUDE = Format(
    name="claude",
    pre_event="PreToolUse",
    post_events=frozenset({"PostToolUse", "PostToolUseFailure"}),
    failure_events=frozenset({"PostToolUseFailure"}),
    verbs={
        "Read": "read",
        "Glob": "read",
        "Grep": "read",
        "Write": "update",
        "Edit": "update",
        "MultiEdit": "update",
        "NotebookEdit": "update",
        "Bash": "execute",
    },
    probes=(
        Probe("a harmless read", "Read", {"file_path": os.devnull}),
        Probe("a destructive shell command", "Bash", {"command": DESTRUCTIVE}),
        Probe("a file write", "Write", {"file_path": PROBE_FILE, "content": "probe\n"}),
    ),
    allow_output=claude_allow,
    can_update=replaces_whole_input,
    timeout_unit=1.0,
    default_handler_timeout=600.0,
    default_wait=300.0,
)

GEMINI = Format(
    name="gemini",
    pre_event="BeforeTool",
    post_events=frozenset({"AfterTool"}),
    failure_events=frozenset(),
    verbs={
        "read_file": "read",
        "read_many_files": "read",
        "list_directory": "read",
        "glob": "read",
        "search_file_content": "read",
        "write_file": "update",
        "replace": "update",
        "run_shell_command": "execute",
    },
    probes=(
        Probe("a harmless read", "read_file", {"file_path": os.devnull}),
        Probe("a destructive shell command", "run_shell_command", {"command": DESTRUCTIVE}),
        Probe("a file write", "write_file", {"file_path": PROBE_FILE, "content": "probe\n"}),
    ),
    allow_output=gemini_allow,
    can_update=merges_into_input,
    timeout_unit=0.001,
    default_handler_timeout=60.0,
    default_wait=45.0,
)

FORMATS = {CLAUDE.name: CLAUDE, GEMINI.name: GEMINI}


# Which verb a tool call is proposed with


@dataclass(frozen=True)
class Verbs:
    """The verb for a tool the domain has not registered: the mapping file's (exact names,
    then glob patterns, in file order), else the agent's built-in one, else execute."""

    builtin: dict[str, str]
    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, builtin: dict[str, str], path: str | None) -> Verbs:
        if not path:
            return cls(builtin)
        try:
            mapping = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot read the verb mapping {path}: {error}") from error
        if not isinstance(mapping, dict):
            raise BadInput(f"the verb mapping {path} is not a JSON object of tool: verb")
        wrong = {tool: verb for tool, verb in mapping.items() if verb not in VERBS}
        if wrong:
            raise BadInput(f"the verb mapping {path} has unknown verbs: {wrong}")
        return cls(builtin, mapping)

    def __call__(self, tool: str) -> str:
        if tool in self.mapping:
            return self.mapping[tool]
        for pattern, verb in self.mapping.items():
            if fnmatch.fnmatchcase(tool, pattern):
                return verb
        return self.builtin.get(tool, "execute")


def wants_a_verb(problem: dict[str, Any]) -> bool:
    """Whether the desk refused a proposal sent without a verb for want of one: the tool is
    not in the domain's registry."""
    errors = problem.get("errors") or []
    return any(isinstance(e, dict) and e.get("field") == "verb" for e in errors)


def propose(desk: Desk, call: Call, verbs: Verbs, key: str) -> Proposal:
    """The registry's verb when the tool is registered (no verb sent), else the mapped one.
    A registry refusal takes no Idempotency-Key, so the second try may use the same key."""
    session = desk.session(call.session_id)
    try:
        return session.propose(call.tool, call.params, key=key, step=False)
    except InvalidRequest as error:
        if not wants_a_verb(error.problem):
            raise
    return session.propose(call.tool, call.params, verb=verbs(call.tool), key=key, step=False)


def explain(desk: Desk, call: Call, verbs: Verbs) -> dict[str, Any]:
    """What the desk's policy would decide for this call now, without proposing it."""
    body: dict[str, Any] = {"session_id": call.session_id, "tool": call.tool, "params": call.params}
    for verb in (None, verbs(call.tool)):
        if verb is not None:
            body["verb"] = verb
        status, answer = desk.request("POST", "/api/v1/actions/explain", body, retries=0)
        if status == 200:
            return answer
        if not wants_a_verb(answer):
            break
    detail = answer.get("detail") or answer.get("title") or f"HTTP {status}"
    return {"outcome": "refused", "rule": f"HTTP {status}", "reason": detail, "in_scope": False}


# What the hook remembers between its pre and post runs


def tolerant(method: Callable[..., Any]) -> Callable[..., Any]:
    """A state step whose failure must not change the decision: the state is a convenience
    (the post hook can also find its action by proposing again with the same key)."""

    def step(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError as error:
            print(f"incidentdesk-hook: state: {method.__name__}: {error}", file=sys.stderr)
            return None

    return step


class State:
    """Small JSON files under one directory, one per tool use (its action, for the post hook)
    and one per call left waiting for an operator (picked up again by the same call later)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def default(cls, path: str | None) -> State:
        if path:
            return cls(Path(path))
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return cls(Path(cache) / "incidentdesk-hook")

    def _use_prefix(self, call: Call) -> str:
        if call.call_id:
            return "use-" + digest(call.session_id, call.call_id)
        # Without a tool use id, the same call's pre and post payloads are told apart from
        # other calls by what they are; the same call made twice is taken in order.
        return "use-" + digest(call.session_id, call.tool, canonical(call.params))

    def _write(self, name: str, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @tolerant
    def remember_use(self, call: Call, action_id: str) -> None:
        suffix = "" if call.call_id else f".{time.time_ns()}"
        record = {"action_id": action_id, "tool": call.tool, "session_id": call.session_id}
        self._write(f"{self._use_prefix(call)}{suffix}.json", record)

    @tolerant
    def use(self, call: Call) -> tuple[Path, dict[str, Any]] | None:
        """The action proposed for this tool use, and the file that says so."""
        prefix = self._use_prefix(call)
        candidates = sorted(self.root.glob(f"{prefix}*.json")) if self.root.is_dir() else []
        for path in candidates:
            record = self._read(path)
            if record and record.get("action_id"):
                return path, record
        return None

    @tolerant
    def forget_use(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _waiting_name(self, call: Call, params: dict[str, Any]) -> str:
        return "wait-" + digest(call.session_id, call.tool, canonical(params)) + ".json"

    @tolerant
    def remember_waiting(self, call: Call, params: dict[str, Any], action_id: str) -> None:
        self._write(self._waiting_name(call, params), {"action_id": action_id})

    @tolerant
    def waiting(self, call: Call) -> str | None:
        record = self._read(self.root / self._waiting_name(call, call.params))
        return str(record["action_id"]) if record and record.get("action_id") else None

    @tolerant
    def forget_waiting(self, call: Call, params: dict[str, Any]) -> None:
        (self.root / self._waiting_name(call, params)).unlink(missing_ok=True)

    @tolerant
    def sweep(self) -> None:
        if not self.root.is_dir():
            return
        old = time.time() - STATE_MAX_AGE
        for path in self.root.glob("*.json"):
            try:
                if path.stat().st_mtime < old:
                    path.unlink()
            except OSError:
                continue


# The pre hook


@dataclass
class Settings:
    """What pre and post run with: from the command line, else the environment."""

    url: str
    token: str
    format: Format
    timeout: float
    retries: int
    verbs: Verbs
    state: State
    updated_input: bool

    def desk(self) -> Desk:
        if not self.url or not self.token:
            raise BadInput("set INCIDENTDESK_URL and INCIDENTDESK_TOKEN (or --url and --token)")
        return Desk(
            self.url,
            self.token,
            timeout=10.0,
            retries=self.retries,
            backoff=0.5,
            poll_wait=POLL_SECONDS,
            watch_kill_switches=False,
        )


def decided(desk: Desk, verdict: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Long-poll a pending verdict until someone decides it, or the deadline passes."""
    while verdict["status"] == "pending":
        if verdict.get("kill_switch"):
            raise_killed(verdict)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoDecision("no decision in time", verdict)
        verdict = desk.verdict(verdict["id"], wait=max(1, min(POLL_SECONDS, int(remaining))))
    return verdict


def resumed(desk: Desk, call: Call, state: State) -> Proposal | None:
    """The action this same call (session, tool, input) left waiting for an operator, or
    approved with other input, if it may still run: a call made again picks up its decision
    instead of queueing a second escalation."""
    action_id = state.waiting(call)
    if not action_id:
        return None
    try:
        proposal: Proposal | None = desk.proposal(action_id, label=call.tool)
    except (DeskUnavailable, Unauthorized):
        raise  # the desk cannot be asked at all: that blocks, as for a new proposal
    except DeskError:
        proposal = None  # gone, or not this token's: propose afresh
    if proposal is not None and (proposal.status == "pending" or proposal.verdict["may_execute"]):
        return proposal
    state.forget_waiting(call, call.params)
    return None


@dataclass(frozen=True)
class Answer:
    code: int
    stdout: dict[str, Any] | None = None
    stderr: str = ""


def who(verdict: dict[str, Any]) -> str:
    return f" by {verdict['decided_by']}" if verdict.get("decided_by") else ""


def why(verdict: dict[str, Any]) -> str:
    return str(verdict.get("decision_reason") or verdict.get("reason") or "")


def pre(settings: Settings, payload: Any) -> Answer:
    call = settings.format.call(payload, pre=True)
    desk = settings.desk()
    state = settings.state
    state.sweep()
    deadline = time.monotonic() + settings.timeout
    proposal = resumed(desk, call, state)
    if proposal is None:
        key = call.key or f"hook:{uuid.uuid4().hex}"
        proposal = propose(desk, call, settings.verbs, key)
    # Recorded before waiting, so the post hook (and verify) find the action whatever follows.
    state.remember_use(call, proposal.id)
    try:
        verdict = runnable(decided(desk, proposal.verdict, deadline), call.tool)
    except NoDecision:
        state.remember_waiting(call, call.params, proposal.id)
        raise
    except DeskError:
        state.forget_waiting(call, call.params)
        raise
    state.forget_waiting(call, call.params)
    run = dict(verdict["params"])
    by = f"{verdict['status']}{who(verdict)}"
    reason = f"IncidentDesk: {by} (rule {verdict.get('rule')}: {why(verdict)})"
    if run == call.params:
        return Answer(ALLOW, settings.format.allow_output(reason, None, ""))
    changed = (
        f"An IncidentDesk operator{who(verdict)} changed this {call.tool} call before "
        f"approving it: it runs with {canonical(run)}"
    )
    if settings.updated_input and settings.format.can_update(call.params, run):
        context = f"{changed} instead of the input proposed. {why(verdict)}".strip()
        return Answer(ALLOW, settings.format.allow_output(reason, run, context))
    # The agent cannot be handed the operator's input: the approval waits for the same call
    # made again with exactly that input.
    state.remember_waiting(call, run, proposal.id)
    return Answer(
        BLOCK,
        stderr=f"{changed}. It was not run as proposed: to run the approved version, call "
        f"{call.tool} again with exactly that input. {why(verdict)}".strip(),
    )


def blocked(error: BaseException, settings: Settings | None) -> str:
    """What the model is told when the hook blocks a call."""
    if isinstance(error, NoDecision):
        seconds = settings.timeout if settings else 0
        return (
            f"IncidentDesk: no decision on this call within {seconds:g} s (action "
            f"{error.action_id}, waiting for an operator: {why(error.verdict)}). It was not run. "
            "Make the same call again later to pick up the decision."
        )
    if isinstance(error, (ActionDenied, ActionRejected, ActionExpired, ActionCancelled)):
        verdict = error.verdict
        return (
            f"IncidentDesk {verdict.get('status')} this call{who(verdict)} (rule "
            f"{verdict.get('rule')}): {why(verdict)}. It was not run; do not retry it in "
            "another form."
        )
    if isinstance(error, KillSwitchEngaged):
        return f"IncidentDesk: a kill switch stops every agent of this domain: {error}. Stop."
    if isinstance(error, OutOfScope):
        return f"IncidentDesk: this agent's token does not cover this call: {error}"
    if isinstance(error, Unauthorized):
        return f"IncidentDesk refused the hook's token: {error}"
    if isinstance(error, DeskUnavailable):
        return f"{error}. The call was not run (the desk is asked before every call)."
    if isinstance(error, InvalidRequest):
        fields = ", ".join(
            f"{e.get('field')}: {e.get('message')}"
            for e in error.problem.get("errors") or []
            if isinstance(e, dict)
        )
        return f"IncidentDesk refused the proposal: {error}" + (f" ({fields})" if fields else "")
    if isinstance(error, DeskError):
        return f"IncidentDesk: {error}. The call was not run."
    if isinstance(error, BadInput):
        return f"incidentdesk-hook: {error}. The call was not run."
    return f"incidentdesk-hook failed ({error!r}). The call was not run."


# The post hook


def result_of(response: Any) -> Any:
    """The tool's response as the desk keeps it: JSON, and not unboundedly long."""
    value = jsonable(response)
    text = canonical(value)
    if len(text) <= MAX_RESULT_CHARS:
        return value
    return {"truncated": True, "chars": len(text), "head": text[:MAX_RESULT_CHARS]}


def post(settings: Settings, payload: Any) -> str:
    """Report the tool's outcome; returns what to say on stderr (nothing when all went well)."""
    call = settings.format.call(payload, pre=False)
    desk = settings.desk()
    found = settings.state.use(call)
    if found is not None:
        path, record = found
        action_id = str(record["action_id"])
    elif call.key:
        # The same key and body as the pre hook: the desk answers with the same action.
        path, action_id = None, propose(desk, call, settings.verbs, call.key).id
    else:
        return f"incidentdesk-hook: no record of {call.tool} being proposed; nothing reported"
    desk.report(
        action_id,
        ok=not call.failed,
        result=result_of(call.response),
        error=call.error or ("the tool reported a failure" if call.failed else ""),
    )
    if path is not None:
        settings.state.forget_use(path)
    return ""


# verify: run the configured hooks with probe calls


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


# The command


def settings_from(args: argparse.Namespace) -> Settings:
    fmt = FORMATS[args.format]
    timeout = args.timeout
    if timeout is None:
        raw = os.environ.get("INCIDENTDESK_HOOK_TIMEOUT")
        try:
            timeout = float(raw) if raw else fmt.default_wait
        except ValueError as error:
            raise BadInput(f"INCIDENTDESK_HOOK_TIMEOUT={raw!r} is not a number") from error
    return Settings(
        url=args.url or os.environ.get("INCIDENTDESK_URL", ""),
        token=args.token or os.environ.get("INCIDENTDESK_TOKEN", ""),
        format=fmt,
        timeout=timeout,
        retries=args.retries,
        verbs=Verbs.load(fmt.verbs, args.verbs or os.environ.get("INCIDENTDESK_HOOK_VERBS")),
        state=State.default(args.state_dir or os.environ.get("INCIDENTDESK_HOOK_STATE")),
        updated_input=not args.no_updated_input,
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="incidentdesk-hook",
        description="Ask IncidentDesk before a coding agent runs a tool call.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (
        ("pre", "before a tool call: allow it (exit 0) or block it (exit 2)"),
        ("post", "after a tool call: report its outcome to the desk (never blocks)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--url", help="the desk (default: $INCIDENTDESK_URL)")
        command.add_argument("--token", help="the agent token (default: $INCIDENTDESK_TOKEN)")
        command.add_argument("--format", choices=sorted(FORMATS), default=CLAUDE.name)
        command.add_argument(
            "--timeout",
            type=float,
            help="seconds to wait for a decision before blocking (default: "
            "$INCIDENTDESK_HOOK_TIMEOUT, else 300; 45 for gemini)",
        )
        command.add_argument(
            "--verbs", help="a JSON file of tool: verb for tools the domain has not registered"
        )
        command.add_argument("--state-dir", help="where pre leaves the action id for post")
        command.add_argument("--retries", type=int, default=2, help="retries if unreachable")
        command.add_argument(
            "--no-updated-input",
            action="store_true",
            help="the agent cannot run a call with changed input: block a modified call and "
            "tell the model the operator's input instead",
        )
    check = commands.add_parser(
        "verify", help="run the configured hooks with probe calls and report what they decided"
    )
    check.add_argument("--settings", help="the agent's settings.json (default: the usual ones)")
    check.add_argument("--url", help="the desk to ask (default: the settings' or shell's env)")
    check.add_argument("--token", help="the agent token (default: likewise)")
    check.add_argument(
        "--wait", type=float, default=5.0, help="seconds a probe waits for a decision"
    )
    return top


def read_payload() -> Any:
    try:
        return json.loads(sys.stdin.read())
    except ValueError as error:
        raise BadInput(f"stdin is not JSON ({error})") from error


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "verify":
        try:
            return verify(args)
        except BadInput as error:
            print(f"FAIL: {error}")
            return 1
    if args.command == "post":
        # The tool has run: a reporting error is said, never turned into a block.
        try:
            note = post(settings_from(args), read_payload())
        except Exception as error:  # the tool ran: a failure to report is only told
            note = f"incidentdesk-hook: the result was not reported to the desk: {error}"
        if note:
            print(note, file=sys.stderr)
        return ALLOW
    settings: Settings | None = None
    try:
        settings = settings_from(args)
        answer = pre(settings, read_payload())
    except BaseException as error:  # whatever stops the hook blocks the call
        print(blocked(error, settings), file=sys.stderr)
        return BLOCK
    if answer.stdout is not None:
        print(json.dumps(answer.stdout))
    if answer.stderr:
        print(answer.stderr, file=sys.stderr)
    return answer.code


if __name__ == "__main__":
    sys.exit(main())
