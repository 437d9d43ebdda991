"""Rollbacks and connectors: planning which actions to undo, confirming and controlling a
plan, the runner that restores or compensates each target, and the desk's own reads."""

from __future__ import annotations

from approvals.rollbacks.connectors import (
    ConnectorError,
    Context,
    compensation_connected,
    connector_call,
    connector_check,
    connector_delete,
    connector_save,
)
from approvals.rollbacks.control import (
    plan_cancel,
    plan_confirm,
    plan_pause,
    plan_resume,
    plan_start,
    step_resolve,
)
from approvals.rollbacks.fragments import plan_progress_html
from approvals.rollbacks.planning import (
    RESTORES_AGENT_CLAIM,
    RESTORES_DESK_READ,
    Selection,
    UndoPreview,
    UndoStep,
    plan_create,
    undo_known,
    undo_preview,
)
from approvals.rollbacks.runner import rollback_run, rollbacks_stalled
from approvals.rollbacks.snapshots import (
    DeskRead,
    Difference,
    desk_read_unconnected,
    desk_snapshot_take,
    snapshot_differences,
    state_of,
)

__all__ = [
    "ConnectorError",
    "Context",
    "DeskRead",
    "Difference",
    "RESTORES_AGENT_CLAIM",
    "RESTORES_DESK_READ",
    "Selection",
    "UndoPreview",
    "UndoStep",
    "compensation_connected",
    "connector_call",
    "connector_check",
    "connector_delete",
    "connector_save",
    "desk_read_unconnected",
    "desk_snapshot_take",
    "plan_cancel",
    "plan_confirm",
    "plan_create",
    "plan_pause",
    "plan_progress_html",
    "plan_resume",
    "plan_start",
    "rollback_run",
    "rollbacks_stalled",
    "snapshot_differences",
    "state_of",
    "step_resolve",
    "undo_known",
    "undo_preview",
]
