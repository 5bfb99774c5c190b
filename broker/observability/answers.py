"""Headers that every answer of a listener carries, aiohttp's own answers included.

``on_response_prepare`` runs only for requests that reached the application: aiohttp
answers a malformed request (400), an oversized head (431 / 400) or an unhandled error
itself, with no application, and those answers would go out without the listener's
headers.  The request class made here adds them where every response is prepared.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from aiohttp import web

__all__ = ["answer_headers"]


def answer_headers(
    server: web.Server, app: web.Application, headers: Mapping[str, str], *, keep_alive: bool
) -> None:
    """Make ``server`` build its requests so that every response it sends carries
    ``headers`` (and ``Server: broker``; ``Connection: close`` unless ``keep_alive``)."""
    fixed = {"Server": "broker", **headers}  # not which aiohttp and Python versions

    class _Request(web.Request):
        async def _prepare_hook(self, response: web.StreamResponse) -> None:
            await super()._prepare_hook(response)
            response.headers.update(fixed)
            if not keep_alive:
                response.force_close()
                response.headers["Connection"] = "close"  # aiohttp closes, this tells the client

    # aiohttp's own factory (private, but its ``_cls`` keyword exists for exactly this),
    # building our class; tests/unit/test_decision_hostile.py fails if that changes.
    server.request_factory = functools.partial(app._make_request, _cls=_Request)
