"""A small procurement agent that restocks GPUs, asking IncidentDesk before each order.

    .venv/bin/python manage.py issue_token restock-bot --domain procurement \\
        --scope create_order:create --scope '*:read' > /tmp/token
    python client/examples/procurement_agent.py --url http://127.0.0.1:8000 \\
        --token "$(cat /tmp/token)" --orders 5

With the demo policy the first three orders under $500 go through; the fourth is held for an
operator (the runaway-loop rule), and so is any order over $500.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from incidentdesk_client import Desk, DeskError  # noqa: E402


class Vendor:
    """Stands in for the vendor's API: remembers orders by idempotency key."""

    def __init__(self) -> None:
        self.orders: dict[str, dict] = {}

    def open_orders(self, **_: object) -> dict:
        return {"open_orders": sorted(o["id"] for o in self.orders.values())}

    def create_order(self, sku: str, qty: int, unit_price: float, idempotency_key: str) -> dict:
        order = self.orders.setdefault(
            idempotency_key,
            {"id": f"PO-{len(self.orders) + 1}", "sku": sku, "qty": qty, "unit_price": unit_price},
        )
        return order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--qty", type=int, default=2, help="units per order, $90 each")
    parser.add_argument("--max-wait", type=float, default=60, help="seconds to wait for a person")
    args = parser.parse_args()

    vendor = Vendor()
    desk = Desk(args.url, args.token, max_wait=args.max_wait, poll_wait=10)
    session = desk.session(f"restock-{uuid.uuid4().hex[:8]}")
    session.thought("Hardware levels must be maintained: A100 stock is below 4.")

    create_order = session.guard(
        "create_order",
        "create",
        snapshot=vendor.open_orders,
        amount=lambda sku, qty, unit_price: (qty * unit_price, "USD"),
        compensation=lambda sku, qty, unit_price: {"tool": "cancel_order", "params": {"sku": sku}},
    )(vendor.create_order)

    for n in range(1, args.orders + 1):
        session.observation(f"Stock still low; placing order {n} of {args.orders}.")
        try:
            order = create_order(sku="A100", qty=args.qty, unit_price=90)
        except DeskError as stop:
            print(f"order {n}: stopped by IncidentDesk ({type(stop).__name__}): {stop}")
            return 1
        print(f"order {n}: placed {order['id']} for {order['qty']} x {order['sku']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
