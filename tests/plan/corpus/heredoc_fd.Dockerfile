FROM alpine:3.20
RUN cat 3<<EOF /dev/fd/3
through fd 3
EOF
