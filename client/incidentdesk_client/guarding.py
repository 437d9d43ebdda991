"""What a guarded tool looks like from outside (its own signature, without the idempotency key)
and how its arguments become the params the desk sees, and back."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("incidentdesk_client")

KEY = "idempotency_key"
P = inspect.Parameter


class ToolShape:
    """A tool function's signature, read once. The idempotency key, if the tool takes one, is
    the desk's to fill: it is not part of what callers (or a model) see or send."""

    def __init__(self, function: Callable[..., Any]) -> None:
        signature = inspect.signature(function)
        self.takes_key = KEY in signature.parameters
        parameters = [p for p in signature.parameters.values() if p.name != KEY]
        self.shown = signature.replace(parameters=parameters)
        self.var_positional = next((p.name for p in parameters if p.kind is P.VAR_POSITIONAL), None)

    def params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A call's arguments by name, as the tool would receive them (defaults filled in).
        Raises TypeError, as the tool itself would, for arguments that do not fit."""
        if KEY in kwargs and self.takes_key:
            raise TypeError(f"{KEY} is given by the desk, not by the caller")
        bound = self.shown.bind(*args, **kwargs)
        bound.apply_defaults()
        params: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.shown.parameters[name].kind
            if kind is P.VAR_KEYWORD:
                params.update(value)
            elif kind is P.VAR_POSITIONAL:
                params[name] = list(value)
            else:
                params[name] = value
        return params

    def call(self, params: dict[str, Any], key: str) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments that run the tool with `params` (the desk's:
        an operator may have modified them)."""
        rest = dict(params)
        args: list[Any] = []
        before_var_positional = self.var_positional is not None
        for name, parameter in self.shown.parameters.items():
            if parameter.kind is P.VAR_POSITIONAL:
                args.extend(rest.pop(name, []))
                before_var_positional = False
            elif (
                parameter.kind is P.POSITIONAL_ONLY
                or (before_var_positional and parameter.kind is P.POSITIONAL_OR_KEYWORD)
            ) and name in rest:
                args.append(rest.pop(name))
        if self.takes_key:
            rest[KEY] = key
        return args, rest

    def dress(self, wrapper: Callable[..., Any], function: Callable[..., Any]) -> Any:
        """Give the wrapper the tool's name, docs and signature, minus the key: frameworks
        build a model's tool schema from them."""
        functools.update_wrapper(wrapper, function)
        # inspect.signature stops at __signature__ rather than following __wrapped__ back to
        # the key; typing.get_type_hints follows __wrapped__ to the tool's own module, where
        # its annotations' names are.
        wrapper.__signature__ = self.shown  # type: ignore[attr-defined]
        annotations = dict(getattr(function, "__annotations__", {}))
        annotations.pop(KEY, None)
        wrapper.__annotations__ = annotations
        return wrapper


@dataclass
class Hooks:
    """What a guard reads about a call, each a function of the call's params by name."""

    snapshot: Callable[..., Any] | None = None
    targets: Callable[..., Any] | None = None
    amount: Callable[..., Any] | None = None
    blast_radius: Callable[..., Any] | None = None
    compensation: Callable[..., Any] | None = None
    post_state: Callable[[Any], Any] | None = None

    def proposal(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "target_ids": list(self.targets(**params)) if self.targets else None,
            "pre_action_state": self.snapshot(**params) if self.snapshot else None,
            "amount": self.amount(**params) if self.amount else None,
            "blast_radius": self.blast_radius(**params) if self.blast_radius else None,
            "compensation": self.compensation(**params) if self.compensation else None,
        }

    def after(self, result: Any, params: dict[str, Any]) -> Any:
        """The state to report after a successful run: what the tool says it changed, or the
        snapshot taken again. A read that fails is logged: the run is reported all the same."""
        try:
            if self.post_state is not None:
                return self.post_state(result)
            return self.snapshot(**params) if self.snapshot else None
        except Exception:
            log.exception("reading the state after the run failed; reporting it without")
            return None

    def after_failure(self, params: dict[str, Any]) -> Any:
        try:
            return self.snapshot(**params) if self.snapshot else None
        except Exception:
            log.exception("reading the state after the failed run failed; reporting it without")
            return None
