"""Shared pieces of the benchmark scripts: servers in production mode, wrk, figures."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
THREADS = os.environ.get("BENCH_THREADS", "8")  # WSGI threads per process
LOG = open(Path(tempfile.gettempdir()) / "desk-bench-servers.log", "ab")  # noqa: SIM115


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/incidentdesk_bench")
    e.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
    e.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    e["DJANGO_SETTINGS_MODULE"] = "bench.serving_settings"
    e["LOG_LEVEL"] = "WARNING"
    return e


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


@contextmanager
def processes(commands: list[list[str]], extra_env: dict[str, str] | None = None):
    running = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env(), **(extra_env or {})},
            stdout=LOG,
            stderr=subprocess.STDOUT,
        )
        for cmd in commands
    ]
    try:
        yield running
    finally:
        for p in running:
            p.terminate()
        for p in running:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def granian(interface: str, app: str, port: int, workers: int) -> list[str]:
    return [
        PY,
        "-m",
        "granian",
        "--interface",
        interface,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        *(["--blocking-threads", THREADS] if interface == "wsgi" else []),
        app,
    ]


def uvicorn(port: int, workers: int) -> list[str]:
    return [
        PY,
        "-m",
        "uvicorn",
        "incidentdesk.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "on",
        "--ws-per-message-deflate",
        "false",
    ]


def nginx(listen: int, wsgi: int, asgi: int, prefix: Path) -> list[str]:
    conf = (ROOT / "deploy" / "nginx.conf.template").read_text()
    values = {
        "NGINX_PREFIX": str(prefix),
        "LISTEN_ADDRESS": f"127.0.0.1:{listen}",
        "WSGI_ADDRESS": f"127.0.0.1:{wsgi}",
        "ASGI_ADDRESS": f"127.0.0.1:{asgi}",
    }
    for name, value in values.items():
        conf = conf.replace("${" + name + "}", value)
    (prefix / "nginx.conf").write_text(conf)
    return ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]


def wrk(
    port: int, seconds: int, connections: int, script: Path, path: str = "/bench/insert"
) -> dict[str, float]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    result = {
        "rps": rps,
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "requests": float(done.group(1)) if done else 0.0,
        "wrk_cpu_s": load_cpu,
    }
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(match.group(1)), match.group(2)  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = value * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    return result


CPU_GROUPS = ("granian", "uvicorn", "postgres", "nginx", "redis", "wrk")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process on the machine, with the group it counts in."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        group = next((g for g in CPU_GROUPS if g in command or g in name), "other")
        found[int(entry)] = (group, used)
    return found


def cpu_per_request(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], requests: float
) -> dict[str, float]:
    """Milliseconds of CPU per request in each group of processes between two readings."""
    spent: dict[str, float] = {}
    for pid, (group, used) in after.items():
        spent[group] = spent.get(group, 0.0) + used - before.get(pid, (group, 0.0))[1]
    return {g: 1000 * s / max(requests, 1) for g, s in sorted(spent.items()) if s > 0.005}
