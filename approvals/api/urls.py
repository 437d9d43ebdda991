from __future__ import annotations

from django.urls import path, register_converter

from approvals.api import views
from approvals.core import ActionId

register_converter(ActionId, "action_id")


urlpatterns = [
    path("actions", views.actions_create, name="api-actions"),
    path("actions/explain", views.actions_explain, name="api-explain"),
    path("actions/<action_id:action_id>", views.action_detail, name="api-action"),
    path(
        "actions/<action_id:action_id>/executing",
        views.action_executing,
        name="api-action-executing",
    ),
    path("actions/<action_id:action_id>/result", views.action_result, name="api-action-result"),
    path("sessions/<str:session_id>/steps", views.session_steps, name="api-session-steps"),
    path("killswitches", views.killswitches, name="api-killswitches"),
    path("openapi.json", views.openapi_json, name="api-openapi"),
]
