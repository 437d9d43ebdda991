"""Kill switches and quarantine: engaging and releasing a switch, what a stop does to the
work in flight, quarantining an agent, and the agent socket that hears about it first."""

from __future__ import annotations

from approvals.killswitches.acks import (
    Ack,
    killswitch_acknowledge,
    killswitch_polled,
    link_close,
    link_open,
    link_seen,
    links_awaited,
    links_purge,
    links_waiting,
)
from approvals.killswitches.effects import (
    flag_ran_during_kill,
    killswitch_effects,
    killswitch_effects_pending,
    ran_during_kill,
)
from approvals.killswitches.fanout import acknowledgements, agent_state_json, fan_out
from approvals.killswitches.fragments import banner_html
from approvals.killswitches.presence import agents_heard, containment, presence_html
from approvals.killswitches.quarantine import agent_quarantine, agent_release
from approvals.killswitches.switches import (
    Killed,
    admission_check,
    engaged_switches,
    killswitch_set,
    killswitch_state,
    switch_info,
)

__all__ = [
    "Ack",
    "Killed",
    "acknowledgements",
    "admission_check",
    "agent_quarantine",
    "agent_release",
    "agent_state_json",
    "agents_heard",
    "containment",
    "fan_out",
    "banner_html",
    "engaged_switches",
    "flag_ran_during_kill",
    "killswitch_acknowledge",
    "killswitch_effects",
    "killswitch_effects_pending",
    "killswitch_polled",
    "killswitch_set",
    "killswitch_state",
    "link_close",
    "link_open",
    "link_seen",
    "links_awaited",
    "links_purge",
    "links_waiting",
    "presence_html",
    "ran_during_kill",
    "switch_info",
]
