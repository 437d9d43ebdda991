from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("approvals.api.urls")),
    path("", include("approvals.urls")),
]

handler404 = "approvals.desk.views.not_found"
handler500 = "incidentdesk.middleware.server_error"  # 503 when the database is down
