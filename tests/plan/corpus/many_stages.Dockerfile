ARG ALPINE=3.20
FROM alpine:${ALPINE} AS a
RUN echo a > /a
FROM alpine:${ALPINE} AS b
RUN echo b > /b
FROM debian:bookworm AS c
RUN echo c > /c
FROM ubuntu:24.04
COPY --from=a /a /a
COPY --from=b /b /b
COPY --from=c /c /c
COPY --from=1 /b /b1
