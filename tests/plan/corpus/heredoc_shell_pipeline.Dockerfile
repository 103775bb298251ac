FROM python:3.11
WORKDIR /srv
RUN cat <<EOF > /srv/start.sh && chmod +x /srv/start.sh
#!/bin/sh
exec python -m http.server 9000
EOF
CMD ["/srv/start.sh"]
