"""Settings for bench/serving.py: the desk's own, plus one measurement endpoint."""

from __future__ import annotations

from incidentdesk.settings import *  # noqa: F403

ROOT_URLCONF = "bench.serving_urls"
