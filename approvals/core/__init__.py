"""What every capability shares: roles and permissions, the error shape, input limits and
parsers."""

from __future__ import annotations

from approvals.core.counters import counter_add, counter_bump, counter_read, counters_shared
from approvals.core.errors import Problem, Refused, problem
from approvals.core.http import HtmxHttpRequest
from approvals.core.inputs import (
    JSON_LIMITS,
    MAX_DEPTH,
    MAX_INTEGER,
    MAX_STRING,
    TARGET_ID_MAX,
    TARGET_ID_PATTERN,
    ActionId,
    BadJSON,
    OutOfLimits,
    parse_json,
    target_id_problem,
    whole_number,
)
from approvals.core.permissions import Permissions, require
from approvals.core.roles import (
    ADMIN,
    APPROVER,
    INCIDENT_COMMANDER,
    ONCALL,
    PERMISSIONS,
    ROLE_ORDER,
    ROLES,
    SENIOR_APPROVER,
    VIEWER,
    perm,
    role_names,
    roles_sync_after_migrate,
)
from approvals.core.rows import (
    model_from_row,
    model_width,
    sql_columns,
    sql_insert,
    sql_table,
)

__all__ = [
    "ADMIN",
    "APPROVER",
    "ActionId",
    "BadJSON",
    "HtmxHttpRequest",
    "INCIDENT_COMMANDER",
    "JSON_LIMITS",
    "MAX_DEPTH",
    "MAX_INTEGER",
    "MAX_STRING",
    "ONCALL",
    "OutOfLimits",
    "PERMISSIONS",
    "Permissions",
    "Problem",
    "ROLES",
    "ROLE_ORDER",
    "Refused",
    "SENIOR_APPROVER",
    "TARGET_ID_MAX",
    "TARGET_ID_PATTERN",
    "VIEWER",
    "parse_json",
    "perm",
    "problem",
    "require",
    "role_names",
    "roles_sync_after_migrate",
    "target_id_problem",
    "whole_number",
    "counter_add",
    "counter_bump",
    "counter_read",
    "counters_shared",
    "model_from_row",
    "model_width",
    "sql_columns",
    "sql_insert",
    "sql_table",
]
