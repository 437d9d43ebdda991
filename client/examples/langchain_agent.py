"""A LangChain agent that orders GPUs, asking IncidentDesk before its create_order tool runs.

The model is LangChain's scripted fake chat model (no LLM, no API key): it calls create_order
once, then answers. Run the demo desk (`make run`, at http://127.0.0.1:8000), then:

    .venv/bin/python manage.py issue_token langchain-bot --domain procurement \\
        --scope create_order:create --scope '*:read' > /tmp/token
    .venv/bin/python client/examples/langchain_agent.py --token "$(cat /tmp/token)" --qty 2

An order of 2 x $90 is within the $500 cap: the tool runs and the desk records its result. With
--qty 10 ($900) the call waits for an operator in the desk's queue: approve, modify (the tool
then runs with the operator's quantity) or reject it (the model is told why, and nothing is
ordered). With --durable the run does not wait: the graph stops at an interrupt, the script
prints the pending action, watches the desk until someone decides it, then resumes the graph.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.types import Command  # noqa: E402

from incidentdesk_client import Desk  # noqa: E402
from incidentdesk_client.adapters.langchain import (  # noqa: E402
    IncidentDeskInterruptMiddleware,
    IncidentDeskMiddleware,
)

ORDERS: list[dict[str, Any]] = []


@tool
def create_order(sku: str, qty: int, unit_price: float) -> dict:
    """Order qty units of a sku from the vendor at unit_price USD each."""
    order = {"order_id": f"PO-{len(ORDERS) + 1}", "sku": sku, "qty": qty, "unit_price": unit_price}
    ORDERS.append(order)
    return order


class ScriptedModel(GenericFakeChatModel):
    """Answers from a script; accepts the tools create_agent binds to it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def scripted_model(qty: int) -> ScriptedModel:
    order = {"sku": "A100", "qty": qty, "unit_price": 90}
    call = AIMessage(
        content="A100 stock is below the floor of 4; ordering more.",
        tool_calls=[{"name": "create_order", "args": order, "id": f"call-{uuid.uuid4().hex[:8]}"}],
    )
    return ScriptedModel(messages=iter([call, AIMessage(content="Restocking is done.")]))


def show(result: dict[str, Any]) -> None:
    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            print(f"tool  ({message.status}): {message.content}")
    print(f"model: {result['messages'][-1].content}")
    print(f"orders placed: {ORDERS or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--qty", type=int, default=2, help="units to order, $90 each")
    parser.add_argument("--durable", action="store_true", help="interrupt instead of waiting")
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for a person")
    args = parser.parse_args()

    desk = Desk(args.url, args.token, poll_wait=10, max_wait=args.max_wait)
    run_id = f"langchain-{uuid.uuid4().hex[:8]}"
    request = {"messages": [("user", "Keep the A100 stock above 4.")]}
    try:
        if not args.durable:
            guard = IncidentDeskMiddleware(desk, session_id=run_id)
            agent = create_agent(scripted_model(args.qty), [create_order], middleware=[guard])
            show(agent.invoke(request))
            return 0

        guard = IncidentDeskInterruptMiddleware(desk)  # the session is the thread
        agent = create_agent(
            scripted_model(args.qty),
            [create_order],
            middleware=[guard],
            checkpointer=InMemorySaver(),
        )
        config = {"configurable": {"thread_id": run_id}}
        result = agent.invoke(request, config)
        deadline = time.monotonic() + args.max_wait
        while "__interrupt__" in result:
            interrupts = result["__interrupt__"]
            for pending in (i.value for i in interrupts):
                print(f"paused: {pending['tool']} {pending['params']} ({pending['reason']})")
                print(f"decide it on the desk: {args.url}/actions/{pending['action_id']}/")
                while desk.proposal(pending["action_id"]).status == "pending":
                    if time.monotonic() > deadline:
                        print("nobody decided in time; the thread can be resumed later")
                        return 1
                    time.sleep(2)
            # The desk's verdict decides; the resume value only wakes each paused call up.
            result = agent.invoke(Command(resume={i.id: True for i in interrupts}), config)
        show(result)
        return 0
    finally:
        desk.close()


if __name__ == "__main__":
    sys.exit(main())
