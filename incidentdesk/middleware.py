"""A database that is down, restarting or out of connections answers 503, never a 500.

The request's transaction rolled back, so nothing it did is half-written: agents get an RFC 9457
problem document they may retry (the same Idempotency-Key is safe), people a short page. The
connection pool drops broken connections and opens new ones by itself: no process needs a
restart.
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin
from psycopg_pool import PoolTimeout

from approvals.core import problem
from approvals.desk.views import server_error as desk_server_error

logger = logging.getLogger(__name__)

# Django wraps the driver's errors, and the pool's when they happen as it connects.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
RETRY_AFTER_SECONDS = 2


def database_unavailable(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        response: HttpResponse = problem(
            503, "Service unavailable", "the desk cannot reach its database; try again shortly"
        )
    else:
        response = HttpResponse(render_to_string("503.html"), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Answers 503 for a view that failed to reach the database."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        reason = str(exception).partition("\n")[0] or type(exception).__name__
        where = f"{request.method} {request.path}"
        logger.warning("503 for %s: database unavailable: %s", where, reason)
        return database_unavailable(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """The 500 handler: 503 when what failed was reaching the database outside a view (in a
    middleware, say), the desk's own error otherwise."""
    if isinstance(sys.exc_info()[1], DATABASE_UNAVAILABLE):
        return database_unavailable(request)
    return desk_server_error(request)
