"""The embedded AWS emulator: moto's ThreadedMotoServer on loopback, in this process.

`EmbeddedAws` runs it on a 127.0.0.1 port with moto's Step Functions engine switched on,
so that state machines really execute; ``local.flows`` deploys the seed flows to it and
``local.executions`` drives them. Used by `broker demo` and `tests/integration`.

moto is an optional dependency: `pip install 'sfn-callback-broker[local]'`.

Known moto 5.2 behaviour the local tooling works with:

- The Step Functions engine sends its SQS messages to `http://localhost:$MOTO_PORT`, a
  process-wide setting, so only one `EmbeddedAws` per process can run executions.
- `SendTaskFailure` keeps `error` but drops `cause`: an execution failed that way
  reports `cause=None` (failures raised by the engine itself keep theirs).
- `StopExecution` and `/moto-api/reset` do not wake an execution parked on a task token:
  its (daemon) threads stay until the process exits.
- Completing a closed task answers `InvalidToken` where AWS answers `TaskTimedOut`.
- SendTaskSuccess / SendTaskFailure look for the token in every RUNNING execution and
  fail with HTTP 500 (`AttributeError: 'NoneType' object has no attribute
  'callback_pool_manager'`) when one of them was started so recently that its worker
  thread has not built its environment yet. Completions racing with StartExecution hit it
  now and then; a retry succeeds.
- DescribeExecution returns a JSON string output bare, without its quotes (see
  ``local.executions``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from broker.local.endpoint import EndpointClients
from broker.local.env import endpoint_env

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

__all__ = ["EmbeddedAws", "EmulatorUnavailable"]

_INSTALL_HINT: Final = "pip install 'sfn-callback-broker[local]'"
_CREDENTIALS: Final = "testing"  # moto accepts any credentials
_SFN_CONFIG: Final[Mapping[str, Any]] = {"stepfunctions": {"execute_state_machine": True}}
_READY_TIMEOUT_S: Final = 10.0

# Loopback only: a proxy from the environment must never see emulator traffic.
_LOOPBACK_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatorUnavailable(RuntimeError):
    """moto (the `local` extra) is not installed."""

    def __init__(self) -> None:
        super().__init__(f"the embedded AWS emulator needs moto: {_INSTALL_HINT}")


class EmbeddedAws:
    """moto's ThreadedMotoServer on 127.0.0.1 with Step Functions execution switched on."""

    def __init__(self, *, port: int = 0, region: str = "us-east-1") -> None:
        self.region = region
        self._requested_port = port
        self._port: int | None = None
        self._server: ThreadedMotoServer | None = None
        self._saved_moto_port: str | None = None
        self._clients = EndpointClients(_CREDENTIALS)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedAws is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise EmulatorUnavailable from exc
        _quiet_moto_logs()
        _preload_step_functions_engine()
        if self._requested_port:
            _check_port_free(self._requested_port)
        server = ThreadedMotoServer(
            ip_address="127.0.0.1", port=self._requested_port, verbose=False
        )
        # ThreadedMotoServer.start() waits without a timeout for its server thread to
        # bind, and that thread just exits if the bind fails (a port taken since the
        # check above): bound the wait.
        starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
        starter.start()
        starter.join(_READY_TIMEOUT_S)
        if starter.is_alive():
            raise RuntimeError(f"moto could not listen on 127.0.0.1:{self._requested_port}")
        # With port 0 the port is known only once the server has bound it. MOTO_PORT is
        # still set before anything can run: executions only start after the config
        # POST below, and the endpoint is not handed out before start() returns.
        self._server = server
        self._port = server.get_host_and_port()[1]
        self._saved_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self._port)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the listening socket
        # open; close it so repeated start/stop cycles do not leak descriptors.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()
        if os.environ.get("MOTO_PORT") == str(self._port):
            if self._saved_moto_port is None:
                os.environ.pop("MOTO_PORT", None)
            else:
                os.environ["MOTO_PORT"] = self._saved_moto_port
        self._port = None

    def __enter__(self) -> EmbeddedAws:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        return endpoint_env(self.endpoint_url, region=self.region, credentials=_CREDENTIALS)

    def client(self, service: str) -> Any:
        return self._clients.create(service, region=self.region, endpoint_url=self.endpoint_url)

    def reset(self) -> None:
        # Reset keeps moto's global config today, but re-applying it does not depend on
        # that, and a mock_aws() elsewhere in the process may have changed it.
        self._post("/moto-api/reset", {})
        self._post("/moto-api/config", _SFN_CONFIG)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            try:
                self._post("/moto-api/config", _SFN_CONFIG)
            except (urllib.error.URLError, ConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto did not answer on {self.endpoint_url} "
                        f"within {_READY_TIMEOUT_S:.0f} s"
                    ) from exc
                time.sleep(0.05)
            else:
                return

    def _post(self, path: str, body: Mapping[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - fixed http://127.0.0.1 URL
            self.endpoint_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _LOOPBACK_OPENER.open(request, timeout=10) as response:
            response.read()


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option as werkzeug's server, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise OSError(exc.errno, f"127.0.0.1:{port} is not available: {exc.strerror}") from exc


def _preload_step_functions_engine() -> None:
    # moto imports its ASL engine (about 0.85 s) inside the first Step Functions request;
    # paying it here keeps that request as fast as the rest. Optional: a moto that moved
    # the module only loses the head start.
    with contextlib.suppress(ImportError):
        import moto.stepfunctions.parser.models  # noqa: F401


def _quiet_moto_logs() -> None:
    # Left alone, werkzeug logs every request to stderr and moto's Step Functions engine
    # logs each failed task (a normal outcome of a callback flow) as an ERROR with a
    # multi-kilobyte repr. Only loggers the application has not configured are touched.
    for name, level in (("werkzeug", logging.WARNING), ("moto.stepfunctions", logging.CRITICAL)):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
