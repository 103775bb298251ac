FROM fedora:40
RUN dnf install -y \
      gcc \

      make \
      # trailing comment inside
      cmake \
    && dnf clean all
