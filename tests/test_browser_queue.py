"""Two operators in two headless Chromium contexts work the queue live, while a real agent
client waits for their decision over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from incidentdesk_client import ActionRejected
from incidentdesk_client import Desk as Client

from approvals.models import Action
from tests.agents import agent_token
from tests.browser import SCREENSHOTS, in_sync, operator_with_real_password, sign_in
from tests.servers import Desk
from tests.test_client import Vendor, guarded_order

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def after_the_yes(status: str) -> str:
    """The decision panel once a yes is given: that status, or the run that follows it."""
    return ", ".join(f"#decision .status-{s}" for s in (status, "executing", "succeeded"))


@pytest.fixture
def two_operators(chromium: Any, make_operator: Any, desk: Desk) -> Iterator[tuple[Any, Any]]:
    operator_with_real_password(make_operator, "ann", "approver")
    operator_with_real_password(make_operator, "ben", "senior_approver")
    contexts, pages = [], []
    for name in ("ann", "ben"):
        context = chromium.new_context(viewport={"width": 1366, "height": 800})
        page = context.new_page()
        sign_in(page, desk, name)
        page.goto(desk.url + "/queue/")
        page.locator("#live-status[data-state='open']").wait_for(timeout=10_000)
        contexts.append(context)
        pages.append(page)
    yield pages[0], pages[1]
    for context in contexts:
        context.close()


class Agent(threading.Thread):
    """The procurement agent, placing a $900 order through the guard and waiting."""

    def __init__(self, desk: Desk) -> None:
        super().__init__(daemon=True)
        self.vendor = Vendor()
        self.client = Client(
            desk.url,
            agent_token("buyer", "procurement", "create_order:create", "*:read"),
            poll_wait=5,
        )
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = guarded_order(self.client, self.vendor)(sku="A100", qty=10, unit_price=90)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc


def wait_for_row(page: Any) -> Any:
    row = page.locator("ol#tier-1-rows li.item")
    row.first.wait_for(timeout=10_000)
    in_sync(page)
    return row


def test_escalation_appears_live_one_approves_it_leaves_the_other_and_the_agent_runs(
    desk: Desk, two_operators: tuple[Any, Any]
) -> None:
    ann, ben = two_operators
    agent = Agent(desk)
    agent.start()
    wait_for_row(ann)
    wait_for_row(ben)
    assert ann.locator("#queue-count").inner_text() == "1"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ann.screenshot(path=str(SCREENSHOTS / "queue.png"), full_page=True)
    # Ann works with the keyboard: j to the first row, Enter to open it, a to approve.
    ann.keyboard.press("j")
    with ann.expect_navigation():
        ann.keyboard.press("Enter")
    ann.locator("#decision").wait_for()
    in_sync(ann)
    ann.screenshot(path=str(SCREENSHOTS / "review.png"), full_page=True)
    ann.keyboard.press("a")
    # The agent, told at once, may already have started it by the time the panel is drawn.
    ann.locator(after_the_yes("approved")).wait_for(timeout=10_000)
    # It leaves Ben's screen without a reload.
    ben.locator("ol#tier-1-rows li.item").wait_for(state="detached", timeout=10_000)
    assert ben.locator("#queue-count").inner_text() == "0"
    agent.join(timeout=20)
    assert agent.error is None and agent.result == {"order_id": "PO-1"}
    assert agent.vendor.orders[0]["qty"] == 10
    assert Action.objects.get().status == Action.Status.SUCCEEDED


def test_modified_params_are_what_the_agent_runs(
    desk: Desk, two_operators: tuple[Any, Any]
) -> None:
    ann, ben = two_operators
    agent = Agent(desk)
    agent.start()
    wait_for_row(ann)
    wait_for_row(ben).first.locator("a.open").click()
    ben.locator("#decision").wait_for()
    in_sync(ben)
    ben.keyboard.press("m")  # opens the params editor and puts the cursor in it
    ben.locator("#d-params").fill('{"sku": "A100", "qty": 2, "unit_price": 90}')
    ben.locator("#d-reason").fill("two are enough")
    ben.get_by_role("button", name="Propose these params").click()
    # A new proposal: Ben may not be the one who lets it run.
    ben.locator("#decision .modified-note").filter(has_text="another approver").wait_for(
        timeout=10_000
    )
    assert ben.locator("#decision button[value='approve']").count() == 0
    wait_for_row(ann).first.locator("a.open").click()
    ann.locator("#decision .modified-note").wait_for()
    in_sync(ann)
    ann.keyboard.press("a")
    ann.locator(after_the_yes("modified")).wait_for(timeout=10_000)
    agent.join(timeout=20)
    assert agent.error is None
    assert agent.vendor.orders[0]["qty"] == 2


def test_rejected_with_a_reason_the_agent_is_told(
    desk: Desk, two_operators: tuple[Any, Any]
) -> None:
    ann, ben = two_operators
    agent = Agent(desk)
    agent.start()
    wait_for_row(ben)
    wait_for_row(ann).first.locator("a.open").click()
    ann.locator("#decision").wait_for()
    in_sync(ann)
    # Rejecting without a reason is refused, and the page says why.
    ann.get_by_role("button", name="Reject").click()
    ann.get_by_role("alert").filter(has_text="say why").wait_for(timeout=10_000)
    ann.keyboard.press("r")
    ann.keyboard.type("ten GPUs is a runaway order")
    ann.keyboard.press("Control+Enter")
    ann.locator("#decision .status-rejected").wait_for(timeout=10_000)
    ben.locator("ol#tier-1-rows li.item").wait_for(state="detached", timeout=10_000)
    agent.join(timeout=20)
    assert isinstance(agent.error, ActionRejected)
    assert "runaway order" in agent.error.reason
    assert agent.vendor.orders == []
