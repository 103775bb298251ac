FROM python:3.12 AS base
ONBUILD COPY requirements.txt /app/
ONBUILD RUN pip install -r /app/requirements.txt
ONBUILD RUN <<EOF
echo onbuild heredoc
EOF
FROM base
CMD ["python"]
