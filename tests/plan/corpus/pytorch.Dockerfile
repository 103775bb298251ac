FROM pytorch/pytorch:2.4.1-cuda12.1-cudnn9-runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN pip install --no-cache-dir transformers accelerate
COPY --from=nvidia/cuda:12.1.1-base-ubuntu22.04 /usr/local/cuda/bin/nvcc /usr/local/bin/
WORKDIR /workspace
