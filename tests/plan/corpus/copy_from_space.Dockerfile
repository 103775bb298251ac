FROM golang:1.22 AS build
RUN go version
FROM alpine:3.20
COPY --from build /usr/local/go/bin/go /usr/local/bin/go
