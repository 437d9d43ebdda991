"""Services queue Celery tasks by name; a name that no task carries would be lost silently."""

from __future__ import annotations

import importlib
import pkgutil

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
