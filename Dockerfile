# syntax=docker/dockerfile:1
# streamd in a container: the supervisor and every child in one container, Kafka and MongoDB elsewhere
# (compose.yaml runs all three). Not built on the machine this was written on: no container engine there;
# tests/test_containers.py checks it with Docker's own parser instead.

# Build stage: a virtualenv holding streamd and its wheels, copied whole into the runtime image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamd ./streamd
RUN python -m venv /opt/streamd && /opt/streamd/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# A system user without a login shell; its home is the state directory (pid file, control socket,
# metrics), the one place streamd writes to.
RUN useradd --system --uid 10001 --user-group --shell /usr/sbin/nologin \
    --home-dir /var/lib/streamd --create-home streamd
COPY --from=build /opt/streamd /opt/streamd
COPY config.yaml /etc/streamd/config.yaml
# Never provision a local Kafka or store inside the container; listen beyond the container's loopback.
ENV PATH=/opt/streamd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMD_STATE_DIR=/var/lib/streamd \
    STREAMD_STACK_LOCAL=false \
    STREAMD_API_HOST=0.0.0.0
USER streamd
WORKDIR /var/lib/streamd
EXPOSE 3000
# The slim image has no curl: Python's urllib asks /health (200 while the API process is alive).
# A changed STREAMD_API_PORT needs a matching --health-cmd.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=4)"]
# The supervisor is PID 1: it handles SIGTERM (stops consumers first) and reaps whatever is re-parented to it.
ENTRYPOINT ["streamd", "start"]
CMD ["-c", "/etc/streamd/config.yaml"]
