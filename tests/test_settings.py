"""The two modes are chosen by the environment alone."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.servers import ROOT

PRODUCTION = {
    "DATABASE_URL": "postgres://desk@db.internal:5432/incidentdesk",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "ALLOWED_HOSTS": "desk.example.com",
    "HTTPS": "true",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "HTTPS",
            "DEBUG",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_value(expression: str, **env: str) -> str:
    code = f"from django.conf import settings; print({expression})"
    result = manage("shell", "--no-imports", "-c", code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_deploy_check_passes_with_production_settings() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY=secrets.token_urlsafe(50),
        **PRODUCTION,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_production_mode_refuses_to_start_without_a_secret_key() -> None:
    result = manage("check", **PRODUCTION)
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set in production mode" in result.stderr


def test_secret_key_may_come_from_a_file(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("from-a-file-" + "x" * 50 + "\n")
    value = settings_value("settings.SECRET_KEY", SECRET_KEY_FILE=str(key), **PRODUCTION)
    assert value == "from-a-file-" + "x" * 50


def test_a_malformed_setting_is_named() -> None:
    result = manage("check", HTTPS="sometimes")
    assert result.returncode != 0
    assert "HTTPS must be true or false, not 'sometimes'" in result.stderr


def test_embedded_mode_needs_no_server() -> None:
    value = settings_value(
        "settings.DATABASES['default']['ENGINE'], settings.CHANNEL_LAYERS['default']['BACKEND'],"
        " settings.CELERY_BROKER_URL, settings.EMBEDDED"
    )
    assert value == (
        "django.db.backends.sqlite3 channels.layers.InMemoryChannelLayer memory:// True"
    )


def test_production_mode_uses_postgres_and_redis() -> None:
    value = settings_value(
        "settings.DATABASES['default']['ENGINE'], settings.CHANNEL_LAYERS['default']['BACKEND'],"
        " settings.CELERY_BROKER_URL, settings.CACHES['default']['BACKEND'], settings.EMBEDDED",
        SECRET_KEY="k" * 50,
        **PRODUCTION,
    )
    assert value == (
        "django.db.backends.postgresql channels_redis.core.RedisChannelLayer "
        "redis://cache.internal:6379/0 django.core.cache.backends.redis.RedisCache False"
    )
