"""A small MCP server to stand behind the MCP proxy in tests: it writes each call it runs, one
JSON line, to the file named by MCP_UPSTREAM_CALLS, so a test can tell what reached it.

    python tests/mcp_upstream.py               # over stdio
    python tests/mcp_upstream.py --http 8765   # over streamable HTTP, at http://127.0.0.1:8765/mcp
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

CALLS = "MCP_UPSTREAM_CALLS"
SNAPSHOTS = ["snap-dev-7", "snap-staging-critical-01"]

server = MCPServer("vendor-and-storage", log_level="WARNING")


def record(tool: str, **arguments: Any) -> None:
    path = os.environ.get(CALLS)
    if path:
        with open(path, "a", encoding="utf-8") as calls:
            calls.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool(description="Order qty units of a sku from the vendor.")
def create_order(sku: str, qty: int, unit_price: float) -> dict[str, Any]:
    record("create_order", sku=sku, qty=qty, unit_price=unit_price)
    if sku == "BROKEN":
        raise ToolError("the vendor does not sell BROKEN")
    return {"order_id": f"PO-{sku}-{qty}", "sku": sku, "qty": qty, "unit_price": unit_price}


@server.tool(
    description="The storage snapshots and what uses them.",
    annotations=ToolAnnotations(read_only_hint=True),
)
def list_snapshots() -> list[str]:
    record("list_snapshots")
    return SNAPSHOTS


@server.tool(
    description="Delete a storage snapshot: it cannot be brought back.",
    annotations=ToolAnnotations(destructive_hint=True),
)
def delete_snapshot(snapshot_id: str) -> str:
    record("delete_snapshot", snapshot_id=snapshot_id)
    return f"deleted {snapshot_id}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP here")
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
