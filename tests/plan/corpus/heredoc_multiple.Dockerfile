FROM ubuntu:24.04
RUN <<INSTALL <<CLEAN bash
apt-get update
apt-get install -y git
INSTALL
apt-get clean
CLEAN
RUN python3 <<'PY'
print("hello from a heredoc")
PY
