from __future__ import annotations

from django.template.loader import render_to_string

from approvals.killswitches.switches import engaged_switches


def banner_html() -> str:
    return render_to_string(
        "approvals/killswitches/killswitch_banner.html",
        {"engaged_switches": engaged_switches(), "oob": True},
    )
