"""Rows read and written without the ORM's query compiler, for the agent API's hot path.

Compiling a queryset costs more than the query it sends. The SQL here is built once per model
from the model's own fields, so it follows the schema, and values pass through the fields' own
conversions both ways: a row reads and writes exactly as the ORM would read and write it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import AutoField, BigAutoField, Field, Model, SmallAutoField

Converter = Callable[[Any, Any, Any], Any]

AUTO_FIELDS = (AutoField, BigAutoField, SmallAutoField)


def _quote(name: str | None) -> str:
    return connection.ops.quote_name(str(name))


def sql_table(model: type[Model]) -> str:
    return _quote(model._meta.db_table)


@cache
def _fields(model: type[Model]) -> tuple[Field, ...]:
    return tuple(model._meta.concrete_fields)


def sql_columns(model: type[Model], alias: str) -> str:
    """Every column of `model`, in field order, for `SELECT ... FROM <table> AS alias`."""
    return ", ".join(f"{alias}.{_quote(f.column)}" for f in _fields(model))


def model_width(model: type[Model]) -> int:
    return len(_fields(model))


@cache
def _converters(model: type[Model], vendor: str) -> tuple[tuple[int, Converter, Any], ...]:
    found: list[tuple[int, Converter, Any]] = []
    for index, field in enumerate(_fields(model)):
        expression = field.get_col(model._meta.db_table)
        for convert in connection.ops.get_db_converters(expression) + field.get_db_converters(
            connection
        ):
            found.append((index, convert, expression))
    return tuple(found)


def model_from_row(model: type[Model], values: Sequence[Any]) -> Any:
    """A `model` instance from a row of `sql_columns(model, ...)`, as the ORM would build it."""
    row = list(values)
    for index, convert, expression in _converters(model, connection.vendor):
        row[index] = convert(row[index], expression, connection)
    return model.from_db(connection.alias, [f.attname for f in _fields(model)], row)


@cache
def _insert(model: type[Model], vendor: str) -> tuple[str, tuple[Field, ...]]:
    fields = tuple(f for f in _fields(model) if not isinstance(f, AUTO_FIELDS))
    columns = ", ".join(_quote(f.column) for f in fields)
    sql = (
        f"INSERT INTO {sql_table(model)} ({columns}) "
        f"SELECT {columns} FROM jsonb_populate_record(NULL::{sql_table(model)}, %s::jsonb)"
    )
    return sql, fields


def sql_insert(obj: Model) -> tuple[str, list[Any]]:
    """The INSERT statement for a new `obj` (PostgreSQL) and its one parameter: the row as a
    JSON document, which the database turns into the columns' types. Fields set on save
    (auto_now, auto_now_add) are set on `obj` as `save()` would set them; an auto-numbered key
    is left to the database. JSON fields must hold what JSON can (the desk's always do)."""
    sql, fields = _insert(type(obj), connection.vendor)
    row = {f.column: f.pre_save(obj, True) for f in fields}
    return sql, [json.dumps(row, default=_exact, separators=(",", ":"))]


def _exact(value: Any) -> Any:
    # DjangoJSONEncoder would cut times to milliseconds: here they keep every digit.
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value this module writes")
