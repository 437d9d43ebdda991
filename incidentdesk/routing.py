from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from django.urls import path

from approvals.api.consumers import AgentConsumer
from approvals.desk.consumers import DeskConsumer
from incidentdesk.origins import DeskOriginValidator

websocket_urlpatterns = [
    # Operators' pages: the session cookie, from the desk's own origin only (a cookie is sent
    # by any page the browser opens, so the Origin check is what stops cross-site use).
    path("ws/desk/", DeskOriginValidator(AuthMiddlewareStack(DeskConsumer.as_asgi()))),
    # Agents: a bearer token in the Authorization header, which no browser page can set.
    path("ws/agent/", AgentConsumer.as_asgi()),
]
