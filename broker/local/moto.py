"""An embedded AWS emulator for local runs and integration tests.

`EmbeddedAws` runs moto's `ThreadedMotoServer` on a loopback port inside the current
process, with moto's Step Functions engine switched on so that state machines really
execute. `deploy_seed_flows` creates the example callback flows (one SQS queue and one
`sqs:sendMessage.waitForTaskToken` state machine per flow), and `start_executions` /
`wait_for_executions` drive them. Used by `broker demo` and `tests/integration`.

moto is an optional dependency: `pip install 'sfn-callback-broker[local]'`.

Known moto 5.2 behaviour this module works with:

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
- DescribeExecution returns an output that is a JSON string bare, without its quotes
  (`"ok"` comes back as `ok`), and leaves `output` out when it is JSON `null`. Such an
  output is kept as the raw string; a string that looks like another JSON value (`"42"`)
  cannot be told apart and comes back parsed (`42`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

__all__ = [
    "AwsEndpoint",
    "EmbeddedAws",
    "EmulatorUnavailable",
    "ExecutionResult",
    "SeedFlows",
    "deploy_seed_flows",
    "describe_execution",
    "running_executions",
    "start_executions",
    "wait_for_executions",
]

_INSTALL_HINT: Final = "pip install 'sfn-callback-broker[local]'"
_ACCESS_KEY: Final = "testing"
_SECRET_KEY: Final = "testing"  # noqa: S105 - moto accepts any credentials
# moto accepts any role; this one is only there because CreateStateMachine requires it.
_ROLE_ARN: Final = "arn:aws:iam::123456789012:role/sfn-callback-broker-demo"
_SFN_CONFIG: Final[Mapping[str, Any]] = {"stepfunctions": {"execute_state_machine": True}}
_READY_TIMEOUT_S: Final = 10.0
_CALLBACK_RESOURCE: Final = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
_TERMINAL_EVENT_DETAILS: Final = (
    "executionFailedEventDetails",
    "executionTimedOutEventDetails",
    "executionAbortedEventDetails",
)
_NAME_MAX: Final = 80
_NAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")

# Loopback only: a proxy from the environment must never see emulator traffic.
_LOOPBACK_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AwsEndpoint(Protocol):
    """Where the seed flows are deployed and driven: EmbeddedAws, or LocalStack
    (``broker.local.localstack.LocalStackAws``)."""

    @property
    def region(self) -> str: ...
    @property
    def endpoint_url(self) -> str: ...
    def client(self, service: str) -> Any: ...


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
        self._botocore_session: Any = None
        self._client_lock = threading.Lock()

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
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": _ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": _SECRET_KEY,
        }

    def client(self, service: str) -> Any:
        # One botocore session per emulator: the service models it loads are cached on it.
        # Its `profile` variable is cut loose from AWS_PROFILE, so a profile named in the
        # environment but absent from ~/.aws cannot break a client that needs no profile.
        # Clients are thread-safe; creating them from one botocore session is not.
        with self._client_lock:
            if self._botocore_session is None:
                import botocore.session

                self._botocore_session = botocore.session.Session(
                    session_vars={"profile": (None, None, None, None)}
                )
            return self._botocore_session.create_client(
                service,
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                aws_access_key_id=_ACCESS_KEY,
                aws_secret_access_key=_SECRET_KEY,
            )

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


# --- seed flows -------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedFlows:
    """What deploy_seed_flows created, by logical name: callback, verification, transactions."""

    queues: dict[str, str]
    state_machines: dict[str, str]


def _callback_task(
    queue_url: str,
    message_body: Mapping[str, str],
    *,
    message_type: str | None = None,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": dict(message_body)}
    if message_type is not None:
        # moto's Step Functions engine forwards MessageAttributes to SQS (checked in
        # tests/integration/test_emulator.py), so the type travels as an attribute, as
        # it would on AWS, and the body stays the seed's {"input", "TaskToken"}.
        parameters["MessageAttributes"] = {
            "type": {"DataType": "String", "StringValue": message_type}
        }
    return {"Type": "Task", "Resource": _CALLBACK_RESOURCE, "Parameters": parameters}


def _seed_definitions(queues: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    transaction_body = {"input.$": "$", "TaskToken.$": "$$.Task.Token"}
    return {
        # seed 000: the plain callback example, token field `MyTaskToken`.
        "callback": {
            "Comment": "Callback flow: wait for a worker, then finish.",
            "StartAt": "WaitForCallback",
            "States": {
                "WaitForCallback": {
                    **_callback_task(
                        queues["callback"],
                        {"input.$": "$", "MyTaskToken.$": "$$.Task.Token"},
                    ),
                    "Next": "Done",
                },
                "Done": {"Type": "Pass", "End": True},
            },
        },
        # seed 004 (CDK): payload under `Payload`, token under `TaskToken`.
        "verification": {
            "Comment": "Verification flow: a worker verifies the payload.",
            "StartAt": "Verify",
            "States": {
                "Verify": {
                    **_callback_task(
                        queues["verification"],
                        {"Payload.$": "$", "TaskToken.$": "$$.Task.Token"},
                    ),
                    "End": True,
                },
            },
        },
        # seed 001 as a callback flow: one queue, the message type as an SQS attribute.
        # No Default branch, as in the seed: another type fails the execution
        # (States.NoChoiceMatched on AWS, States.Runtime on moto).
        "transactions": {
            "Comment": "Transaction flow: route purchases and refunds to one queue.",
            "StartAt": "ProcessTransaction",
            "States": {
                "ProcessTransaction": {
                    "Type": "Choice",
                    "Choices": [
                        {
                            "Variable": "$.TransactionType",
                            "StringEquals": "PURCHASE",
                            "Next": "ProcessPurchase",
                        },
                        {
                            "Variable": "$.TransactionType",
                            "StringEquals": "REFUND",
                            "Next": "ProcessRefund",
                        },
                    ],
                },
                "ProcessPurchase": {
                    **_callback_task(
                        queues["transactions"], transaction_body, message_type="purchase"
                    ),
                    "End": True,
                },
                "ProcessRefund": {
                    **_callback_task(
                        queues["transactions"], transaction_body, message_type="refund"
                    ),
                    "End": True,
                },
            },
        },
    }


def deploy_seed_flows(aws: AwsEndpoint, *, prefix: str = "demo") -> SeedFlows:
    """Create the seed queues and state machines, named f"{prefix}-<logical name>".

    Safe to call again with the same prefix: existing queues are reused and existing state
    machines get the current definition.
    """
    sqs = aws.client("sqs")
    sfn = aws.client("stepfunctions")
    logical_names = ("callback", "verification", "transactions")
    queues = {
        name: sqs.create_queue(
            QueueName=f"{prefix}-{name}", Attributes={"VisibilityTimeout": "30"}
        )["QueueUrl"]
        for name in logical_names
    }
    state_machines: dict[str, str] = {}
    for name, definition in _seed_definitions(queues).items():
        state_machines[name] = _put_state_machine(sfn, f"{prefix}-{name}", json.dumps(definition))
    return SeedFlows(queues=queues, state_machines=state_machines)


def _put_state_machine(sfn: Any, name: str, definition: str) -> str:
    try:
        arn: str = sfn.create_state_machine(name=name, definition=definition, roleArn=_ROLE_ARN)[
            "stateMachineArn"
        ]
    except sfn.exceptions.StateMachineAlreadyExists:
        # AWS refuses a second create with another definition...
        arn = next(
            sm["stateMachineArn"]
            for page in sfn.get_paginator("list_state_machines").paginate()
            for sm in page["stateMachines"]
            if sm["name"] == name
        )
    # ...while moto answers with the old machine unchanged: compare and update in both cases.
    if sfn.describe_state_machine(stateMachineArn=arn)["definition"] != definition:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=_ROLE_ARN)
    return arn


# --- executions -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionResult:
    """An execution as last seen; `status` is still RUNNING if the wait timed out."""

    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    started_at: datetime
    stopped_at: datetime | None


def start_executions(
    aws: AwsEndpoint,
    state_machine_arn: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    name_prefix: str,
) -> list[str]:
    """Start one execution per input; return their ARNs in input order.

    Every execution gets a fresh name: moto (like AWS) treats a repeated name with the same
    input as the same execution.
    """
    sfn = aws.client("stepfunctions")
    run_id = uuid.uuid4().hex[:12]
    arns: list[str] = []
    for index, execution_input in enumerate(inputs):
        suffix = f"-{run_id}-{index}"
        name = _NAME_UNSAFE.sub("-", name_prefix)[: _NAME_MAX - len(suffix)] + suffix
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(execution_input)
        )
        arns.append(response["executionArn"])
    return arns


def wait_for_executions(
    aws: AwsEndpoint,
    execution_arns: Sequence[str],
    *,
    timeout_s: float,
    poll_interval_s: float = 0.2,
) -> dict[str, ExecutionResult]:
    """Wait until none of the executions is RUNNING, or until timeout_s; describe them all.

    While waiting, one ListExecutions(statusFilter=RUNNING) per state machine per poll
    replaces a DescribeExecution per execution; each execution is described once at the end.
    """
    sfn = aws.client("stepfunctions")
    by_machine: dict[str, set[str]] = {}
    for arn in execution_arns:
        by_machine.setdefault(_state_machine_arn(arn), set()).add(arn)
    deadline = time.monotonic() + timeout_s
    while by_machine:
        for machine_arn in list(by_machine):
            running = set(running_executions(sfn, machine_arn))
            by_machine[machine_arn] &= running
            if not by_machine[machine_arn]:
                del by_machine[machine_arn]
        if not by_machine or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))
    return {arn: describe_execution(sfn, arn) for arn in dict.fromkeys(execution_arns)}


def _state_machine_arn(execution_arn: str) -> str:
    # arn:<partition>:states:<region>:<account>:execution:<machine>:<execution>
    parts = execution_arn.split(":")
    if len(parts) != 8 or parts[5] != "execution":
        raise ValueError(f"not a standard execution ARN: {execution_arn!r}")
    return ":".join([*parts[:5], "stateMachine", parts[6]])


def running_executions(sfn: Any, machine_arn: str) -> Iterator[str]:
    paginator = sfn.get_paginator("list_executions")
    for page in paginator.paginate(stateMachineArn=machine_arn, statusFilter="RUNNING"):
        for execution in page["executions"]:
            yield execution["executionArn"]


def describe_execution(sfn: Any, arn: str) -> ExecutionResult:
    described = sfn.describe_execution(executionArn=arn)
    status: str = described["status"]
    error: str | None = described.get("error")
    cause: str | None = described.get("cause")
    if status in {"FAILED", "TIMED_OUT", "ABORTED"} and error is None and cause is None:
        error, cause = _terminal_error(sfn, arn)
    return ExecutionResult(
        arn=arn,
        status=status,
        output=_parse_output(described.get("output")),
        error=error,
        cause=cause,
        started_at=described["startDate"],
        stopped_at=described.get("stopDate"),
    )


def _parse_output(raw_output: str | None) -> Any:
    if raw_output is None:
        return None
    try:
        return json.loads(raw_output)
    except ValueError:
        # moto's bare JSON string (see the module docstring): the raw text is the value.
        return raw_output


def _terminal_error(sfn: Any, arn: str) -> tuple[str | None, str | None]:
    # DescribeExecution normally carries error and cause; the last history event is the
    # fallback for emulators that leave them out there.
    # reverseOrder puts the terminal event on the first page on AWS; moto ignores it and
    # answers all events at once, so the whole page is searched.
    events = sfn.get_execution_history(executionArn=arn, reverseOrder=True)
    for event in events["events"]:
        for key in _TERMINAL_EVENT_DETAILS:
            if key in event:
                details = event[key]
                return details.get("error"), details.get("cause")
    return None, None
