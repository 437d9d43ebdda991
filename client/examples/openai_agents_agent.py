"""An OpenAI Agents SDK agent that restocks GPUs, its tool guarded by IncidentDesk.

The model is the SDK's scripted test model, so no LLM or API key is needed: it orders 2 A100s
($180, within the demo policy's $500 cap: runs at once), then 8 ($720, over the cap: held for an
operator), then says what came of both.

    make run        # the demo desk at http://127.0.0.1:8000, in another terminal
    .venv/bin/python manage.py issue_token openai-buyer --domain procurement \\
        --scope create_order:create --scope '*:read' > /tmp/token
    .venv/bin/python client/examples/openai_agents_agent.py --token "$(cat /tmp/token)"

While it waits, open the approval queue at http://127.0.0.1:8000/ and approve, modify (say, a
smaller qty) or reject the second order: the agent goes on with the decision, and the model is
told of a refusal and its reason. With --native the tool declares `needs_approval`, and the
run's own approval requests are answered by the desk instead. After three orders in an hour
the demo policy holds every further order for a person too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import Agent, RunConfig, Runner, function_tool  # noqa: E402
from agents.testing import (  # noqa: E402
    ModelCall,
    ModelStep,
    ScriptedModel,
    assistant_message,
    function_call,
)

from incidentdesk_client import AsyncDesk  # noqa: E402
from incidentdesk_client.adapters.openai_agents import (  # noqa: E402
    guard_tools,
    resolve_interruptions,
)


class Vendor:
    """Stands in for the vendor's API: remembers orders by idempotency key."""

    def __init__(self) -> None:
        self.orders: dict[str, dict] = {}

    def create_order(
        self, sku: str, qty: int, unit_price: float = 90.0, idempotency_key: str = ""
    ) -> dict:
        """Order qty units of a sku from the vendor, at unit_price USD each."""
        return self.orders.setdefault(
            idempotency_key,
            {"id": f"PO-{len(self.orders) + 1}", "sku": sku, "qty": qty, "unit_price": unit_price},
        )


def report(call: ModelCall) -> list[Any]:
    """The scripted model's last answer: what each tool call returned."""
    outputs = [item for item in call.input if item.get("type") == "function_call_output"]
    lines = [f"{item['call_id']}: {item['output']}" for item in outputs]
    return [assistant_message("What came of the orders:\n" + "\n".join(lines))]


def scripted_model() -> ScriptedModel:
    return ScriptedModel(
        [
            [function_call("create_order", {"sku": "A100", "qty": 2}, call_id="order-1")],
            [function_call("create_order", {"sku": "A100", "qty": 8}, call_id="order-2")],
            ModelStep.respond(report),
        ]
    )


async def restock(args: argparse.Namespace) -> str:
    vendor = Vendor()
    create_order = function_tool(vendor.create_order, needs_approval=args.native)
    untraced = RunConfig(tracing_disabled=True)  # no OpenAI account to send traces to
    async with AsyncDesk(args.url, args.token, max_wait=args.max_wait, poll_wait=10) as desk:
        session = desk.session(f"openai-restock-{uuid.uuid4().hex[:8]}")
        await session.thought("A100 stock is below the floor of 4: order more.")
        agent = Agent(
            name="restock-bot",
            instructions="Keep A100 stock above 4 units.",
            model=scripted_model(),
            tools=guard_tools([create_order], session),
        )
        result = await Runner.run(agent, "Restock the A100s.", run_config=untraced)
        if args.native:
            result = await resolve_interruptions(result, run_config=untraced)
    return str(result.final_output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for a person")
    parser.add_argument(
        "--native", action="store_true", help="use the SDK's needs_approval interruptions"
    )
    print(asyncio.run(restock(parser.parse_args())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
