"""Finding handlers: entry points of installed plugins, and ``module:attribute`` references."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from broker.core.errors import ConfigError, RegistrationError
from broker.core.router import Router
from broker.core.settings import ENV_PREFIX, BrokerSettings

__all__ = ["ENTRY_POINT_GROUP", "build_router", "import_reference"]

#: Plugins expose a ``Router`` under this entry-point group, e.g. in pyproject.toml:
#: ``[project.entry-points."callback_broker.handlers"] billing = "billing.handlers:router"``
ENTRY_POINT_GROUP: Final = "callback_broker.handlers"


def import_reference(reference: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted)."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistrationError(
            f"cannot import module {module_name!r} ({reference}): {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise RegistrationError(f"{reference}: module has no attribute {attribute!r}") from exc
    return target


def build_router(settings: BrokerSettings, routers: Iterable[Router] = ()) -> Router:
    """Merge the given routers, the entry-point plugins (all, none, or those that
    ``BROKER_ENTRY_POINTS`` names) and ``BROKER_HANDLERS`` into one.

    A message type registered twice anywhere is an error naming both origins.
    """
    merged = Router()
    for router in routers:
        merged.include(router)
    for entry_point in _selected_entry_points(settings.entry_points):
        origin = f"entry point {entry_point.name!r} ({entry_point.value})"
        try:
            loaded = entry_point.load()
        except Exception as exc:
            raise RegistrationError(f"cannot load {origin}: {exc}") from exc
        merged.include(_as_router(loaded, origin), origin=origin, entry_point=entry_point.name)
    for reference in settings.handlers:
        merged.include(_as_router(import_reference(reference), reference), origin=reference)
    for queue in settings.queues:
        if queue.default_handler and queue.default_handler not in merged:
            raise ConfigError(
                f"BROKER_QUEUES: queue {queue.name!r} has default_handler "
                f"{queue.default_handler!r}, which no handler is registered for"
            )
    return merged


def _selected_entry_points(selection: bool | tuple[str, ...]) -> list[EntryPoint]:
    """Every installed plugin (``True``), none, or those named: a name that is not
    installed is an error naming the closest installed one."""
    if selection is False or selection == ():
        return []
    installed = list(entry_points(group=ENTRY_POINT_GROUP))
    if selection is True:
        return installed
    names = [entry_point.name for entry_point in installed]
    for name in selection:
        if name not in names:
            closest = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"did you mean {closest[0]!r}? " if closest else ""
            raise ConfigError(
                f"{ENV_PREFIX}ENTRY_POINTS: no installed plugin has the entry point {name!r} "
                f"in {ENTRY_POINT_GROUP!r} ({hint}installed: {', '.join(names) or 'none'})"
            )
    return [entry_point for entry_point in installed if entry_point.name in selection]


def _as_router(obj: Any, origin: str) -> Router:
    if isinstance(obj, Router):
        return obj
    raise RegistrationError(f"{origin} is a {type(obj).__name__}, not a broker.Router")
