"""OpenTelemetry spans per message: off by default, and free when off.

Tracing is on when a tracer provider is installed (``opentelemetry-instrument broker
run``, or your own code) or when the standard variables ask for it
(``OTEL_TRACES_EXPORTER=otlp|console``, or an ``OTEL_EXPORTER_OTLP_*ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``.  The ``otel`` extra installs the API and SDK;
without them, or when tracing is off, every hook here is a no-op.

A message's span continues the trace named by a W3C ``traceparent`` (and
``tracestate``) message attribute when the producer set one.

What a span records passes through the logs' redaction (broker/observability/redact.py): an
exception's message and traceback (an AWS error can quote the token it refused), the
status description and every string attribute.  The SDK's own exception recording is
off for the broker's spans, since it would keep the raw text.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from broker.observability.events import current_token
from broker.observability.redact import redact

__all__ = ["Tracer", "annotate"]

log = logging.getLogger("broker.tracing")

_ASKED_BY: tuple[str, ...] = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


class Tracer:
    """The broker's handle on OpenTelemetry; ``Tracer(None)`` traces nothing."""

    def __init__(self, provider: Any = None) -> None:
        self._tracer: Any = provider.get_tracer("broker") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Tracer:
        if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return cls(None)
        try:
            from opentelemetry import trace
        except ImportError:
            return cls(None)
        provider = trace.get_tracer_provider()
        if not isinstance(provider, trace.ProxyTracerProvider):
            return cls(provider)  # installed by opentelemetry-instrument or the user
        exporter_name = environ.get("OTEL_TRACES_EXPORTER", "")
        if exporter_name in ("", "none") and not any(environ.get(v) for v in _ASKED_BY):
            return cls(None)
        return cls(_sdk_provider(exporter_name or "otlp"))

    def message_span(
        self,
        source: str,
        message_id: str,
        attributes: Mapping[str, str],
        *,
        system: str = "aws_sqs",
    ) -> AbstractContextManager[Any]:
        """The span of one message (or activity task), from receive to its settled outcome."""
        if self._tracer is None:
            return nullcontext()
        return self._message_span(source, message_id, attributes, system)

    @contextmanager
    def _message_span(
        self, source: str, message_id: str, attributes: Mapping[str, str], system: str
    ) -> Iterator[Any]:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        carrier = {k: v for k, v in attributes.items() if k in ("traceparent", "tracestate")}
        with (
            self._tracer.start_as_current_span(
                f"{source} process",
                context=extract(carrier) if carrier else None,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": system,
                    "messaging.operation.type": "process",
                    "messaging.destination.name": source,
                    "messaging.message.id": message_id,
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            _recording_errors(span),
        ):
            yield span

    def span(self, name: str, **attributes: str | int) -> AbstractContextManager[Any]:
        """A child span of whatever span is current (the message's, usually)."""
        if self._tracer is None:
            return nullcontext()
        from opentelemetry import trace

        if not trace.get_current_span().is_recording():
            return nullcontext()  # outside a message (a poll, a start-up call): no span
        return self._child_span(name, attributes)

    @contextmanager
    def _child_span(self, name: str, attributes: Mapping[str, str | int]) -> Iterator[Any]:
        with (
            self._tracer.start_as_current_span(
                name,
                attributes={k: _safe(v) for k, v in attributes.items()},
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            _recording_errors(span),
        ):
            yield span


@contextmanager
def _recording_errors(span: Any) -> Iterator[None]:
    """What the SDK records for an exception leaving a span, with the text redacted."""
    try:
        yield
    except Exception as exc:
        from opentelemetry.trace import Status, StatusCode

        token = current_token()
        message = redact(str(exc), token)
        span.add_event(
            "exception",
            {
                "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "exception.message": message,
                "exception.stacktrace": redact("".join(traceback.format_exception(exc)), token),
                "exception.escaped": "True",
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))
        raise


def _safe(value: str | int) -> str | int:
    return redact(value, current_token()) if isinstance(value, str) else value


def annotate(span: Any, **attributes: str | int | None) -> None:
    """Set attributes on a span from ``message_span`` (``None`` when tracing is off)."""
    if span is None:
        return
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(f"broker.{key}", _safe(value))


def _sdk_provider(exporter_name: str) -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("tracing asked for by OTEL_* variables, but the 'otel' extra is missing")
        return None
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning(
                "OTEL_TRACES_EXPORTER=%s needs opentelemetry-exporter-otlp-proto-http; "
                "tracing stays off",
                exporter_name,
            )
            return None
        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "broker")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
