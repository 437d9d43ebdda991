"""incidentdesk-hook as a coding agent runs it: a process per tool call, the call as JSON on
stdin, against the served desk; and `verify` running the hooks a settings file configures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from approvals.audit import Actor
from approvals.killswitches import killswitch_set
from approvals.models import Action
from approvals.policy import PolicyDocument, domain_ensure, domain_undo_rule_set, policy_publish
from tests.agents import agent_token, decide
from tests.servers import ROOT, free_port
from tests.servers import Desk as RunningDesk
from tests.test_client import decide_later

pytestmark = pytest.mark.django_db(transaction=True)

DOMAIN = "agent-hooks"
POLICY = {
    "comment": "A coding agent: reads and edits run, new files need a person, no shell",
    "tools": [
        {"name": "Bash", "verb": "execute", "description": "a shell command"},
        {"name": "Write", "verb": "update", "description": "write a whole file"},
        {"name": "Edit", "verb": "update", "description": "replace a string in a file"},
    ],
    "rules": [
        {
            "id": "no-shell",
            "match": {"tools": ["Bash"]},
            "outcome": "deny",
            "reason": "agents run no shell commands here",
        },
        {
            "id": "allow-reads",
            "match": {"verbs": ["read"]},
            "outcome": "allow",
            "reason": "reads change nothing",
        },
        {
            "id": "new-files-need-a-person",
            "match": {"tools": ["Write"]},
            "outcome": "escalate",
            "tier": 1,
            "reason": "a new file needs a person",
        },
        {
            "id": "allow-edits",
            "match": {"tools": ["Edit"], "verbs": ["update"]},
            "outcome": "allow",
            "reason": "edits are reviewed in the pull request",
        },
    ],
    "default_outcome": "escalate",
    "default_tier": 1,
    "unregistered": "allow",
}
SCOPES = ("*:read", "Edit:update", "Write:update", "Bash:execute")
HOOK = [sys.executable, "-m", "incidentdesk_client.adapters.hook"]
NEW_FILE = {"file_path": "/repo/notes.md", "content": "draft\n"}
CLAUDE_PROBES = ("Read", "Bash", "Write")


def coder_token() -> str:
    actor = Actor.system("tests")
    domain, created = domain_ensure(slug=DOMAIN, name="Agent hooks", description="", actor=actor)
    if created:
        document = PolicyDocument.model_validate(POLICY)
        policy_publish(domain=domain, document=document, actor=actor)
        # No connector undoes a file edit here: the escalations stay at the policy's tier.
        domain_undo_rule_set(domain=domain, raise_tier=False, actor=actor)
    return agent_token("coder", DOMAIN, *SCOPES)


def payload(tool: str, tool_input: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "session_id": "0f6c1d2e-claude-session",
        "transcript_path": "/home/dev/.claude/projects/repo/0f6c1d2e.jsonl",
        "cwd": "/repo",
        "permission_mode": "default",
        "hook_event_name": "PreToolUse",
        "tool_name": tool,
        "tool_input": tool_input,
        "tool_use_id": f"toolu_{uuid.uuid4().hex[:24]}",
        **fields,
    }


def hook_env(url: str, token: str, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "client"),
        "INCIDENTDESK_URL": url,
        "INCIDENTDESK_TOKEN": token,
        "INCIDENTDESK_HOOK_STATE": str(state),
    }


def run(
    stage: str, stdin: Any, env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    return run_together((stage, stdin, env, *options))[0]


def run_together(*calls: tuple[Any, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Hook processes started at once, as an agent starts them for calls made together."""
    started = []
    for stage, stdin, env, *options in calls:
        text = stdin if isinstance(stdin, str) else json.dumps(stdin)
        command = [*HOOK, stage, *options]
        pipes = subprocess.PIPE
        process = subprocess.Popen(
            command, stdin=pipes, stdout=pipes, stderr=pipes, text=True, env=env
        )
        started.append((command, text, process))
    done = []
    for command, text, process in started:
        stdout, stderr = process.communicate(text, timeout=60)
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


