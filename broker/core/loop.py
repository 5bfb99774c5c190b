"""How the event loop is run: one place for the command and the local tooling."""

from __future__ import annotations

from typing import Any

__all__ = ["event_loop_options"]


def event_loop_options() -> dict[str, Any]:
    """anyio backend options: uvloop when it is installed (the ``fast`` extra)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
