from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.template.loader import render_to_string

from approvals import audit, live
from approvals.models import ChainVerification
from approvals.roles import perm


class DeskConsumer(WebsocketConsumer):
    """The operators' live channel: pushes the same template partials the pages render.

    Anonymous users and users without desk access are refused at the handshake. On every
    connect the current state is sent, so a page that was disconnected catches up.
    """

    joined: list[str]

    def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.has_perm(perm("view_desk")):
            self.close()
            return
        self.joined = []
        if user.has_perm(perm("view_audit")):
            self.join(live.AUDIT_GROUP)
        self.accept()
        if live.AUDIT_GROUP in self.joined:
            self.send_verification(audit.latest_verification())

    def join(self, group: str) -> None:
        async_to_sync(self.channel_layer.group_add)(group, self.channel_name)
        self.joined.append(group)

    def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            async_to_sync(self.channel_layer.group_discard)(group, self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # The desk channel is one-way; operators act through permission-checked views.
        return

    def audit_verification(self, event: dict[str, Any]) -> None:
        verification = ChainVerification.objects.filter(pk=event["verification_id"]).first()
        latest = audit.latest_verification()
        # Only the newest run is shown; a late message about an older one is dropped.
        if verification is not None and latest is not None and verification.pk == latest.pk:
            self.send_verification(verification)

    def send_verification(self, verification: ChainVerification | None) -> None:
        user = self.scope["user"]
        html = render_to_string(
            "approvals/audit.html#chain_status",
            {
                "verification": verification,
                "can_verify": user.has_perm(perm("verify_audit")),
            },
        )
        self.send(text_data=html)
