ARG PYTHON_VERSION=3.12
ARG VARIANT=slim
FROM python:${PYTHON_VERSION}-${VARIANT}
ARG PIP_INDEX_URL
RUN pip install --index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" requests
