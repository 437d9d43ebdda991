"""Real servers for integration tests: the desk under uvicorn, and a Celery worker.

They run as separate processes against the test database, in the mode the suite runs in:
with REDIS_URL set, a Redis broker and channel layer and a separate worker process; without
it, the embedded worker inside the uvicorn process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from django.conf import settings
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(
        DATABASE_URL=database_url(),
        SECRET_KEY=settings.SECRET_KEY,
        DJANGO_SETTINGS_MODULE="incidentdesk.settings",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Desk:
    url: str
    processes: list[subprocess.Popen[bytes]]
    # What start_worker needs to start another worker for this desk.
    env: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    log_dir: Path | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_desk(log_dir: Path, port: int | None = None, **extra_env: str) -> Iterator[Desk]:
    port = port or free_port()
    queue = f"incidentdesk-test-{os.getpid()}-{port}"
    env = server_env(
        CELERY_QUEUE=queue,
        BEAT_SCHEDULE_FILE=str(log_dir / "beat-schedule"),
        ESCALATION_SWEEP_SECONDS="1",
        **extra_env,
    )
    processes: list[subprocess.Popen[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_dir / "uvicorn.log", "wb") as log:
            web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "incidentdesk.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--lifespan",
                    "on",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(web)
        if settings.REDIS_URL:
            processes.append(start_worker(log_dir / "celery.log", env, queue, log_dir))
            workers = [processes[-1]]
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/healthz", web, timeout=30)
        yield Desk(url=url, processes=processes, env=env, queue=queue, log_dir=log_dir)
    finally:
        for process in processes:
            if process in workers:
                stop_group(process)
            else:
                _stop(process)


def start_worker(
    log_path: Path, env: dict[str, str], queue: str, state_dir: Path
) -> subprocess.Popen[bytes]:
    """A Celery worker process (solo pool, with beat) on `queue`, logging to `log_path`.

    It leads a process group of its own: its beat runs in a child process, which a kill of
    the worker alone would leave behind."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "incidentdesk",
                "worker",
                "--loglevel",
                "WARNING",
                "--pool",
                "solo",
                "--queues",
                queue,
                "--hostname",
                f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "--beat",
                "--schedule",
                str(state_dir / "beat-schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process started by start_worker, and what it started; return once all of them
    are gone (a beat child still closing its database connection would keep the test
    database from being dropped)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    _stop(process)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(process.pid, 0 if time.monotonic() < deadline else signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def agent_socket(desk: Desk, token: str) -> ClientConnection:
    """An agent's websocket to a running desk (/ws/agent/, bearer token)."""
    return connect(
        f"{desk.ws_url}/ws/agent/",
        open_timeout=10,
        proxy=None,
        additional_headers={"Authorization": f"Bearer {token}"},
    )


class Browser:
    """A minimal HTTP client for a running desk: keeps cookies, sends CSRF like htmx does."""

    def __init__(self, base_url: str, cookies: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = dict(cookies or {})

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Cookie", self.cookie_header())
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self._keep(response.headers.get_all("Set-Cookie") or [])
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def _keep(self, set_cookies: list[str]) -> None:
        for header in set_cookies:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                self.cookies[name] = morsel.value

    def htmx_post(
        self, path: str, form: dict[str, str] | None = None, **headers: Any
    ) -> tuple[int, str]:
        return self.request(
            "POST",
            path,
            data=urllib.parse.urlencode(form or {}).encode(),
            headers={
                "HX-Request": "true",
                "X-CSRFToken": self.cookies.get("csrftoken", ""),
                "Content-Type": "application/x-www-form-urlencoded",
                **headers,
            },
        )


@dataclass
class Reply:
    status: int
    headers: Message  # case-insensitive
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 40,
) -> Reply:
    """One real HTTP request; JSON in (unless `raw`), the reply whatever its status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, error.read())


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
