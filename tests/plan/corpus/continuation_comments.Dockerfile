FROM ubuntu:22.04
RUN apt-get update \
    # the compilers
    && apt-get install -y build-essential \
    # python tooling
    && apt-get install -y python3-pip \

    && rm -rf /var/lib/apt/lists/*
WORKDIR /work
