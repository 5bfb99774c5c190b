"""Registering handlers by message type: fail fast at start-up, never at the first message."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import TypeAdapter

from broker.core.errors import RegistrationError
from broker.core.task import Task

__all__ = ["HandlerFunc", "HandlerOptions", "Route", "Router"]

HandlerFunc = Callable[[Task[Any]], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """Per-handler overrides of the broker's defaults.  ``None`` means "use the default"."""

    #: Cancel the handler after this long (``Broker.HandlerTimeout``, retried).
    timeout_s: float | None = None
    #: Receives of one message before the task is failed for good.
    max_attempts: int | None = None
    #: Send SendTaskHeartbeat this often while the handler runs.
    heartbeat_s: float | None = None
    #: The handler may call ``task.decision_links()`` (start-up then requires
    #: BROKER_DECISION_KEYS and BROKER_DECISION_BASE_URL; docs/decisions.md).
    decisions: bool = False
    #: The handler may call ``task.notify()`` (start-up then requires BROKER_DECISION_TOPIC).
    notify: bool = False
    #: Run the handler once per task token across replicas: claimed, recorded and
    #: replayed through the idempotency table (start-up then requires
    #: BROKER_IDEMPOTENCY_TABLE and a handler timeout; docs/fleet.md).
    idempotent: bool = False

    def __post_init__(self) -> None:
        for name in ("timeout_s", "heartbeat_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RegistrationError(f"{name} must be > 0, got {value!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise RegistrationError(f"max_attempts must be >= 1, got {self.max_attempts!r}")


@dataclass(frozen=True, slots=True)
class Route:
    """One message type bound to its handler."""

    message_type: str
    handler: HandlerFunc
    options: HandlerOptions
    #: Validates the payload when the handler declared ``Task[Model]``.
    payload_adapter: TypeAdapter[Any] | None
    #: Where the handler was registered from, for errors and ``broker handlers``.
    origin: str = field(default="")
    #: The name of the installed plugin's entry point it came from, else "".
    entry_point: str = field(default="")

    @property
    def handler_name(self) -> str:
        return f"{self.handler.__module__}:{self.handler.__qualname__}"


class Router:
    """A set of handlers keyed by message type.

    ::

        router = Router()

        @router.handler("purchase", timeout_s=30)
        async def purchase(task: Task[PurchaseInput]) -> dict[str, str]: ...
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def handler(
        self,
        *message_types: str,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        heartbeat_s: float | None = None,
        decisions: bool = False,
        notify: bool = False,
        idempotent: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated ``async def`` for one or more message types.

        ``decisions=True`` lets it make decision links (``task.decision_links()``),
        ``notify=True`` lets it publish to the decision topic (``task.notify()``); each
        makes start-up check the settings it needs.  ``idempotent=True`` runs it at most
        once per task token across replicas, through the idempotency table
        (``BROKER_IDEMPOTENCY_TABLE``; docs/fleet.md).
        """
        if not message_types:
            raise RegistrationError("@router.handler() needs at least one message type")
        options = HandlerOptions(
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            heartbeat_s=heartbeat_s,
            decisions=decisions,
            notify=notify,
            idempotent=idempotent,
        )

        def register(func: F) -> F:
            for message_type in message_types:
                self.add(message_type, func, options)
            return func

        return register

    def add(
        self,
        message_type: str,
        handler: Callable[..., Any],
        options: HandlerOptions | None = None,
        *,
        origin: str = "",
    ) -> Route:
        """Register ``handler`` for ``message_type``; the non-decorator form."""
        if not isinstance(message_type, str) or not message_type.strip():
            raise RegistrationError(
                f"message type must be a non-empty string, got {message_type!r}"
            )
        name = f"{getattr(handler, '__module__', '?')}:{getattr(handler, '__qualname__', handler)}"
        if not inspect.iscoroutinefunction(handler):
            raise RegistrationError(
                f"handler {name} for type {message_type!r} must be an 'async def' function"
            )
        adapter = _payload_adapter(handler, name)
        route = Route(
            message_type=message_type,
            handler=handler,
            options=options or HandlerOptions(),
            payload_adapter=adapter,
            origin=origin or name,
        )
        self._put(route)
        return route

    def include(self, other: Router, *, origin: str = "", entry_point: str = "") -> None:
        """Take every route of ``other``; a type both routers handle is an error.
        ``entry_point``: the installed plugin's entry point ``other`` was loaded from."""
        for route in other:
            self._put(
                Route(
                    message_type=route.message_type,
                    handler=route.handler,
                    options=route.options,
                    payload_adapter=route.payload_adapter,
                    origin=origin or route.origin,
                    entry_point=entry_point or route.entry_point,
                )
            )

    def describe(self, message_types: Iterable[str]) -> str:
        """The types, for an error about them, each with where it came from."""
        routes = [self._routes[name] for name in message_types if name in self._routes]
        return ", ".join(f"{route.message_type!r} (from {route.origin})" for route in routes)

    def plugin_note(self, message_types: Iterable[str]) -> str:
        """When an installed plugin brought any of the types: how to start without it (a
        plugin installed for other reasons must not stop every other router); else ""."""
        plugins = sorted(
            {
                route.entry_point
                for name in message_types
                if (route := self._routes.get(name)) is not None and route.entry_point
            }
        )
        if not plugins:
            return ""
        listed = ", ".join(map(repr, plugins))
        return (
            f"; the installed plugin(s) {listed} brought them: BROKER_ENTRY_POINTS=false "
            "loads no plugin, a JSON list of entry-point names loads only those"
        )

    def get(self, message_type: str) -> Route | None:
        return self._routes.get(message_type)

    @property
    def routes(self) -> Mapping[str, Route]:
        return dict(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, message_type: object) -> bool:
        return message_type in self._routes

    def _put(self, route: Route) -> None:
        existing = self._routes.get(route.message_type)
        if existing is not None and existing.handler is not route.handler:
            raise RegistrationError(
                f"message type {route.message_type!r} is registered twice: "
                f"by {existing.handler_name} (from {existing.origin}) and by "
                f"{route.handler_name} (from {route.origin})"
            )
        self._routes[route.message_type] = route


def _payload_adapter(handler: Callable[..., Any], name: str) -> TypeAdapter[Any] | None:
    """Build the payload validator from the handler's ``Task[Model]`` annotation."""
    try:
        signature = inspect.signature(handler)
        signature.bind(object())
    except (TypeError, ValueError) as exc:
        raise RegistrationError(
            f"handler {name} must take exactly one positional argument (the Task)"
        ) from exc
    first = next(iter(signature.parameters.values()))
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:
        raise RegistrationError(f"cannot resolve the type hints of handler {name}: {exc}") from exc
    annotation = hints.get(first.name)
    if annotation is None or annotation is Task:
        return None
    if typing.get_origin(annotation) is not Task:
        raise RegistrationError(
            f"handler {name}: annotate its parameter as Task or Task[Model], not {annotation!r}"
        )
    (payload_type,) = typing.get_args(annotation)
    if payload_type is Any:
        return None
    try:
        return TypeAdapter(payload_type)
    except Exception as exc:
        raise RegistrationError(
            f"handler {name}: pydantic cannot validate {payload_type!r}: {exc}"
        ) from exc
