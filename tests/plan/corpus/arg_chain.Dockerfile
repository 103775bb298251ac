ARG REGISTRY=docker.io
ARG IMAGE=${REGISTRY}/library/python
ARG TAG=3.12
FROM ${IMAGE}:${TAG} AS py
FROM ${REGISTRY}/library/node:20
COPY --from=py /usr/local/bin/python3 /usr/local/bin/
