from __future__ import annotations

from django.urls import path

from approvals import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("queue/", views.queue, name="queue"),
    path("actions/<uuid:action_id>/", views.review, name="review"),
    path("actions/<uuid:action_id>/decide", views.decide, name="decide"),
    path("killswitches/", views.killswitches, name="killswitches"),
    path("killswitches/quarantine/", views.quarantine, name="quarantine"),
    path("killswitches/<slug:scope>/", views.killswitch_change, name="killswitch-change"),
    path("audit/", views.audit_list, name="audit"),
    path("policies/", views.policies, name="policies"),
    path("audit/verify/", views.audit_verify, name="audit-verify"),
    path("audit/export.jsonl", views.audit_export, name="audit-export"),
    path("healthz", views.healthz, name="healthz"),
    path("api/", views.api_docs, name="api-docs"),
]
