from __future__ import annotations

from django.template.loader import render_to_string

from approvals.audit.verify import latest_verification


def chain_status_html(verification_id: int | None, *, can_verify: bool) -> str | None:
    """The chain status fragment, or None when the message is about an outdated run."""
    latest = latest_verification()
    if verification_id is not None and (latest is None or latest.pk != verification_id):
        return None
    return render_to_string(
        "approvals/audit/audit.html#chain_status",
        {"verification": latest, "can_verify": can_verify},
    )
