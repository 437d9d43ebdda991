"""Bad input gets a 4xx problem document naming what is wrong, never a 500, and leaves
nothing behind: over real HTTP against a running desk."""

from __future__ import annotations

import json
import uuid
from urllib.parse import quote

import pytest

from approvals.core import MAX_DEPTH, MAX_STRING
from approvals.models import Action, AgentSession, ReasoningStep
from tests.agents import agent_token, call, order, propose
from tests.servers import Desk, Reply, http

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = ("create_order:create", "*:read")


def raw_propose(desk: Desk, token: str, body: bytes, path: str = "/api/v1/actions") -> Reply:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    return http("POST", desk.url + path, headers=headers, raw=body)


def refused(reply: Reply, status: int = 422) -> list[str]:
    """The fields a problem document names; fails unless it is one, with this status."""
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == status and body["detail"]
    return [error["field"] for error in body["errors"]]


@pytest.fixture
def token() -> str:
    return agent_token("fuzzed", "procurement", *ORDERS)


@pytest.mark.parametrize(
    ("literal", "field"),
    [
        ('{"price": NaN}', "params.price"),
        ('{"price": Infinity}', "params.price"),
        ('{"price": -Infinity}', "params.price"),
        ('{"price": 1e400}', "params.price"),
        ('{"lines": [{"price": 1.5}, {"price": -1e999}]}', "params.lines.1.price"),
    ],
)
def test_non_finite_numbers_are_422_naming_the_field(
    desk: Desk, token: str, literal: str, field: str
) -> None:
    body = json.dumps(order()).replace('"sku": "GPU-A100"', literal[1:-1])
    assert field in refused(raw_propose(desk, token, body.encode()))
    assert not Action.objects.exists()


def test_big_integers_are_kept_exactly_and_overlong_ones_refused(desk: Desk, token: str) -> None:
    reply = propose(desk, token, order(params={"lot": 2**70, "id": -(10**30)}))
    assert reply.status == 201
    params = Action.objects.get().params
    assert (params["lot"], params["id"]) == (2**70, -(10**30))
    digits = json.dumps(order()).replace('"qty": 2', '"qty": ' + "9" * 5000)
    assert refused(raw_propose(desk, token, digits.encode()), 400) == []
    assert Action.objects.count() == 1


def test_json_nested_thousands_of_levels_is_422_not_a_crash(desk: Desk, token: str) -> None:
    deep = '{"session_id": "s", "tool": "t", "verb": "read", "params": {"a": ' + "[" * 5000
    deep += "]" * 5000 + "}}"
    assert refused(raw_propose(desk, token, deep.encode())) == ["(body)"]
    nested: object = 1
    for _ in range(MAX_DEPTH + 2):
        nested = [nested]
    fields = refused(propose(desk, token, order(params={"deep": nested})))
    assert fields and fields[0].startswith("params.deep.0.0")
    assert not Action.objects.exists()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ('{"note": "a\\u0000b"}', "params.note"),
        ('{"note": "\\ud800"}', "params.note"),
        ('{"\\udfff": 1}', "params.\udfff"),
        ('{"a\\u0000": 1}', "params.a\x00"),
    ],
)
def test_nul_and_lone_surrogates_are_422(desk: Desk, token: str, params: str, field: str) -> None:
    body = json.dumps(order()).replace('"sku": "GPU-A100"', params[1:-1])
    fields = refused(raw_propose(desk, token, body.encode()))
    assert len(fields) == 1 and fields[0].startswith("params.")
    assert not Action.objects.exists()


def test_overlong_strings_and_target_ids_are_422(desk: Desk, token: str) -> None:
    assert refused(propose(desk, token, order(params={"note": "x" * (MAX_STRING + 1)}))) == [
        "params.note"
    ]
    fields = refused(propose(desk, token, order(target_ids=["ok-1", "t" * 201])))
    assert fields == ["target_ids.1"]
    assert refused(propose(desk, token, order(target_ids=["bad\nid"]))) == ["target_ids.0"]
    assert not Action.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"step_index": True}, "step_index"),
        ({"step_index": "3"}, "step_index"),
        ({"step_index": 2**40}, "step_index"),
        ({"blast_radius": {"records": True, "population": 10}}, "blast_radius.records"),
        ({"blast_radius": {"records": 1, "population": 1.5}}, "blast_radius.population"),
    ],
)
def test_types_are_strict(desk: Desk, token: str, change: dict, field: str) -> None:
    assert field in refused(propose(desk, token, order(**change)))


