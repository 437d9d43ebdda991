"""What a coding agent's hook payloads say, how a call is answered in each agent's format,
and which verb a call is proposed with."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from incidentdesk_client.client import Desk, Proposal
from incidentdesk_client.errors import (
    InvalidRequest,
)

ALLOW, BLOCK = 0, 2  # the exit codes that let a call through and that stop it


VERBS = frozenset({"read", "create", "update", "delete", "spend", "execute"})


SESSION_ID = re.compile(r"[^A-Za-z0-9_.:-]")


class BadInput(Exception):
    """The hook's stdin or configuration is not what it needs: the call is blocked."""


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


STATE_MAX_AGE = 2 * 24 * 3600


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
