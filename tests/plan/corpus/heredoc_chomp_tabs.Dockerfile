FROM alpine:3.20
RUN <<-EOT sh
	echo indented
	echo lines
	EOT
RUN echo after
