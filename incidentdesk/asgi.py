"""ASGI entry point: HTTP, authenticated websockets and, in embedded mode, the worker thread."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "incidentdesk.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from approvals.audit import seal_in_background  # noqa: E402
from incidentdesk.embedded import lifespan  # noqa: E402
from incidentdesk.heap import settle_heap  # noqa: E402
from incidentdesk.routing import websocket_urlpatterns  # noqa: E402

seal_in_background()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
        "lifespan": lifespan,
    }
)
settle_heap()
