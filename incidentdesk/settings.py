"""IncidentDesk settings, driven by environment variables.

Nothing set: embedded mode (SQLite under var/, in-process channel layer and Celery worker).
DATABASE_URL and REDIS_URL switch on PostgreSQL and Redis (broker, channel layer, cache).
Every variable is listed in README.md.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("INCIDENTDESK_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str) -> list[str]:
    """Comma-separated IP addresses or networks (10.0.0.0/8)."""
    networks = env_list(name, [])
    for item in networks:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            detail = f"{item!r} is not an IP address or network"
            raise ImproperlyConfigured(f"{name}: {detail}") from None
    return networks


def env_lockout(name: str, default: str) -> list[str | list[str]]:
    """Comma-separated lockouts, each a parameter or parameters joined by `+`
    (`username+ip_address,ip_address`), as django-axes' AXES_LOCKOUT_PARAMETERS."""
    known = {"username", "ip_address", "user_agent"}
    lockouts: list[str | list[str]] = []
    for item in env_list(name, [default]):
        parts = [part.strip() for part in item.split("+")]
        if not set(parts) <= known:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not one of {', '.join(sorted(known))} or those joined by +"
            )
        lockouts.append(parts[0] if len(parts) == 1 else parts)
    return lockouts


def env_secret(name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc}") from None
    return os.environ.get(name, "")


