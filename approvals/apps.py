from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "IncidentDesk"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from approvals.core import roles_sync_after_migrate
        from approvals.desk import on_locked_out

        # Permissions are created after migrations, so the role groups are kept in step then.
        post_migrate.connect(roles_sync_after_migrate, sender=self)
        user_locked_out.connect(on_locked_out, dispatch_uid="approvals.signin.on_locked_out")
