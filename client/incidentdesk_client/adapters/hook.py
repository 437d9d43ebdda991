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
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from incidentdesk_client.adapters.hook_calls import (
    ALLOW,
    BLOCK,
    CLAUDE,
    FORMATS,
    BadInput,
    Call,
    Format,
    State,
    Verbs,
    canonical,
    propose,
)
from incidentdesk_client.adapters.hook_verify import verify
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

MAX_RESULT_CHARS = 16_000
# How long one verdict request is held open: short, so that the hook's own deadline (its
# timeout option) is looked at every few seconds while a person decides.
POLL_SECONDS = 5


class NoDecision(DeskError):
    """Nobody decided within the hook's timeout: the call is blocked, the action stays open."""


# What the agent sends, and what it takes back


# Which verb a tool call is proposed with


# What the hook remembers between its pre and post runs


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


# Past the wait for a decision, the hook blocks whatever it is doing (a request, a retry's
# back-off) after this many more seconds: well inside the agent's own hook timeout (330 s
# against a 300 s wait in the example, 60 against 45 for Gemini CLI), since an agent lets a
# call through when its hook times out.
DEADLINE_MARGIN = 10.0


def deadline_of(wait: float) -> float:
    # Three seconds at least, for the proposal itself when no wait is wanted (verify's probes).
    return wait + min(DEADLINE_MARGIN, max(3.0, wait / 3))


def block_at_deadline(seconds: float) -> None:
    """Block the call (exit 2) once `seconds` pass, even in the middle of a request or a
    retry's back-off."""

    def expire() -> None:
        print(
            f"incidentdesk-hook: no answer from the desk within {seconds:.0f} s; the call is "
            "blocked (fail closed)",
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(BLOCK)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


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
        block_at_deadline(deadline_of(settings.timeout))
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
