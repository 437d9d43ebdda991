"""The operator's frame around the capabilities: sign-in and its throttle, the dashboard,
the navigation, the operator socket, error pages and the demo data."""

from __future__ import annotations

from approvals.desk.demo import DEMO_DOMAINS, demo_connectors, demo_load
from approvals.desk.operators import operator_ensure
from approvals.desk.signin import client_ip, on_locked_out

__all__ = [
    "DEMO_DOMAINS",
    "client_ip",
    "demo_connectors",
    "demo_load",
    "on_locked_out",
    "operator_ensure",
]
