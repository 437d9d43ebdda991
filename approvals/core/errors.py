"""The refusal every service raises for a request it will not carry out, and the one shape
(RFC 9457 problem details) in which the API answers any refusal."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from pydantic import BaseModel, ConfigDict, Field


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


class Problem(BaseModel):
    """RFC 9457 problem details (responses only). Extension members, such as the kill switch
    that refused a call or the next step index of a session, may follow the standard ones."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> JsonResponse:
    slug = title.lower().replace(" ", "-")
    body = Problem(
        type=f"urn:incidentdesk:problem:{slug}",
        title=title,
        status=status,
        detail=detail,
        errors=errors or [],
    )
    return JsonResponse(
        {**body.model_dump(), **(extra or {})},
        status=status,
        content_type="application/problem+json",
    )
