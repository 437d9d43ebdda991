"""Embedded mode: a Celery worker thread inside the ASGI process, on the in-memory broker.

The ASGI lifespan starts it, so `uvicorn incidentdesk.asgi:application` is the whole desk:
tasks still run off the request (a request never waits for one), and websocket pushes from
the worker thread reach the server's event loop directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from django.conf import settings

from approvals import live

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """The worker, and beat in a thread beside it (the periodic backstops: sealing, the
    escalation sweep, the idempotency purge)."""

    def __init__(self) -> None:
        self.controller: Any = None
        self.thread: threading.Thread | None = None
        self.beat: Any = None

    def start(self) -> None:
        # Celery's Worker class installs signal handlers, which only the main thread may do;
        # the bare WorkController does not.
        from celery.worker import WorkController

        from incidentdesk.celery import app

        app.loader.import_default_modules()
        self.controller = WorkController(
            app=app,
            hostname="embedded@incidentdesk",
            pool_cls="solo",
            concurrency=1,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self.thread = threading.Thread(
            target=self.controller.start, name="celery-embedded", daemon=True
        )
        self.thread.start()
        from celery.beat import EmbeddedService

        schedule = Path(settings.CELERY_BEAT_SCHEDULE_FILENAME)
        schedule.parent.mkdir(parents=True, exist_ok=True)
        self.beat = EmbeddedService(app, thread=True, schedule_filename=str(schedule))
        self.beat.start()
        log.info("embedded Celery worker and beat started")

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.stop()
            self.beat = None
        if self.controller is None:
            return
        self.controller.stop(in_sighandler=False)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.controller = self.thread = None


worker = EmbeddedWorker()


async def watch_kill_switches(interval: float = 0.5) -> None:
    """Embedded mode: a switch changed by another process (`manage.py killswitch`) cannot reach
    this process's in-memory channel layer, so watch the version in the database and push."""
    from asgiref.sync import sync_to_async
    from django.db.models import Max

    from approvals.models import KillSwitchChange

    def version() -> int:
        return KillSwitchChange.objects.aggregate(v=Max("id"))["v"] or 0

    seen = await sync_to_async(version)()
    while True:
        await asyncio.sleep(interval)
        try:
            current = await sync_to_async(version)()
        except Exception:  # noqa: BLE001 - a locked or missing table: look again later
            log.warning("kill switch version check failed", exc_info=True)
            continue
        if current != seen:
            seen = current
            # No state with it: each listener reads the current one.
            await sync_to_async(live.send)(
                live.KILLSWITCH_GROUP, live.KILLSWITCH_CHANGED, version=current
            )


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    watcher: asyncio.Task[None] | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.EMBEDDED:
                live.bind_server_loop(asyncio.get_running_loop())
                await asyncio.to_thread(worker.start)
                watcher = asyncio.create_task(watch_kill_switches())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if watcher is not None:
                watcher.cancel()
            await asyncio.to_thread(worker.stop)
            await send({"type": "lifespan.shutdown.complete"})
            return
