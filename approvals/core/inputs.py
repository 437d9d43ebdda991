"""What people and agents send, read once and strictly: JSON within limits the desk can store
and read back, whole numbers written in ASCII digits, text without NUL characters."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError

from approvals.core.errors import problem

# What any JSON body may hold, wherever in it (also stated in the OpenAPI document). Beyond
# these a value could not be stored or read back faithfully: PostgreSQL refuses NUL and lone
# surrogates in text, and a number that overflows to infinity is not JSON at all.
MAX_DEPTH = 32


MAX_STRING = 100_000


MAX_INTEGER = 2**53 - 1  # counts (records, population): exact in every JSON reader (I-JSON)


JSON_LIMITS = (
    f"Anywhere in a body: at most {MAX_DEPTH} levels of nesting; strings (and keys) of at most "
    f"{MAX_STRING:,} characters, without NUL or unpaired surrogates; finite numbers only (no "
    "NaN, Infinity or exponents that overflow a double); integers of up to 4,300 digits."
)


# A target id is one path segment in its system: 1-200 characters (what a rollback step holds),
# no control characters, no "/", and not "." or ".." (which a URL would resolve away).
TARGET_ID_MAX = 200


_SEGMENT = r"[^\x00-\x1f\x7f/]"


TARGET_ID_PATTERN = (
    rf"^(?:[^\x00-\x1f\x7f/.]{_SEGMENT}*|\.[^\x00-\x1f\x7f/.]{_SEGMENT}*|\.\.{_SEGMENT}+)$"
)


def target_id_problem(value: Any) -> str | None:
    """Why `value` is not a target id, or None."""
    if not isinstance(value, str):
        return "a target id is a string"
    if not 1 <= len(value) <= TARGET_ID_MAX:
        return f"a target id is 1-{TARGET_ID_MAX} characters"
    if not re.fullmatch(TARGET_ID_PATTERN, value):
        return 'a target id has no control characters or "/", and is not "." or ".."'
    return None


class BadJSON(Exception):
    pass


class OutOfLimits(Exception):
    """A value the desk will not take, at a path in the body."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(", ".join(e["field"] for e in errors))
        self.errors = errors

    def explained(self) -> str:
        return "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)


class _NotJSON:
    """Stands in for NaN, Infinity and overflowing numbers until the walk can name the field."""

    def __init__(self, text: str) -> None:
        self.text = text


def _string_problem(value: str) -> str | None:
    if len(value) > MAX_STRING:
        return f"longer than {MAX_STRING} characters"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not valid Unicode)"
    return None


def _field(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "(body)"


def json_limits_check(value: Any) -> None:
    """Raise OutOfLimits naming every field that breaks JSON_LIMITS (iterative: no recursion)."""
    errors: list[dict[str, str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack and len(errors) < 20:
        path, item = stack.pop()
        problem = None
        if isinstance(item, _NotJSON):
            problem = f"{item.text} is not a finite JSON number"
        elif item is None or isinstance(item, bool | int | float):
            continue
        elif isinstance(item, str):
            problem = _string_problem(item)
        elif len(path) >= MAX_DEPTH:
            problem = f"nested more than {MAX_DEPTH} levels deep"
        elif isinstance(item, dict):
            for key, child in item.items():
                key_problem = _string_problem(key)
                if key_problem:
                    errors.append({"field": _field((*path, key[:100])), "message": key_problem})
                else:
                    stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, index), child) for index, child in enumerate(item))
        if problem:
            errors.append({"field": _field(path), "message": problem})
    if errors:
        raise OutOfLimits(errors)


def parse_json(body: bytes) -> Any:
    """The body as JSON within JSON_LIMITS: BadJSON if it is not JSON, OutOfLimits if it
    holds what the desk will not store."""
    not_finite: list[str] = []

    def constant(text: str) -> _NotJSON:  # NaN, Infinity, -Infinity
        not_finite.append(text)
        return _NotJSON(text)

    def number(text: str) -> float | _NotJSON:
        value = float(text)
        return value if math.isfinite(value) else constant(text)

    try:
        raw = json.loads(body or b"null", parse_constant=constant, parse_float=number)
    except RecursionError:
        deep = {"field": "(body)", "message": f"nested more than {MAX_DEPTH} levels deep"}
        raise OutOfLimits([deep]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJSON(str(exc)) from None
    if not_finite or _may_break_limits(body, raw):
        json_limits_check(raw)
    return raw


# A NUL or a surrogate can only reach a parsed string as a \u escape, or (a surrogate) as its
# UTF-8-style bytes, which json.loads lets through.
_SUSPECT_TEXT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _may_break_limits(body: bytes, raw: Any) -> bool:
    """Whether the field-by-field walk that names what is wrong is needed. One pass without
    paths, looking only for what the bytes say may be there, finds out: most bodies are
    within the limits, and a 10,000-target proposal is checked in milliseconds."""
    texts = bool(_SUSPECT_TEXT.search(body))
    lengths = len(body) > MAX_STRING
    stack = [(1, raw)] if isinstance(raw, dict | list) else []
    while stack:
        depth, item = stack.pop()
        if depth > MAX_DEPTH:
            return True
        values = item.values() if isinstance(item, dict) else item
        strings = [*item.keys(), *values] if isinstance(item, dict) else item
        if texts or lengths:
            for value in strings:
                if isinstance(value, str) and (
                    len(value) > MAX_STRING or (texts and _string_problem(value))
                ):
                    return True
        stack.extend((depth + 1, child) for child in values if isinstance(child, dict | list))
    return False


def whole_number(raw: str, *, low: int = 0, high: int = 2**31 - 1) -> int | None:
    """`raw` as an int from low to high, or None: ASCII digits only (str.isdigit() takes
    '²' and other digits int() refuses)."""
    raw = raw.strip()
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


class RefuseNulCharacters:
    """No query or form value may hold a NUL character: PostgreSQL cannot store or compare
    one, so it would fail deep inside a view. Refused at the door with 400 naming the field."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sources = [request.GET]
        if request.method == "POST" and request.content_type in FORM_TYPES:
            try:
                sources.append(request.POST)
            except MultiPartParserError as exc:
                return _refused(request, "(body)", f"not a readable form ({exc})")
        for source in sources:
            for name, values in source.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    field = name.replace("\x00", "\\0")
                    return _refused(request, field, f"{field}: contains a NUL character")
        return self.get_response(request)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _refused(request: HttpRequest, field: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return problem(400, "Bad request", message, [{"field": field, "message": message}])
    return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")


class ActionId:
    """An action's id as its canonical UUID (lowercase, hyphenated): the one spelling the
    production layout routes to the server that holds long-polls. Other spellings are 404."""

    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: object) -> str:
        return str(value)
