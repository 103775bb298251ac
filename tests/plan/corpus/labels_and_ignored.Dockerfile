FROM redis:7.2
LABEL org.opencontainers.image.title="cache" \
      org.opencontainers.image.vendor="example"
EXPOSE 6379/tcp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK CMD redis-cli ping || exit 1
ONBUILD COPY . /data
SHELL ["/bin/bash", "-c"]
CMD ["redis-server"]
