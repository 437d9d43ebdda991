from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from approvals.core.roles import perm

View = Callable[..., HttpResponseBase]


def require(codename: str) -> Callable[[View], View]:
    """Anonymous users go to the login page; signed-in users without the permission get 403."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.has_perm(perm(codename)):
                raise PermissionDenied(f"This needs the {codename} permission.")
            return view(request, *args, **kwargs)

        return login_required(wrapped)

    return decorator


class Permissions:
    """Stands in for the user where a rule asks `has_perm` or who they are (renders for live
    pushes)."""

    def __init__(self, granted: frozenset[str], username: str = "") -> None:
        self.granted, self.username = granted, username

    def has_perm(self, name: str) -> bool:
        return name in self.granted

    def get_username(self) -> str:
        return self.username
