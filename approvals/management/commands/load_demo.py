from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.desk import demo_load


class Command(BaseCommand):
    help = "Create the demo domains and one operator per role, and print their logins."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password",
            default=os.environ.get("DEMO_PASSWORD", "incidentdesk-demo"),
            help="password for every demo operator (default: $DEMO_PASSWORD or incidentdesk-demo)",
        )
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="load demo operators even though DATABASE_URL or REDIS_URL is set",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if (settings.DATABASE_URL or settings.REDIS_URL) and not options["allow_production"]:
            raise CommandError(
                "refusing to create demo operators with known passwords in production mode; "
                "pass --allow-production if this really is a demo"
            )
        logins = demo_load(password=options["password"])
        self.stdout.write(f"Demo logins (password: {options['password']}):")
        for username, role in logins:
            self.stdout.write(f"  {username:<20} {role}")