def embedded_secret_key() -> str:
    """A random key kept under var/, so embedded sessions survive restarts."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
# Embedded: no Redis, so the channel layer and the Celery worker live in the web process.
EMBEDDED = not REDIS_URL

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if DATABASE_URL or REDIS_URL:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set in production mode")
    SECRET_KEY = embedded_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "axes",
    "approvals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database that cannot be reached answers 503, not 500 (incidentdesk/middleware.py).
    "incidentdesk.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "approvals.core.inputs.RefuseNulCharacters",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lockout into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "incidentdesk.urls"
ASGI_APPLICATION = "incidentdesk.asgi.application"
WSGI_APPLICATION = "incidentdesk.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.desk.navigation.context",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL names another.
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "incidentdesk.sqlite3"),
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool per process instead of a connection per request (or per ASGI thread, which
    # exhausts the server): each web or worker process holds at most DB_POOL_MAX. The pool
    # checks a connection before lending it (one empty query), so that those a database
    # restart broke are dropped, not handed out (incidentdesk/db.py).
    from incidentdesk.db import check_pooled_connection

    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": env_int("DB_POOL_MIN", 1),
            "max_size": env_int("DB_POOL_MAX", 12),
            "timeout": env_int("DB_POOL_TIMEOUT", 10),
            "check": check_pooled_connection,
        }
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # One writer at a time, taken at BEGIN: the audit chain relies on it.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests share their database with the servers they start, so it must be a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Every Redis client has bounded socket timeouts, so a Redis that hangs fails requests in
# seconds instead of holding a thread forever.
REDIS_SOCKET_TIMEOUT = env_int("REDIS_SOCKET_TIMEOUT", 5)
# channels_redis waits for messages in BZPOPMIN for up to 5 s; a socket timeout no longer than
# that (redis-py 8 defaults to 5 s) would end the wait with a TimeoutError and kill every quiet
# websocket. Its reads get that wait on top of the timeout.
CHANNEL_LAYER_BLOCKING_SECONDS = 5
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
            },
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py caps a pool at 100 connections and fails past it; a thousand agents
            # reconnecting at once each join a group, so allow more.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "max_connections": env_int("CHANNEL_LAYER_MAX_CONNECTIONS", 2000),
                        "socket_timeout": CHANNEL_LAYER_BLOCKING_SECONDS + REDIS_SOCKET_TIMEOUT,
                        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
                        "socket_keepalive": True,
                    }
                ],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis broker in production; in embedded mode an in-memory broker consumed by a
# worker thread that the ASGI process starts (incidentdesk/embedded.py).
CELERY_BROKER_URL = REDIS_URL or "memory://"
if REDIS_URL:
    # kombu's Redis transport, fixed so that a worker survives losing Redis (see the module).
    CELERY_BROKER_TRANSPORT = "incidentdesk.broker:Transport"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A send that fails is not tried again on the caller's time (against a Redis that hangs, each
# try costs REDIS_SOCKET_TIMEOUT); the periodic sweep covers the tasks lost that way.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 0}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "incidentdesk")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    # A task unacknowledged this long is handed to another worker. Tasks are short and
    # idempotent, so this bounds how long a killed worker's work waits.
    {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 300),
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    }
    if REDIS_URL
    else {"polling_interval": 0.05}
)
CELERY_TIMEZONE = "UTC"
# Health: workers and beat record a heartbeat every HEARTBEAT_SECONDS; /readyz fails once
# either is older than READY_HEARTBEAT_SECONDS (incidentdesk/health.py).
HEARTBEAT_SECONDS = env_int("HEARTBEAT_SECONDS", 10)
READY_HEARTBEAT_SECONDS = env_int("READY_HEARTBEAT_SECONDS", 60)
if HEARTBEAT_SECONDS < 1 or READY_HEARTBEAT_SECONDS <= HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "HEARTBEAT_SECONDS must be 1 or more, and READY_HEARTBEAT_SECONDS more than it"
    )

CELERY_BEAT_SCHEDULE = {
    "audit-seal": {"task": "approvals.tasks.audit_seal_task", "schedule": 30.0},
    "heartbeat": {"task": "approvals.tasks.heartbeat_task", "schedule": float(HEARTBEAT_SECONDS)},
    "idempotency-purge": {"task": "approvals.tasks.idempotency_purge_task", "schedule": 3600.0},
    "agent-links-purge": {"task": "approvals.tasks.agent_links_purge_task", "schedule": 3600.0},
    # Backstop for escalation timers that were lost (a broker restart, say).
    "escalations-sweep": {
        "task": "approvals.tasks.escalations_sweep_task",
        "schedule": float(env_int("ESCALATION_SWEEP_SECONDS", 15)),
    },
    # Started actions whose result is overdue go to the reconcile queue.
    "executions-sweep": {
        "task": "approvals.tasks.executions_sweep_task",
        "schedule": float(env_int("ESCALATION_SWEEP_SECONDS", 15)),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = env_str("BEAT_SCHEDULE_FILE", str(VAR_DIR / "beat-schedule"))

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Sign-in throttling (django-axes, approvals/signin.py), for the desk's login page and the
# admin's: failed sign-ins are counted per LOGIN_LOCKOUT_BY; at LOGIN_FAILURE_LIMIT within
# LOGIN_COOLOFF_SECONDS of each other that client is locked out (429) for LOGIN_COOLOFF_SECONDS.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_COOLOFF_SECONDS = env_int("LOGIN_COOLOFF_SECONDS", 900)
if AXES_FAILURE_LIMIT < 1 or LOGIN_COOLOFF_SECONDS < 1:
    raise ImproperlyConfigured("LOGIN_FAILURE_LIMIT and LOGIN_COOLOFF_SECONDS must be 1 or more")
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_COOLOFF_SECONDS)
AXES_LOCKOUT_PARAMETERS = env_lockout("LOGIN_LOCKOUT_BY", "username+ip_address")
# Attempts while locked out do not push the end of the lockout further away.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
# Whoever connects is the client, unless it is one of TRUSTED_PROXIES (the production
# layout's nginx): then the address that proxy put in X-Forwarded-For.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")
AXES_CLIENT_IP_CALLABLE = "approvals.desk.signin.client_ip"
# A username no account has is kept as a keyed hash: it may be a password typed in the wrong field.
AXES_USERNAME_CALLABLE = "approvals.desk.signin.attempted_username"
AXES_LOCKOUT_CALLABLE = "approvals.desk.signin.lockout_response"
# Sign-ins are in the audit trail; axes keeps only the counts.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Without STATIC_MANIFEST, static files are served straight from their source folders. With it
# (the production layout runs `collectstatic` first), hashed and compressed copies are served
# with far-future cache headers.
STATIC_MANIFEST = env_bool("STATIC_MANIFEST", False)
STATIC_ROOT = (
    Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles"))) if STATIC_MANIFEST else None
)
WHITENOISE_USE_FINDERS = not STATIC_MANIFEST
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if STATIC_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# HTTPS: on behind TLS (directly or through a proxy that sets X-Forwarded-Proto).
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
    if env_bool("TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600)
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"celery": {"level": "WARNING"}, "kombu": {"level": "WARNING"}},
}

# Agent tokens: stored as HMAC-SHA256 keyed with this pepper (by default derived from
# SECRET_KEY, so rotating that key invalidates every token).
TOKEN_PEPPER = env_secret("TOKEN_PEPPER") or f"token-pepper:{SECRET_KEY}"
TOKEN_DEFAULT_TTL = env_int("TOKEN_DEFAULT_TTL", 3600)
TOKEN_MAX_TTL = env_int("TOKEN_MAX_TTL", 30 * 24 * 3600)

# Agent API: largest request body accepted (bigger gets 413), requests per token per minute
# (more gets 429), how long Idempotency-Keys are kept, and the longest long-poll. (How long an
# escalation waits is set per domain by its tiers.)
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_BODY_BYTES + 1024, 2_621_440)
API_RATE_LIMIT = env_int("API_RATE_LIMIT", 600)
IDEMPOTENCY_KEEP_HOURS = env_int("IDEMPOTENCY_KEEP_HOURS", 48)
API_MAX_WAIT = env_int("API_MAX_WAIT", 30)

# Outgoing HTTP (webhooks, connectors): redirects are not followed, and an answer is read up
# to a limit (more is an error). A webhook delivery attempt has WEBHOOK_TIMEOUT_SECONDS in all:
# connecting, sending, the answer; a connector request has its connector's timeout in all.
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_MAX_RESPONSE_BYTES = env_int("WEBHOOK_MAX_RESPONSE_BYTES", 64 * 1024)
# A connector's read answers a target's state: as large as a snapshot an agent may send.
CONNECTOR_MAX_RESPONSE_BYTES = env_int("CONNECTOR_MAX_RESPONSE_BYTES", API_MAX_BODY_BYTES)
# The desk's own snapshot of a proposal's targets, read through the connector before the
# proposal is recorded: all reads within this long (0: none), for at most this many targets.
DESK_SNAPSHOT_SECONDS = env_int("DESK_SNAPSHOT_SECONDS", 2)
DESK_SNAPSHOT_MAX_TARGETS = env_int("DESK_SNAPSHOT_MAX_TARGETS", 500)

# How often an open desk page checks that its session still grants access (signing out and
# role changes close pages at once; this catches expiry and edits made in the admin).
LIVE_RECHECK_SECONDS = env_int("LIVE_RECHECK_SECONDS", 60)
# An agent's socket counts as open while its serving process confirmed it this recently (each
# process confirms its sockets every LIVE_RECHECK_SECONDS; a process that died stops).
AGENT_LINK_STALE_SECONDS = env_int("AGENT_LINK_STALE_SECONDS", 3 * LIVE_RECHECK_SECONDS)

# The desk's own address, for links in outgoing notifications.
DESK_URL = env_str("DESK_URL", "http://127.0.0.1:8000")

# Audit: how many events the verifier reads per batch (progress is pushed after each batch).
AUDIT_VERIFY_BATCH = env_int("AUDIT_VERIFY_BATCH", 2000)

# The demo target system (client/incidents) that load_demo's connectors and play_incident use.
DEMO_TARGET_URL = env_str("DEMO_TARGET_URL", "http://127.0.0.1:8100")
DEMO_TARGET_SECRET = env_str("DEMO_TARGET_SECRET", "incidentdesk-demo-target")

# Rollbacks
ROLLBACK_CONFIRM_OVER = env_int("ROLLBACK_CONFIRM_OVER", 100)  # more steps: a second person
ROLLBACK_WORKERS = env_int("ROLLBACK_WORKERS", 2)  # tasks working one plan side by side
ROLLBACK_BATCH = env_int("ROLLBACK_BATCH", 200)  # steps claimed at a time
ROLLBACK_CONCURRENCY = env_int("ROLLBACK_CONCURRENCY", 16)  # targets called at once per task
ROLLBACK_LEASE_SECONDS = env_int("ROLLBACK_LEASE_SECONDS", 10)  # then a claim is a dead worker's
ROLLBACK_TASK_SECONDS = env_int("ROLLBACK_TASK_SECONDS", 20)  # one task's share, then the next
ROLLBACK_MAX_ATTEMPTS = env_int("ROLLBACK_MAX_ATTEMPTS", 5)  # claims of one step before it fails
ROLLBACK_COOLDOWN_SECONDS = env_int("ROLLBACK_COOLDOWN_SECONDS", 3600)  # the flapping guard
# Approvals: an allowed or approved action may start within this long of the yes, never after.
APPROVAL_TTL = env_int("APPROVAL_TTL", 15 * 60)
# An action the agent started (executing) whose result has not come within this long lands in
# the reconcile queue: its outcome is unknown until a person settles it.
EXECUTION_DEADLINE_SECONDS = env_int("EXECUTION_DEADLINE_SECONDS", 300)
