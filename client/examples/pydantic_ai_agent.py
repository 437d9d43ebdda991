"""A pydantic-ai agent that restocks GPUs, its order tool guarded by IncidentDesk.

The agent's model is pydantic-ai's FunctionModel, a scripted stand-in for an LLM: it orders
--qty A100s, then says what became of the order. Run the desk (`make run`), then:

    .venv/bin/python manage.py issue_token restock-bot --domain procurement \\
        --scope create_order:create --scope '*:read' > /tmp/token
    .venv/bin/python client/examples/pydantic_ai_agent.py --token "$(cat /tmp/token)" --qty 2

An order of 2 ($180) is under the demo policy's $500 cap and goes through. An order of 10 ($900)
is held: approve, modify or reject it in the desk's queue at http://127.0.0.1:8000/ and the agent
goes on with your decision (a modified order runs with your quantity; a rejected one never runs
and the model is told why). Engage the procurement kill switch while it waits and the order stops.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.toolsets import FunctionToolset  # noqa: E402

from incidentdesk_client import AsyncDesk  # noqa: E402
from incidentdesk_client.adapters.pydantic_ai import IncidentDeskToolset  # noqa: E402


class Vendor:
    """Stands in for the vendor's API."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []

    def create_order(self, sku: str, qty: int, unit_price: float) -> dict[str, Any]:
        """Order qty units of a sku from the vendor at unit_price USD each."""
        order = {"id": f"PO-{len(self.orders) + 1}", "sku": sku, "qty": qty}
        self.orders.append(order)
        return order


def restock_model(qty: int) -> FunctionModel:
    """What an LLM would do here: order, then report how it went."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if not returns:
            order = {"sku": "A100", "qty": qty, "unit_price": 90}
            return ModelResponse(
                parts=[
                    TextPart("A100 stock is below the floor of 4: ordering more."),
                    ToolCallPart("create_order", order),
                ]
            )
        answer = returns[0]
        if answer.outcome == "failed":
            return ModelResponse(parts=[TextPart(f"The order was not placed. {answer.content}")])
        return ModelResponse(parts=[TextPart(f"Ordered: {answer.content}")])

    return FunctionModel(respond)


async def restock(url: str, token: str, qty: int, max_wait: float) -> str:
    vendor = Vendor()
    async with AsyncDesk(url, token, max_wait=max_wait, poll_wait=10) as desk:
        session_id = f"restock-{uuid.uuid4().hex[:8]}"
        await desk.session(session_id).thought("Hardware levels must be maintained.")
        tools = IncidentDeskToolset(FunctionToolset([vendor.create_order]), desk, session_id)
        agent = Agent(restock_model(qty), toolsets=[tools])
        result = await agent.run("Keep at least 4 A100s in stock.")
        return str(result.output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--qty", type=int, default=2, help="A100s to order, $90 each")
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for a person")
    args = parser.parse_args()
    print(asyncio.run(restock(args.url, args.token, args.qty, args.max_wait)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
