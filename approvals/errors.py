"""The refusal every service raises for a request it will not carry out."""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A request the desk will not carry out; `status` is the HTTP status that says so."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field = status, title, detail, field
        self.extra = extra or {}  # extension members of the problem document
