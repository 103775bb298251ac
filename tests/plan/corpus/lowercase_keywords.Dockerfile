from alpine:3.20 as builder
run apk add --no-cache build-base
workdir /src
copy . .
run make

from alpine:3.20
copy --from=builder /src/out /usr/local/bin/
cmd ["app"]
