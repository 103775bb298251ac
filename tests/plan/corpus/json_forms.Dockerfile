FROM nginx:1.27-alpine
COPY ["nginx.conf", "/etc/nginx/nginx.conf"]
VOLUME ["/var/cache/nginx"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["wget", "-q", "-O-", "http://localhost/"]
STOPSIGNAL SIGQUIT
ENTRYPOINT ["nginx"]
CMD ["-g", "daemon off;"]
