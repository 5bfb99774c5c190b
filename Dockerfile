# syntax=docker/dockerfile:1
# A small image that runs `broker run` as a non-root user.
# The same steps run outside Docker: python -m venv /opt/broker && pip install .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY handlers ./handlers
RUN python -m venv /opt/broker \
 && /opt/broker/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/broker/bin/pip install --no-cache-dir '.[fast]'

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
# ECS sends SIGTERM, then SIGKILL after stopTimeout (30 s by default): the broker's
# shutdown grace (BROKER_SHUTDOWN_GRACE_S, 25 s) fits inside it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker"]
CMD ["run"]
