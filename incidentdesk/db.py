from __future__ import annotations

from django.db import connection


def relax_durability() -> None:
    """Let the current transaction commit without waiting for its WAL flush (PostgreSQL).

    Only for writes that a later synchronous commit, or a rerun, makes good if a crash loses
    them; what other sessions read is unaffected.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
