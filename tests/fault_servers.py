"""Private Redis and PostgreSQL servers the fault tests may stop, hang and restart.

The machine's shared PostgreSQL and Redis are never touched: every fault is done to a server
started here, on a free port, and removed when the tests are done.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

from tests.faults import STATE_QUERIES, Agents, wait_for
from tests.servers import ROOT, free_port


class PrivateRedis:
    """A redis-server of our own, without persistence: stopping it loses what it held, as a
    crashed cache-only Redis does."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.sleeper: threading.Thread | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--enable-debug-command",
                    "local",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        try:
            return self.command("PING", timeout=0.5) == b"+PONG"
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 5) -> bytes:
        """One command in the Redis protocol; its first reply line."""
        frame = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(frame.encode())
            return sock.makefile("rb").readline().rstrip()

    def stop(self) -> None:
        """Gone at once, as a crash leaves it: connections reset, nothing saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def hang(self, seconds: int) -> None:
        """Make the server stop answering for `seconds` (it keeps accepting connections)."""

        def sleep() -> None:
            with contextlib.suppress(OSError):
                self.command("DEBUG", "SLEEP", str(seconds), timeout=seconds + 5)

        self.sleeper = threading.Thread(target=sleep, daemon=True)
        self.sleeper.start()
        time.sleep(0.1)  # the command is in before the first request is timed


def postgres_bin(name: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, tuned for speed (no fsync).

    PostgreSQL refuses to run as root: when the tests run as root, the cluster's directory
    belongs to the `postgres` user and its commands run through runuser. The directory is made
    under /tmp, since pytest's own temporary directories are closed to other users."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="incidentdesk-postgres-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            self.as_postgres = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.as_postgres, *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                postgres_bin("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
        self._ctl("start")

    def _ctl(self, verb: str, *extra: str) -> None:
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            options,
            *extra,
            verb,
        )

    def restart(self) -> None:
        """A fast restart: every session is cut off, then the server comes back."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str = "template1") -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def desk_python(env: dict[str, str], code: str) -> str:
    """Run `code` in a Django process configured by `env` (a private database, say); its
    standard output."""
    script = "import django\ndjango.setup()\n" + code
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise RuntimeError(f"failed:\n{done.stderr[-3000:]}")
    return done.stdout


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class PrivateDatabase:
    """A database of a private cluster, and the environment of desk processes that use it
    (with a private Redis): the tests read what the desk did from here, with SQL."""

    url: str
    env: dict[str, str]

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute(query, params).fetchall()

    def one(self, query: str, params: Any = None) -> Any:
        return self.sql(query, params)[0][0]

    def python(self, code: str) -> str:
        return desk_python(self.env, code)

    def seed(self, **options: Any) -> dict[str, Any]:
        arguments = ", ".join(f"{name}={value!r}" for name, value in options.items())
        code = f"import json\nfrom tests.faults import seed\nprint(json.dumps(seed({arguments})))"
        return dict(json.loads(self.python(code).strip().splitlines()[-1]))

    def locked(self, table: str, pk: int) -> bool:
        """Whether another session holds the row's lock (FOR UPDATE)."""
        import psycopg

        with psycopg.connect(self.url) as connection:
            try:
                connection.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE NOWAIT", [pk])
            except psycopg.errors.LockNotAvailable:
                return True
        return False

    def state(self, agents: Agents) -> dict[str, int]:
        """What the desk holds after `agents` ran: lost (told taken, but missing or not
        recorded), duplicates (one marker, several actions), and anything half-written (an
        action without its audit event or its stored answer, or the reverse)."""
        counts = {
            name: self.one(
                sql, {"accepted": list(agents.accepted), "reported": list(agents.reported)}
            )
            for name, sql in STATE_QUERIES.items()
        }
        counts["lost"] = (
            counts.pop("missing")
            + counts.pop("results_unrecorded")
            + len(agents.abandoned)
            + len(agents.unreported)
        )
        return counts
