"""A fast loopback SQS + Step Functions stub with fault injection, for benchmarks and tests.

    async with StubServer() as stub:          # in this process (tests)
        ...stub.endpoint_url...
    with StubProcess() as stub:               # in its own process (benchmarks)
        control = StubControl(stub.endpoint_url)

See ``awsstub/README.md`` for the protocol, the control endpoints and the faults.
"""

from __future__ import annotations

from ._control import StubControl, StubProcess
from ._server import StubServer
from ._state import Faults, StubError

__all__ = ["Faults", "StubControl", "StubError", "StubProcess", "StubServer"]
