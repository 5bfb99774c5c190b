"""How the event loop is run: one place for the command and the local tooling."""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["event_loop_options", "freeze_startup_heap"]


def event_loop_options() -> dict[str, Any]:
    """anyio backend options: uvloop when it is installed (the ``fast`` extra)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def freeze_startup_heap() -> None:
    """Keep what start-up built out of the cyclic collector's way from now on.

    Start-up leaves hundreds of thousands of long-lived objects (botocore's service
    models and endpoint rules, pydantic validators, the routes).  Every full collection
    walks them all again, a pause of tens of milliseconds that shows up as the p99 of
    task latency (docs/benchmarks.md).  ``gc.freeze`` moves them to the permanent
    generation; the collection first frees start-up's own garbage so that is not kept.
    For ``broker run`` only: a test process that starts many brokers would keep each
    one's leftovers.
    """
    gc.collect()
    gc.freeze()
