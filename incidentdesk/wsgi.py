from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "incidentdesk.settings")

application = get_wsgi_application()

from approvals.audit import seal_in_background  # noqa: E402
from incidentdesk.heap import settle_heap  # noqa: E402

seal_in_background()
settle_heap()
