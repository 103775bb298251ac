FROM scratch AS empty
FROM alpine:3.20
COPY --from=empty / /
COPY --from=scratch / /
RUN echo ok
