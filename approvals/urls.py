from __future__ import annotations

from django.urls import path

from approvals.agents import views as agent_views
from approvals.api import views as api_views
from approvals.audit import views as audit_views
from approvals.desk import views as desk_views
from approvals.killswitches import views as killswitch_views
from approvals.policy import views as policy_views
from approvals.queue import views as queue_views
from approvals.rollbacks import views as rollback_views

urlpatterns = [
    path("", desk_views.dashboard, name="dashboard"),
    path("login/", desk_views.LoginView.as_view(), name="login"),
    path("logout/", desk_views.LogoutView.as_view(), name="logout"),
    path("queue/", queue_views.queue, name="queue"),
    path("actions/<uuid:action_id>/", queue_views.review, name="review"),
    path("actions/<uuid:action_id>/decide", queue_views.decide, name="decide"),
    path("reconcile/", queue_views.reconcile, name="reconcile"),
    path(
        "actions/<uuid:action_id>/reconcile/",
        queue_views.reconcile_action,
        name="reconcile-action",
    ),
    path(
        "actions/<uuid:action_id>/reconcile/settle",
        queue_views.reconcile_settle,
        name="reconcile-settle",
    ),
    path("killswitches/", killswitch_views.killswitches, name="killswitches"),
    path("killswitches/quarantine/", killswitch_views.quarantine, name="quarantine"),
    path(
        "killswitches/<slug:scope>/", killswitch_views.killswitch_change, name="killswitch-change"
    ),
    path("agents/", agent_views.agents, name="agents"),
    path(
        "agents/<slug:name>/quarantine",
        killswitch_views.agents_quarantine,
        name="agents-quarantine",
    ),
    path("agents/<slug:name>/release", killswitch_views.agents_release, name="agents-release"),
    path("rollbacks/", rollback_views.rollbacks, name="rollbacks"),
    path("rollbacks/new", rollback_views.rollback_new, name="rollback-new"),
    path("rollbacks/<uuid:plan_id>/", rollback_views.rollback, name="rollback"),
    path("rollbacks/<uuid:plan_id>/steps", rollback_views.rollback_steps, name="rollback-steps"),
    path(
        "rollbacks/<uuid:plan_id>/control", rollback_views.rollback_control, name="rollback-control"
    ),
    path(
        "rollbacks/<uuid:plan_id>/steps/<int:step_id>",
        rollback_views.rollback_step,
        name="rollback-step",
    ),
    path("sessions/", audit_views.sessions, name="sessions"),
    path("sessions/<int:session_id>/", audit_views.session, name="session"),
    path(
        "sessions/<int:session_id>/export.jsonl", audit_views.session_export, name="session-export"
    ),
    path("audit/", audit_views.audit_list, name="audit"),
    path("policies/", policy_views.policies, name="policies"),
    path("policies/backtest", policy_views.policy_backtest_view, name="policy-backtest"),
    path("audit/verify/", audit_views.audit_verify, name="audit-verify"),
    path("audit/export.jsonl", audit_views.audit_export, name="audit-export"),
    path("healthz", desk_views.healthz, name="healthz"),
    path("readyz", desk_views.readyz, name="readyz"),
    path("api/", api_views.api_docs, name="api-docs"),
]