def test_a_result_must_say_ok_as_a_boolean(desk: Desk, token: str) -> None:
    action_id = propose(desk, token, order()).json()["id"]
    for ok in (1, "true", None):
        reply = call(desk, token, "POST", f"/actions/{action_id}/result", {"ok": ok})
        assert refused(reply) == ["ok"]
    assert Action.objects.get(pk=action_id).status == Action.Status.ALLOWED


def test_steps_refuse_nul_and_boolean_indexes(desk: Desk, token: str) -> None:
    def steps(**step: object) -> Reply:
        body = {"steps": [{"index": 0, "kind": "thought", "content": "x", **step}]}
        return call(desk, token, "POST", "/sessions/run-9/steps", body)

    assert refused(steps(index=True)) == ["steps.0.index"]
    assert refused(steps(content="a\u0000b")) == ["steps.0.content"]
    assert not ReasoningStep.objects.exists() and not AgentSession.objects.exists()


@pytest.mark.parametrize("wait", ["²", "-1", "1.5", "31", "99999999999999999999", "%00", "٣"])
def test_wait_must_be_ascii_whole_seconds(desk: Desk, token: str, wait: str) -> None:
    action_id = propose(desk, token, order()).json()["id"]
    reply = call(desk, token, "GET", f"/actions/{action_id}?wait={quote(wait, safe='%')}")
    assert reply.status in (400, 422)
    assert refused(reply, reply.status) == ["wait"]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda u: u.upper(),
        lambda u: u.replace("-", ""),
        lambda u: "{" + u + "}",
        lambda u: "urn:uuid:" + u,
        lambda u: u + "%0A",
    ],
)
def test_only_canonical_action_ids_reach_the_action(desk: Desk, token: str, spelling) -> None:
    action_id = propose(desk, token, order()).json()["id"]
    assert call(desk, token, "GET", f"/actions/{action_id}").status == 200
    reply = call(desk, token, "GET", f"/actions/{spelling(action_id)}?wait=5")
    refused(reply, 404)


def test_a_key_reused_with_another_body_is_422_and_one_in_flight_is_409(
    desk: Desk, token: str
) -> None:
    assert propose(desk, token, order(), key="k-1").status == 201
    reply = propose(desk, token, order(params={"qty": 3, "unit_price": 60}), key="k-1")
    assert refused(reply) == ["Idempotency-Key"]
    assert Action.objects.count() == 1


def test_nul_in_operator_query_strings_and_forms_is_400(desk: Desk, login, viewer) -> None:
    from tests.conftest import session_cookie
    from tests.servers import Browser

    browser = Browser(desk.url, session_cookie(viewer))
    for path in ("/audit/?action=%00", "/queue/?domain=a%00b", "/sessions/?q=%00"):
        status, text = browser.request("GET", path)
        assert status == 400 and "NUL" in text, (path, status)


def test_operator_query_numbers_take_ascii_digits_only(login, viewer, commander) -> None:
    client = login(viewer)
    for path in (
        "/audit/?before=²",
        "/queue/?tier=²",
        "/queue/?older_than=٣",
        "/policies/?tool=x&verb=read&records=²&population=¹",
    ):
        assert client.get(path).status_code < 500, path
    from tests.agents import demo_domain

    demo_domain("procurement")
    reply = login(commander).get("/policies/?domain=procurement&tool=x&verb=read&amount=NaN")
    assert reply.status_code == 400 and b"is not an amount" in reply.content


def test_ids_beyond_the_database_range_are_404(login, commander) -> None:
    client = login(commander)
    for path in (
        "/sessions/99999999999999999999/",
        f"/rollbacks/{uuid.uuid4()}/steps/99999999999999999999",
    ):
        assert client.get(path).status_code in (404, 405), path


@pytest.mark.parametrize("value", [10**30, -(10**30), 1e300])
def test_an_amount_too_large_for_the_desk_is_422_not_a_500(desk: Desk, token: str, value) -> None:
    body = order(amount={"value": value, "currency": "USD"})
    assert "amount.value" in refused(propose(desk, token, body))
    explained = call(desk, token, "POST", "/actions/explain", body)
    assert "amount.value" in refused(explained)
    assert not Action.objects.exists()
