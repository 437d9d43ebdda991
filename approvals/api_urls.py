from __future__ import annotations

from django.urls import path, register_converter

from approvals import api, views
from approvals.inputs import ActionId

register_converter(ActionId, "action_id")

urlpatterns = [
    path("actions", api.actions_create, name="api-actions"),
    path("actions/explain", api.actions_explain, name="api-explain"),
    path("actions/<action_id:action_id>", api.action_detail, name="api-action"),
    path("actions/<action_id:action_id>/result", api.action_result, name="api-action-result"),
    path("sessions/<str:session_id>/steps", api.session_steps, name="api-session-steps"),
    path("killswitches", api.killswitches, name="api-killswitches"),
    path("openapi.json", views.openapi_json, name="api-openapi"),
]
