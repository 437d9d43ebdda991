from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit import Actor
from approvals.core import Refused, perm
from approvals.killswitches import killswitch_effects, killswitch_set, killswitch_state
from approvals.management.operators import add_operator_argument


class Command(BaseCommand):
    help = (
        "Engage or release a kill switch (a domain's, or global), or show them all. Acting needs "
        "an operator with the oncall role or above: --as USERNAME (or INCIDENTDESK_OPERATOR)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("verb", choices=["engage", "release", "status"])
        parser.add_argument("scope", nargs="?", help="a domain's slug, or global")
        parser.add_argument("--reason", default="", help="why (required to engage or release)")
        add_operator_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verb"] == "status":
            state = killswitch_state()
            self.stdout.write(f"version {state['version']}")
            for scope, switch in sorted(state["switches"].items()):
                engaged = "ENGAGED" if switch["engaged"] else "released"
                who = (
                    f" by {switch['changed_by']}: {switch['reason']}"
                    if switch["changed_by"]
                    else ""
                )
                self.stdout.write(f"{scope:<16} {engaged}{who}")
            return
        if not options["scope"]:
            raise CommandError("name the switch: a domain's slug, or global")
        username = options["operator"]
        if not username:
            raise CommandError("say who acts: --as USERNAME (an operator with the oncall role)")
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active operator {username!r}")
        if not user.has_perm(perm("operate_killswitch")):
            raise CommandError(f"{username} may not operate kill switches (needs oncall or above)")
        try:
            change = killswitch_set(
                scope=options["scope"],
                engaged=options["verb"] == "engage",
                actor=Actor.user(user),
                reason=options["reason"],
            )
        except Refused as exc:
            raise CommandError(exc.detail) from None
        if settings.EMBEDDED:
            # No worker listens to this process's in-memory broker: apply the effects here.
            killswitch_effects(change_id=change.pk)
        now = "ENGAGED" if change.engaged else "released"
        self.stdout.write(f"kill switch {options['scope']} {now} (version {change.pk})")
