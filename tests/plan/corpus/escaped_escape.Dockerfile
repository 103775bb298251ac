FROM alpine:3.20
RUN echo "path\\"
RUN echo done
