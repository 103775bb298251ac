FROM alpine:3.20
ADD --chmod=755 https://example.com/tool.sh /usr/local/bin/tool
ADD --checksum=sha256:2222222222222222222222222222222222222222222222222222222222222222 https://example.com/a.tar.gz /tmp/
ADD ["rootfs.tar.gz", "/"]
