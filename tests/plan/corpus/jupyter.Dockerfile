FROM quay.io/jupyter/scipy-notebook:2024-07-29
USER root
RUN apt-get update --yes && \
    apt-get install --yes --no-install-recommends ffmpeg && \
    apt-get clean && rm -rf /var/lib/apt/lists/*
USER ${NB_UID}
RUN mamba install --yes 'polars' && \
    mamba clean --all -f -y
