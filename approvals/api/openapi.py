"""The OpenAPI 3.1 document of the agent API, built from the same models that validate it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from pydantic.json_schema import models_json_schema

from approvals.api.schemas import IDENTIFIER, ActionIn, ResultIn, StartIn, StepsIn, Verdict
from approvals.core import JSON_LIMITS, ActionId, Problem

PROBLEM = {
    "description": "RFC 9457 problem details",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    # 503: the database or Redis cannot be reached; the request may be sent again.
    return {str(code): PROBLEM for code in (*codes, 503)}


def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (model, "validation")
            for model in (ActionIn, ResultIn, StartIn, StepsIn, Verdict, Problem)
        ],
        ref_template="#/components/schemas/{model}",
    )
    action_id = {
        "name": "action_id",
        "in": "path",
        "required": True,
        "description": "the action's id: a UUID in canonical form (lowercase, hyphenated); "
        "other spellings are 404",
        "schema": {"type": "string", "format": "uuid", "pattern": f"^{ActionId.regex}$"},
    }  # noqa: E501
    common = (400, 401, 413, 422, 429)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IncidentDesk agent API",
            "version": "1",
            "description": "Agents propose each risky tool call here before they run it. "
            + JSON_LIMITS
            + " Refusals are RFC 9457 problem documents naming each bad field.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/actions": {
                "post": {
                    "summary": "Propose a tool call and get the verdict",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "description": "one per proposal; the same key with the same body "
                            "replays the answer, with another body is 422, while the first "
                            "request with it is still running is 409",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ActionIn"}
                            }
                        },  # noqa: E501
                    },
                    "responses": {
                        "201": _json("Verdict", "the verdict: allowed, denied or pending"),
                        **_errors(*common, 403, 409, 423),
                    },
                }
            },
            "/actions/explain": {
                "post": {
                    "summary": "Which rule would decide this proposal, without recording it",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ActionIn"}
                            }
                        },  # noqa: E501
                    },
                    "responses": {
                        "200": {"description": "outcome, rule and trace"},
                        **_errors(*common),
                    },  # noqa: E501
                }
            },
            "/actions/{action_id}": {
                "get": {
                    "summary": "The current verdict; with wait=N, long-poll until it changes",
                    "parameters": [
                        action_id,
                        {
                            "name": "wait",
                            "in": "query",
                            "description": "long-poll: hold the request up to this many "
                            "seconds until the verdict changes (so an answer may take that "
                            "long by design); 0 answers at once",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": settings.API_MAX_WAIT,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json("Verdict", "the verdict"),
                        **_errors(401, 404, 413, 422, 429),
                    },  # noqa: E501
                }
            },
            "/actions/{action_id}/executing": {
                "post": {
                    "summary": "Say the tool is about to run, with which params: an approved "
                    "action whose targets changed since it was approved goes back to the queue "
                    "(409, with the pending verdict); a result is then due within "
                    "EXECUTION_DEADLINE_SECONDS",
                    "parameters": [action_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/StartIn"}}
                        },  # noqa: E501
                    },
                    "responses": {
                        "200": _json("Verdict", "started: status executing"),
                        **_errors(400, 401, 404, 409, 413, 422, 423, 503),
                    },
                }
            },
            "/actions/{action_id}/result": {
                "post": {
                    "summary": "Report what running the tool did",
                    "parameters": [action_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ResultIn"}
                            }
                        },  # noqa: E501
                    },
                    "responses": {
                        "200": _json("Verdict", "recorded"),
                        # Never rate-limited: a tool that ran can always be reported.
                        **_errors(400, 401, 413, 422, 404, 409),
                    },  # noqa: E501
                }
            },
            "/sessions/{session_id}/steps": {
                "post": {
                    "summary": "Record reasoning steps, in order",
                    "parameters": [
                        {
                            "name": "session_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": IDENTIFIER},
                        }
                    ],  # noqa: E501
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/StepsIn"}}
                        },  # noqa: E501
                    },
                    "responses": {"201": {"description": "recorded"}, **_errors(*common, 409)},
                }
            },
            "/killswitches": {
                "get": {
                    "summary": "The kill switches over this token's domain (its own and global), "
                    "with their version; /ws/agent/ pushes the same document on every change",
                    "responses": {
                        "200": {
                            "description": '{"version": N, "switches": {scope: {"engaged", '
                            '"reason", "changed_by", "changed_at"}}}'
                        },
                        **_errors(401, 429),
                    },
                }
            },
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
