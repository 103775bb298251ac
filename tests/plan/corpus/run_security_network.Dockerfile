# syntax=docker/dockerfile:1-labs
FROM ubuntu:24.04
RUN --network=none --security=insecure echo offline
RUN --mount=type=secret,id=npmrc,target=/root/.npmrc \
    --mount=type=ssh \
    echo secrets
RUN --mount=type=tmpfs,target=/tmp echo tmp
