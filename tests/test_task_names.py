"""Services queue Celery tasks by name; a name that no task carries would be lost silently."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

from django.conf import settings

import approvals
from incidentdesk.celery import app


def _queued_by_name() -> dict[str, str]:
    names = {}
    for info in pkgutil.walk_packages(approvals.__path__, "approvals."):
        if ".migrations" in info.name or ".management" in info.name:
            continue
        module = importlib.import_module(info.name)
        for attribute, value in vars(module).items():
            if attribute.endswith("_TASK") and isinstance(value, str):
                names[f"{info.name}.{attribute}"] = value
    return names


def test_every_task_a_service_queues_by_name_is_registered() -> None:
    importlib.import_module("approvals.tasks")  # what Celery's autodiscovery imports
    queued = _queued_by_name()
    assert len(set(queued.values())) >= 5  # audit, queue, notifications, kill switches, rollbacks
    unknown = {where: name for where, name in queued.items() if name not in app.tasks}
    assert unknown == {}


def test_every_periodic_task_is_registered() -> None:
    importlib.import_module("approvals.tasks")  # what Celery's autodiscovery imports
    scheduled = [entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    assert scheduled and [name for name in scheduled if name not in app.tasks] == []


def test_services_queue_tasks_by_their_named_constants() -> None:
    """A name written inline at a call would escape the check above."""
    inline = []
    for path in Path(approvals.__path__[0]).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "enqueue_on_commit"
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id.endswith("_TASK"))
            ):
                inline.append(f"{path}:{node.lineno}")
    assert inline == []


def test_task_names_outlive_moves_of_their_modules() -> None:
    """Queued messages (timers waiting for their time, retries) carry the task's name, so a
    task keeps the name it had when every task lived in approvals/tasks.py."""
    importlib.import_module("approvals.tasks")
    ours = {name: task for name, task in app.tasks.items() if name.startswith("approvals.")}
    assert len(ours) == 11
    assert {name: f"approvals.tasks.{task.__name__}" for name, task in ours.items()} == {
        name: name for name in ours
    }
