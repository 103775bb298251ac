FROM python:3.12-slim
COPY --from=ghcr.io/astral-sh/uv:0.4.20 /uv /uvx /bin/
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen
