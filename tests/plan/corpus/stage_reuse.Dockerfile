FROM ubuntu:24.04 AS base
RUN apt-get update && apt-get install -y curl

FROM base AS dev
RUN apt-get install -y vim

FROM base
COPY --from=dev /usr/bin/vim /usr/bin/vim
