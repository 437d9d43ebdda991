"""A 10,000-step rollback against an HTTP target, in production mode, and a killed worker.

Layout, all on this machine: PostgreSQL, Redis, the demo target system (client/incidents) in its
own uvicorn process, and Celery workers (prefork) running the plan; this process seeds the
actions (through the desk's services: 100 executed batch actions of 100 targets each), plans,
starts and watches the rollback. Every step reads the target, restores it with a signed,
keyed PUT, and reads it again to verify.

    python bench/rollback.py [--steps 10000] [--kill-steps 2000]

Prints steps per second and total time (target: 10,000 steps done and verified in under 30 s),
then kills the worker (SIGKILL, whole process group) a quarter into a second plan, starts a new
one, and prints how long the plan waited before it moved again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "client"))

from bench.harness import LOG, PY, ensure_database, env, wait_http  # noqa: E402

TARGET_PORT = 8391
SECRET = "bench-target-secret"
QUEUE = "bench-rollback"
TARGETS_PER_ACTION = 100


def worker_env() -> dict[str, str]:
    sweep = os.environ.get("ESCALATION_SWEEP_SECONDS", "5")
    return {
        **env(),
        "DJANGO_SETTINGS_MODULE": "incidentdesk.settings",
        "CELERY_QUEUE": QUEUE,
        "ESCALATION_SWEEP_SECONDS": sweep,
    }


def start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            PY,
            "-m",
            "celery",
            "-A",
            "incidentdesk",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--queues",
            QUEUE,
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "--beat",
            "--schedule",
            "/tmp/bench-rollback-beat",
            "--hostname",
            f"bench-{time.time_ns()}@%h",
        ],
        cwd=ROOT,
        env=worker_env(),
        stdout=LOG,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait()


def admin(method: str, path: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{TARGET_PORT}/_admin/{path}", data=data, method=method
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def seed(session: str, steps: int) -> dict[str, object]:
    """Executed actions of the bench agent in `session`, and the target as they left it."""
    from incidents.target import connector_spec

    from approvals.agents import token_authenticate, token_issue
    from approvals.api import Claim, ProposalData, action_propose, action_report_result
    from approvals.audit import Actor
    from approvals.models import PolicyVersion
    from approvals.policy import PolicyDocument, domain_ensure, policy_publish
    from approvals.rollbacks import connector_save

    actor = Actor.system("bench")
    domain, _ = domain_ensure(
        slug="bench-rollback", name="Bench rollback", description="", actor=actor
    )
    if not PolicyVersion.objects.filter(domain=domain).exists():
        policy_publish(
            domain=domain,
            actor=actor,
            document=PolicyDocument(rules=[], default_outcome="allow", unregistered="allow"),
        )
    connector_save(
        domain=domain,
        tool="set_record",
        kind="http",
        secret=SECRET,
        actor=actor,
        spec=connector_spec(f"http://127.0.0.1:{TARGET_PORT}"),
    )
    issued = token_issue(
        agent_name="bench-clerk",
        domain_slug=domain.slug,
        scopes=["set_record:update"],
        ttl=3600,
        actor=actor,
    )
    token = token_authenticate(issued.token)
    original: dict[str, object] = {}
    left: dict[str, object] = {}
    for n in range(steps // TARGETS_PER_ACTION):
        targets = [f"{session}-{n}-{i}" for i in range(TARGETS_PER_ACTION)]
        pre = {t: {"discount": 0, "id": t} for t in targets}
        post = {t: {"discount": 50, "id": t} for t in targets}
        data = ProposalData(
            session_id=session,
            step_index=None,
            tool="set_record",
            verb="update",
            params={},
            target_ids=targets,
            amount=None,
            currency="",
            blast_records=None,
            blast_population=None,
            pre_action_state=pre,
            compensation=None,
        )
        proposed = action_propose(token=token, data=data, key=f"{session}-{n}", fingerprint="")
        assert proposed.claim is Claim.NEW and proposed.action is not None
        action_report_result(
            token=token,
            action_id=str(proposed.action.pk),
            ok=True,
            result=None,
            post_state=post,
            error="",
        )
        original.update(pre)
        left.update(post)
    admin("POST", "records", left)
    return original


def verified(original: dict[str, object]) -> tuple[int, int]:
    """How many targets read their original state again, and how many keys the target
    applied more than once."""
    records = admin("GET", "records")
    assert isinstance(records, dict)
    restored = sum(1 for key, value in original.items() if records.get(key) == value)
    stats = admin("GET", "stats")
    assert isinstance(stats, dict)
    return restored, sum(1 for n in stats["applied"].values() if n > 1)


def done(plan_id: object) -> int:
    from approvals.models import RollbackStep

    return RollbackStep.objects.filter(plan_id=plan_id, state="done").count()


def plan_and_start(session: str) -> object:
    from approvals.audit import Actor
    from approvals.rollbacks import Selection, plan_confirm, plan_create, plan_start

    selection = Selection(scope="session", session=f"bench-clerk/{session}")
    plan = plan_create(actor=Actor("user", "bench-commander"), selection=selection)
    plan_start(plan_id=plan.pk, actor=Actor("user", "bench-commander"))
    plan.refresh_from_db()
    if plan.state == "awaiting_confirmation":
        plan_confirm(plan_id=plan.pk, actor=Actor("user", "bench-second"))
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--kill-steps", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    args = parser.parse_args()

    e = env()
    ensure_database(e["DATABASE_URL"])
    subprocess.run(
        [PY, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        check=True,
        env={**e, "DJANGO_SETTINGS_MODULE": "incidentdesk.settings"},
    )
    os.environ.update({**worker_env(), "LOG_LEVEL": "WARNING"})
    import django

    django.setup()
    from approvals.models import RollbackPlan
    from incidentdesk.celery import app

    app.conf.task_default_queue = QUEUE
    run = time.strftime("%H%M%S")
    target = subprocess.Popen(
        [PY, "-m", "incidents.target", "--port", str(TARGET_PORT), "--secret", SECRET],
        cwd=ROOT / "client",
        stdout=LOG,
        stderr=subprocess.STDOUT,
    )
    worker = start_worker(args.concurrency)
    try:
        wait_http(f"http://127.0.0.1:{TARGET_PORT}/_admin/stats")
        t0 = time.monotonic()
        original = seed(f"full-{run}", args.steps)
        print(
            f"seeded {args.steps} steps ({args.steps // TARGETS_PER_ACTION} actions) in "
            f"{time.monotonic() - t0:.1f} s"
        )
        time.sleep(3)  # the worker is up
        started = time.monotonic()
        plan = plan_and_start(f"full-{run}")
        while RollbackPlan.objects.get(pk=plan.pk).state in ("running", "awaiting_confirmation"):
            time.sleep(0.1)
        total = time.monotonic() - started
        plan.refresh_from_db()
        restored, twice = verified(original)
        print(
            f"rollback of {plan.total} steps: {plan.state} in {total:.1f} s, "
            f"{done(plan.pk) / total:.0f} steps/s; {restored} targets read restored, "
            f"{twice} keys applied twice (target: all done and verified in under 30 s)"
        )

        if args.kill_steps:
            original = seed(f"kill-{run}", args.kill_steps)
            plan = plan_and_start(f"kill-{run}")
            while done(plan.pk) < args.kill_steps // 4:
                time.sleep(0.02)
            kill_group(worker)
            killed = time.monotonic()
            at_kill = done(plan.pk)
            worker = start_worker(args.concurrency)
            while done(plan.pk) <= at_kill:
                time.sleep(0.05)
            waited = time.monotonic() - killed
            while RollbackPlan.objects.get(pk=plan.pk).state == "running":
                time.sleep(0.1)
            plan.refresh_from_db()
            restored, twice = verified(original)
            print(
                f"worker killed at {at_kill} of {plan.total} steps; the plan moved again "
                f"{waited:.1f} s later (lease {os.environ.get('ROLLBACK_LEASE_SECONDS', '10')}"
                f" s + sweep every {worker_env()['ESCALATION_SWEEP_SECONDS']} s, new worker "
                f"start included); {plan.state}, {restored} of {len(original)} restored, "
                f"{twice} keys applied twice"
            )
    finally:
        kill_group(worker, signal.SIGTERM)
        target.terminate()
        target.wait()


if __name__ == "__main__":
    main()
