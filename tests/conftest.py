from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.test import Client
from incidents.target import Target, running_target

from approvals.audit import Actor
from approvals.core import ADMIN, APPROVER, INCIDENT_COMMANDER, ONCALL, SENIOR_APPROVER, VIEWER
from approvals.desk import operator_ensure
from tests.servers import Desk, free_port, running_desk

PASSWORD = "correct-horse-battery"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session", autouse=True)
def required_services() -> None:
    """When the run asks for Redis, it must be there: a missing server fails, never skips."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()


@pytest.fixture(autouse=True)
def agent_clients_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent clients a test made are closed before its database is emptied. A client left
    connecting its kill switch socket has the desk record the socket (an insert that checks
    its agent's row) while the tables are truncated, and the two deadlock."""
    from incidentdesk_client import client as agent_client

    made: list[Any] = []
    init = agent_client.Desk.__init__

    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(agent_client.Desk, "__init__", recorded)
    yield
    for desk in made:
        desk.close()


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # Fast hashing for the many operators tests create; PBKDF2 stays available for users
    # that a separately started server must be able to check.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]


@pytest.fixture
def make_operator(db: Any) -> Callable[..., AbstractUser]:
    def make(username: str, role: str | None) -> AbstractUser:
        if role is None:
            from django.contrib.auth import get_user_model

            user = get_user_model().objects.create_user(username=username, password=PASSWORD)
            return user
        user, _ = operator_ensure(
            username=username, role=role, password=PASSWORD, actor=Actor.system("tests")
        )
        return user

    return make


@pytest.fixture
def viewer(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("vera-viewer", VIEWER)


@pytest.fixture
def approver(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("ada-approver", APPROVER)


@pytest.fixture
def senior_approver(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("sam-senior", SENIOR_APPROVER)


@pytest.fixture
def oncall(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("otto-oncall", ONCALL)


@pytest.fixture
def commander(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("cora-commander", INCIDENT_COMMANDER)


@pytest.fixture
def admin_operator(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("ari-admin", ADMIN)


@pytest.fixture
def outsider(make_operator: Callable[..., AbstractUser]) -> AbstractUser:
    return make_operator("olga-outsider", None)


@pytest.fixture
def login() -> Callable[[AbstractUser], Client]:
    def as_user(user: AbstractUser) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return as_user


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    page.csp_violations = []
    page.on(
        "console",
        lambda msg: (
            page.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
        ),
    )
    yield page
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used the served desk shows the end of the desk's own logs."""
    report = yield
    desk = getattr(item, "funcargs", {}).get("desk")
    if report.failed and isinstance(desk, Desk) and desk.log_dir is not None:
        for log in sorted(desk.log_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-60:]
            report.sections.append((f"end of {log.name}", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def desk(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Desk]:
    """The desk served by uvicorn (and a Celery worker process in production mode)."""
    log_dir: Path = tmp_path_factory.mktemp("desk-logs")
    with running_desk(log_dir) as running:
        yield running


def session_cookie(user: AbstractUser) -> dict[str, str]:
    """A real session in the shared database, as the login page would create."""
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


@pytest.fixture
def target() -> Iterator[tuple[Target, str]]:
    """The rollback target system, served over HTTP from this process: (state, base URL)."""
    from tests.rollback_helpers import SECRET

    served = Target(secret=SECRET)
    with running_target(served, free_port()) as url:
        yield served, url
