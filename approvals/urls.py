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
    path("agents/", views.agents, name="agents"),
    path("agents/<slug:name>/quarantine", views.agents_quarantine, name="agents-quarantine"),
    path("agents/<slug:name>/release", views.agents_release, name="agents-release"),
    path("rollbacks/", views.rollbacks, name="rollbacks"),
    path("rollbacks/new", views.rollback_new, name="rollback-new"),
    path("rollbacks/<uuid:plan_id>/", views.rollback, name="rollback"),
    path("rollbacks/<uuid:plan_id>/steps", views.rollback_steps, name="rollback-steps"),
    path("rollbacks/<uuid:plan_id>/control", views.rollback_control, name="rollback-control"),
    path(
        "rollbacks/<uuid:plan_id>/steps/<int:step_id>", views.rollback_step, name="rollback-step"
    ),  # fmt: skip
    path("sessions/", views.sessions, name="sessions"),
    path("sessions/<int:session_id>/", views.session, name="session"),
    path("sessions/<int:session_id>/export.jsonl", views.session_export, name="session-export"),
    path("audit/", views.audit_list, name="audit"),
    path("policies/", views.policies, name="policies"),
    path("audit/verify/", views.audit_verify, name="audit-verify"),
    path("audit/export.jsonl", views.audit_export, name="audit-export"),
    path("healthz", views.healthz, name="healthz"),
    path("api/", views.api_docs, name="api-docs"),
]
