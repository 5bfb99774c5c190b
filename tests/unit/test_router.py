from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from broker import RegistrationError, Router, Task
from broker.core.plugins import build_router
from broker.core.settings import BrokerSettings


class Order(BaseModel):
    id: int


def test_decorator_registers_several_types_with_options() -> None:
    router = Router()

    @router.handler("a", "A", timeout_s=3, max_attempts=2, heartbeat_s=1)
    async def handle(task: Task[Any]) -> None: ...

    assert set(router.routes) == {"a", "A"}
    route = router.get("a")
    assert route is not None
    assert route.options.timeout_s == 3
    assert route.options.max_attempts == 2
    assert route.payload_adapter is None


def test_typed_payload_builds_a_validator() -> None:
    router = Router()

    @router.handler("order")
    async def handle(task: Task[Order]) -> None: ...

    adapter = router.routes["order"].payload_adapter
    assert adapter is not None
    assert adapter.validate_python({"id": "5"}) == Order(id=5)
    with pytest.raises(ValidationError):
        adapter.validate_python({"id": "x"})


def test_duplicate_type_fails_naming_both_handlers() -> None:
    router = Router()

    @router.handler("dup")
    async def first(task: Task[Any]) -> None: ...

    with pytest.raises(RegistrationError, match=r"'dup' is registered twice.*first.*second"):

        @router.handler("dup")
        async def second(task: Task[Any]) -> None: ...


def test_non_async_handler_is_refused_at_registration() -> None:
    router = Router()
    with pytest.raises(RegistrationError, match="must be an 'async def'"):

        @router.handler("sync")
        def handle(task: Task[Any]) -> None: ...


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_type_is_refused(bad: str) -> None:
    router = Router()

    async def handle(task: Task[Any]) -> None: ...

    with pytest.raises(RegistrationError, match="non-empty"):
        router.add(bad, handle)


def test_handler_with_wrong_arity_is_refused() -> None:
    router = Router()

    async def two(task: Task[Any], other: int) -> None: ...

    with pytest.raises(RegistrationError, match="exactly one positional"):
        router.add("t", two)


def test_handler_annotated_with_something_else_is_refused() -> None:
    router = Router()

    async def wrong(task: dict[str, Any]) -> None: ...

    with pytest.raises(RegistrationError, match="annotate its parameter as Task"):
        router.add("t", wrong)


def test_bad_option_values_are_refused() -> None:
    router = Router()
    with pytest.raises(RegistrationError, match="timeout_s"):
        router.handler("t", timeout_s=0)
    with pytest.raises(RegistrationError, match="max_attempts"):
        router.handler("t", max_attempts=0)


def test_build_router_merges_settings_references_and_detects_conflicts() -> None:
    settings = BrokerSettings(handlers=("handlers.seeds:router",), entry_points=False)
    merged = build_router(settings)
    assert {"callback", "purchase", "refund", "verify"} <= set(merged.routes)
    assert merged.routes["purchase"].origin == "handlers.seeds:router"

    clash = Router()

    @clash.handler("purchase")
    async def other(task: Task[Any]) -> None: ...

    with pytest.raises(RegistrationError, match="purchase"):
        build_router(settings, [clash])


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module_xyz:router", "cannot import module"),
        ("handlers.seeds:nothing", "no attribute"),
        ("handlers.seeds:callback", "not a broker.Router"),
    ],
)
def test_bad_handler_references_fail_at_start_up(reference: str, message: str) -> None:
    settings = BrokerSettings(handlers=(reference,), entry_points=False)
    with pytest.raises(RegistrationError, match=message):
        build_router(settings)
