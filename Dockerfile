# syntax=docker/dockerfile:1
# A small image that runs `broker run` as a non-root user.
# The same steps run outside Docker: python -m venv /opt/broker && pip install .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY broker ./broker
COPY handlers ./handlers
RUN python -m venv /opt/broker \
 && /opt/broker/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/broker/bin/pip install --no-cache-dir '.[fast,otel]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home broker
COPY --from=build /opt/broker /opt/broker
ENV PATH=/opt/broker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BROKER_HTTP_PORT=8080 \
    BROKER_LOG_FORMAT=json
USER 10001
# /livez /readyz /metrics (BROKER_HTTP_PORT)
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["broker", "healthcheck"]
# ECS and Kubernetes send SIGTERM, then SIGKILL after stopTimeout (ECS: 30 s by default)
# or terminationGracePeriodSeconds: give them the broker's shutdown grace
# (BROKER_SHUTDOWN_GRACE_S, 25 s) plus ~15 s to hand messages back and flush deletes,
# as deploy/ does (45 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker"]
CMD ["run"]
