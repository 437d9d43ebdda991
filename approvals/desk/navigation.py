from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from approvals.core import perm, role_names
from approvals.killswitches import engaged_switches
from approvals.queue import queue_count

# (label, url name, permission codename). Pages appear here as they are built.
NAVIGATION = [
    ("Dashboard", "dashboard", "view_desk"),
    ("Queue", "queue", "view_desk"),
    ("Reconcile", "reconcile", "view_desk"),
    ("Kill switches", "killswitches", "view_desk"),
    ("Agents", "agents", "view_desk"),
    ("Sessions", "sessions", "view_desk"),
    ("Rollbacks", "rollbacks", "view_desk"),
    ("Policies", "policies", "view_desk"),
    ("Audit", "audit", "view_audit"),
]


def context(request: HttpRequest) -> dict[str, Any]:
    user = request.user
    if not user.is_authenticated:
        return {}
    return {
        "navigation": [
            (label, name) for label, name, codename in NAVIGATION if user.has_perm(perm(codename))
        ],
        "user_roles": role_names(user),
        "queue_count": queue_count() if user.has_perm(perm("view_desk")) else None,
        "engaged_switches": engaged_switches(),
    }
