"""A vendor's MCP server, put behind IncidentDesk with the MCP proxy.

Run as a host would: the script launches `incidentdesk-mcp-proxy` over stdio, the proxy
launches this same file as its upstream server (`--serve`), and the script orders GPUs through
the proxy's tools. Each order goes to the desk first.

    .venv/bin/python manage.py issue_token restock-bot --domain procurement \\
        --scope create_order:create --scope '*:read' > /tmp/token
    INCIDENTDESK_URL=http://127.0.0.1:8000 INCIDENTDESK_TOKEN="$(cat /tmp/token)" \\
        .venv/bin/python client/examples/mcp_upstream_example.py --orders 5

With the demo policy the first three orders of $180 go through; the fourth is held for an
operator (the runaway-loop rule): approve, modify or reject it in the desk's queue. A desktop
host launches the same proxy from its configuration:

    {"mcpServers": {"vendor": {
        "command": "incidentdesk-mcp-proxy",
        "args": ["--upstream-command", "python /path/to/mcp_upstream_example.py --serve"],
        "env": {"INCIDENTDESK_URL": "http://127.0.0.1:8000", "INCIDENTDESK_TOKEN": "idk_..."}}}}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

HERE = Path(__file__).resolve()
CLIENT = HERE.parent.parent  # the incidentdesk_client package, when it is not installed

vendor = MCPServer("gpu-vendor", log_level="WARNING")
orders: dict[str, dict[str, Any]] = {}


@vendor.tool(description="Order qty units of a sku at unit_price USD each.")
def create_order(sku: str, qty: int, unit_price: float) -> dict[str, Any]:
    order = {"id": f"PO-{len(orders) + 1}", "sku": sku, "qty": qty, "unit_price": unit_price}
    orders[order["id"]] = order
    return order


@vendor.tool(description="The open orders.", annotations=ToolAnnotations(read_only_hint=True))
def open_orders() -> list[dict[str, Any]]:
    return list(orders.values())


async def restock(count: int, qty: int) -> int:
    desk = {name: value for name, value in os.environ.items() if name.startswith("INCIDENTDESK_")}
    proxy = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "incidentdesk_client.adapters.mcp_proxy",
            "--upstream-command",
            f"{sys.executable} {HERE} --serve",
            "--session",
            f"restock-{uuid.uuid4().hex[:8]}",
        ],
        env={"PYTHONPATH": str(CLIENT), **desk},
    )
    async with stdio_client(proxy) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        print("tools behind the desk:", ", ".join(tool.name for tool in tools.tools))
        for n in range(1, count + 1):
            arguments = {"sku": "A100", "qty": qty, "unit_price": 90}
            result = await session.call_tool("create_order", arguments)
            if result.is_error:
                print(f"order {n}: not placed: {result.content[0].text}")
                return 1
            print(f"order {n}: placed {result.structured_content['id']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="be the MCP server, over stdio")
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--qty", type=int, default=2, help="units per order, $90 each")
    args = parser.parse_args()
    if args.serve:
        vendor.run()
        return 0
    return asyncio.run(restock(args.orders, args.qty))


if __name__ == "__main__":
    sys.exit(main())
