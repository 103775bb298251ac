FROM alpine:3.20 AS first
COPY --from=Tools /bin/tool /bin/tool
FROM busybox:1.36 AS tools
RUN true