def decision(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["hookSpecificOutput"]
    assert output["hookEventName"] == "PreToolUse"
    return output


def test_an_allowed_call_is_allowed_and_its_result_reported(
    desk: RunningDesk, tmp_path: Path
) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    edit = payload("Edit", {"file_path": "/repo/app.py", "old_string": "a", "new_string": "b"})
    assert decision(run("pre", edit, env))["permissionDecision"] == "allow"
    action = Action.objects.get()
    assert (action.tool, action.verb, action.rule) == ("Edit", "update", "allow-edits")
    assert action.session.external_id == edit["session_id"]
    response = {"filePath": "/repo/app.py", "success": True}
    done = run("post", {**edit, "hook_event_name": "PostToolUse", "tool_response": response}, env)
    assert done.returncode == 0 and done.stderr == ""
    action.refresh_from_db()
    assert action.status == "succeeded" and action.result == response


def test_a_failed_call_is_reported_and_found_by_its_tool_use_key_alone(
    desk: RunningDesk, tmp_path: Path
) -> None:
    token = coder_token()
    read = payload("Read", {"file_path": "/repo/missing.py"})
    allowed = decision(run("pre", read, hook_env(desk.url, token, tmp_path / "pre")))
    assert allowed["permissionDecision"] == "allow"
    # Another state directory: the post hook proposes again with the same key and body.
    failure = {**read, "hook_event_name": "PostToolUseFailure", "error": "File does not exist."}
    done = run("post", failure, hook_env(desk.url, token, tmp_path / "post"))
    assert done.returncode == 0 and done.stderr == ""
    action = Action.objects.get()  # Read is not registered: the built-in verb
    assert (action.verb, action.status, action.error) == ("read", "failed", "File does not exist.")


def test_gemini_cli_hooks_are_answered_in_its_own_format(desk: RunningDesk, tmp_path: Path) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    before = {
        "session_id": "gemini-session-7",
        "transcript_path": "/home/dev/.gemini/tmp/chat.json",
        "cwd": "/repo",
        "hook_event_name": "BeforeTool",
        "timestamp": "2026-11-30T10:00:00Z",
        "tool_name": "read_file",
        "tool_input": {"file_path": "/repo/app.py"},
    }
    done = run("pre", before, env, "--format", "gemini")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == "allow"
    # No tool call id: the after hook finds the action by session, tool and input.
    after = {**before, "hook_event_name": "AfterTool", "tool_response": {"llmContent": "x = 1"}}
    assert run("post", after, env, "--format", "gemini").stderr == ""
    action = Action.objects.get()
    assert (action.tool, action.verb, action.status) == ("read_file", "read", "succeeded")
    assert action.result == {"llmContent": "x = 1"}


def test_a_call_the_policy_denies_is_blocked_naming_the_rule(
    desk: RunningDesk, tmp_path: Path
) -> None:
    coder = hook_env(desk.url, coder_token(), tmp_path)
    janitor = agent_token("janitor", "devops", "delete_snapshot:delete")
    snapshot = payload("delete_snapshot", {"snapshot_id": "snap-staging-critical-01"})
    shell, delete = run_together(
        ("pre", payload("Bash", {"command": "rm -rf /", "description": "clean up"}), coder),
        ("pre", snapshot, hook_env(desk.url, janitor, tmp_path)),
    )
    assert shell.returncode == 2 and shell.stdout == ""
    assert "denied" in shell.stderr and "no-shell" in shell.stderr
    assert "agents run no shell commands here" in shell.stderr
    assert delete.returncode == 2 and delete.stdout == ""
    assert "protected-targets" in delete.stderr
    # The registry's verbs: no verb was sent for either registered tool.
    assert sorted(Action.objects.values_list("tool", "verb", "status")) == [
        ("Bash", "execute", "denied"),
        ("delete_snapshot", "delete", "denied"),
    ]


def test_a_rejected_escalation_is_blocked(desk: RunningDesk, tmp_path: Path) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    operator = decide_later("rejected", delay=0.3)
    done = run("pre", payload("Write", NEW_FILE), env)
    operator.join()
    assert done.returncode == 2, done.stdout
    assert "rejected" in done.stderr and "decided in the test" in done.stderr
    assert Action.objects.get().status == "rejected"


def test_a_modified_call_runs_with_the_operators_input(desk: RunningDesk, tmp_path: Path) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    changed = {"file_path": "/repo/docs/notes.md", "content": "draft\n"}
    operator = decide_later("modified", changed, delay=0.3)
    output = decision(run("pre", payload("Write", NEW_FILE), env))
    operator.join()
    assert output["permissionDecision"] == "allow"
    assert output["updatedInput"] == changed
    assert "/repo/docs/notes.md" in output["additionalContext"]


def test_a_modified_call_without_updated_input_is_blocked_until_made_as_approved(
    desk: RunningDesk, tmp_path: Path
) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    changed = {"file_path": "/repo/docs/notes.md", "content": "draft\n"}
    operator = decide_later("modified", changed, delay=0.3)
    done = run("pre", payload("Write", NEW_FILE), env, "--no-updated-input")
    operator.join()
    assert done.returncode == 2
    assert json.dumps(changed, sort_keys=True, separators=(",", ":")) in done.stderr
    # The model makes the call again as the operator approved it: no second escalation.
    again = run("pre", payload("Write", changed), env, "--no-updated-input")
    assert decision(again)["permissionDecision"] == "allow"
    assert Action.objects.count() == 1


def test_no_decision_in_time_blocks_and_the_same_call_picks_it_up_later(
    desk: RunningDesk, tmp_path: Path, approver: Any
) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    done = run("pre", payload("Write", NEW_FILE), env, "--timeout", "1")
    assert done.returncode == 2 and "no decision" in done.stderr
    action = Action.objects.get()
    assert action.status == "escalated"
    decide(action_id=action.pk, user=approver, verdict="approve", reason="fine")
    again = run("pre", payload("Write", NEW_FILE), env, "--timeout", "1")
    assert decision(again)["permissionDecision"] == "allow"
    assert Action.objects.count() == 1


def test_an_engaged_kill_switch_blocks(desk: RunningDesk, tmp_path: Path) -> None:
    env = hook_env(desk.url, coder_token(), tmp_path)
    killswitch_set(scope=DOMAIN, engaged=True, actor=Actor.system("tests"), reason="runaway")
    done = run("pre", payload("Read", {"file_path": "/repo/app.py"}), env)
    assert done.returncode == 2 and "kill switch" in done.stderr and "runaway" in done.stderr
    assert not Action.objects.exists()


def test_an_unreachable_desk_blocks(tmp_path: Path) -> None:
    env = hook_env(f"http://127.0.0.1:{free_port()}", "idk_not-needed", tmp_path)
    done = run("pre", payload("Read", {"file_path": "/repo/app.py"}), env, "--retries", "0")
    assert done.returncode == 2 and done.stdout == ""
    assert "unreachable" in done.stderr


def test_a_desk_that_never_answers_is_blocked_before_the_agents_own_timeout(
    tmp_path: Path,
) -> None:
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are taken, requests never answered
    try:
        env = hook_env(f"http://127.0.0.1:{silent.getsockname()[1]}", "idk_never-used", tmp_path)
        started = time.monotonic()
        done = run("pre", payload("Read", {"file_path": "/repo/app.py"}), env, "--timeout", "3")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert done.returncode == 2 and "no answer from the desk within 6 s" in done.stderr
    assert took < 9


def test_malformed_input_blocks(tmp_path: Path) -> None:
    env = hook_env(f"http://127.0.0.1:{free_port()}", "idk_never-used", tmp_path)
    malformed = [
        "not json",
        "[]",
        json.dumps({"session_id": "s", "tool_input": {}}),  # no tool_name
        json.dumps({**payload("Bash", {}), "tool_input": "rm -rf /"}),
        json.dumps(payload("Read", {"file_path": "/x"}, hook_event_name="PostToolUse")),
    ]
    for done in run_together(*(("pre", stdin, env) for stdin in malformed)):
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert "not run" in done.stderr


def settings_file(path: Path, url: str, token: str, command: str | None) -> Path:
    hooks = [{"type": "command", "command": command, "timeout": 60}] if command else []
    document = {
        "env": {
            "INCIDENTDESK_URL": url,
            "INCIDENTDESK_TOKEN": token,
            "PYTHONPATH": str(ROOT / "client"),
        },
        "hooks": {"PreToolUse": [{"matcher": "*", "hooks": hooks}]} if hooks else {},
    }
    path.write_text(json.dumps(document))
    return path


def verify(settings: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    options = ["--settings", str(settings), "--wait", "0"]
    return subprocess.run(
        [*HOOK, "verify", *options], capture_output=True, text=True, env=env, timeout=120
    )


def test_verify_runs_the_configured_hook_with_probes(desk: RunningDesk, tmp_path: Path) -> None:
    command = " ".join(HOOK) + " pre || exit 2"
    settings = settings_file(tmp_path / "settings.json", desk.url, coder_token(), command)
    done = verify(settings)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    read, shell, write = (next(ln for ln in lines if f" {tool} (" in ln) for tool in CLAUDE_PROBES)
    assert read.startswith("ok") and "says allow (allow-reads); the hook allowed it" in read
    assert shell.startswith("ok") and "says deny (no-shell); the hook blocked it" in shell
    assert write.startswith("ok") and "the hook blocked it" in write and "no decision" in write
    assert all(" s [" in line for line in (read, shell, write))  # how long each took
    # Each probe reached the desk; the one it allowed is closed as not run.
    assert sorted(Action.objects.values_list("tool", "status")) == [
        ("Bash", "denied"),
        ("Read", "failed"),
        ("Write", "escalated"),
    ]


def test_verify_fails_without_a_hook_or_with_one_that_never_asks_the_desk(
    desk: RunningDesk, tmp_path: Path
) -> None:
    token = coder_token()
    missing = verify(settings_file(tmp_path / "none.json", desk.url, token, None))
    assert missing.returncode == 1 and "no PreToolUse" in missing.stdout
    silent = verify(settings_file(tmp_path / "silent.json", desk.url, token, "cat > /dev/null"))
    assert silent.returncode == 1
    assert "FAIL Bash (a destructive shell command)" in silent.stdout
    assert "the hook made no decision" in silent.stdout
    assert "was not blocked, though the desk says deny (no-shell)" in silent.stdout
    assert "the desk recorded no action for it" in silent.stdout
    assert not Action.objects.exists()


def test_the_example_settings_run_the_hook_around_every_tool() -> None:
    from incidentdesk_client.adapters.hook_calls import CLAUDE
    from incidentdesk_client.adapters.hook_verify import configured

    example = ROOT / "client" / "examples" / "claude_code_settings.json"
    handlers, env = configured([example])
    assert [(h.event, h.matcher, h.command) for h in handlers] == [
        ("PreToolUse", "*", "incidentdesk-hook pre || exit 2")
    ]
    # The agent cancels a hook at its timeout: the hook's own wait must end well before.
    assert handlers[0].timeout >= CLAUDE.default_wait + 30
    hooks = json.loads(example.read_text())["hooks"]
    for event in ("PostToolUse", "PostToolUseFailure"):
        assert hooks[event] == [
            {
                "matcher": "*",
                "hooks": [{"type": "command", "command": "incidentdesk-hook post", "timeout": 30}],
            }
        ]
    assert set(env) == {"INCIDENTDESK_URL", "INCIDENTDESK_TOKEN"}
