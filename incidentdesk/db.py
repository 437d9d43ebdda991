from __future__ import annotations

from typing import Any

import psycopg
from django.db import connection
from psycopg_pool import ConnectionPool


def relax_durability() -> None:
    """Let the current transaction commit without waiting for its WAL flush (PostgreSQL).

    Only for writes that a later synchronous commit, or a rerun, makes good if a crash loses
    them; what other sessions read is unaffected.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def check_pooled_connection(pooled: Any) -> None:
    """The check the connection pool makes before it lends a connection (PostgreSQL).

    psycopg_pool's own check finds broken connections one at a time, and waits longer after
    each (0, 1, 2, 4 s): after a database restart has broken every idle connection, a request
    would wait out that backoff, or time out. Here the first broken one makes the pool check
    all its idle connections at once and replace the broken ones.
    """
    try:
        ConnectionPool.check_connection(pooled)
    except psycopg.Error:
        pool = getattr(pooled, "_pool", None)
        if pool is not None:
            pool.check()
        raise
