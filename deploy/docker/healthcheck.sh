#!/bin/bash
# HEALTHCHECK of the strata image: GET /health on the admin port (STRATA_HEALTH_PORT, default
# 8080) succeeds on an HTTP 200. Bash's /dev/tcp keeps curl out of the image.
set -eu
port="${STRATA_HEALTH_PORT:-8080}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 4 status <&3
case "$status" in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "strata /health: ${status:-no answer}" >&2; exit 1 ;;
esac
