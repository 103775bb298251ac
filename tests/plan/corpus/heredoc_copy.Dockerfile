# syntax=docker/dockerfile:1
FROM alpine:3.20
COPY <<EOF /etc/motd
Welcome to the sandbox.
EOF
COPY <<-"CONF" /etc/app.conf
	listen = 0.0.0.0
	port = 8080
	CONF
RUN cat /etc/motd
