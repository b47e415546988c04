#!/usr/bin/env bash
# The single-machine service stack of causalmeta, on loopback:
#
#   prefect-server  prefect server start           http://127.0.0.1:$PREFECT_PORT   (UI + API)
#   mlflow          mlflow server (sqlite + files)  http://127.0.0.1:$MLFLOW_PORT
#   dask-scheduler  dask scheduler                  tcp://127.0.0.1:$DASK_PORT
#   dask-worker-i   N x dask worker --nthreads 1
#   serve           python -m deploy.serve          the deployments (deploy/serve.py)
#
# Thread budget (issue 19): every process gets explicit torch / BLAS thread counts so that the
# work in flight fits the cores: each Dask worker 1 thread (OMP/MKL/OpenBLAS = 1; the baseline
# fits and chunk sampling), training CAUSALMETA_TRAIN_THREADS (default: all cores), the servers
# 1. Training and a baseline stage both hold slots of the Prefect concurrency limit
# causalmeta-cores-<pool> (one slot per core, flows/concurrency.py), so a training started by an
# event waits for a benchmark's fits instead of sharing the cores with them.
#
# Usage: deploy/stack.sh up|down|status [--workers N] [--state DIR]
#   --workers N   Dask worker processes (default: the number of cores, 1 thread each)
#   --state DIR   pids, logs and the Prefect database (default $CAUSALMETA_ROOT/stack)
# Ports: PREFECT_PORT (4200), MLFLOW_PORT (5000), DASK_PORT (8786), DASK_HTTP_PORT (8787) from the environment.
# Data: CAUSALMETA_ROOT (default .causalmeta): prior stores, checkpoints, mlflow.db, mlartifacts/.
# Bind: every socket is on 127.0.0.1 unless CAUSALMETA_BIND=<address> asks for a network; then
#   the stack refuses to start without authentication on each service (deploy/README.md):
#   Dask mutual TLS (CAUSALMETA_TLS_CA, CAUSALMETA_TLS_CERT, CAUSALMETA_TLS_KEY: a certificate
#   signed by the CA is the shared secret every scheduler/worker/client must hold), Prefect basic
#   auth (PREFECT_SERVER_API_AUTH_STRING=user:password), MLflow basic auth (mlflow[auth] installed,
#   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). HTTP diagnostics stay on loopback.
#
# Every service runs in its own process group (setsid); its pid is the group leader, so
# `down` signals exactly the groups this script started (servers fork workers) and nothing
# else. Runs executed by `serve` see PREFECT_API_URL, MLFLOW_TRACKING_URI,
# DASK_SCHEDULER_ADDRESS and CAUSALMETA_ROOT pointing at this stack (storage/settings.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN="$REPO/.venv/bin"

usage() { sed -n '17,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

CMD="${1:-}"; [[ -n "$CMD" ]] || usage
[[ "$CMD" == -h || "$CMD" == --help ]] && usage 0
shift
CORES="$(nproc)"
WORKERS="$CORES"
ROOT="${CAUSALMETA_ROOT:-.causalmeta}"
STATE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS="${2:?--workers needs a number}"; shift 2 ;;
    --state) STATE="${2:?--state needs a directory}"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "stack.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ "$WORKERS" =~ ^[0-9]+$ ]] || { echo "stack.sh: --workers must be a non-negative integer, got '$WORKERS'" >&2; exit 2; }
ROOT="$(realpath -m "$ROOT")"
STATE="$(realpath -m "${STATE:-$ROOT/stack}")"

PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
DASK_PORT="${DASK_PORT:-8786}"
DASK_HTTP_PORT="${DASK_HTTP_PORT:-8787}"
BIND="${CAUSALMETA_BIND:-127.0.0.1}"
is_loopback() { [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 ]]; }
NETWORK=0
is_loopback "$BIND" || NETWORK=1
if (( NETWORK )) && [[ "$CMD" == up ]]; then
  # A listener beyond loopback without authentication would run anyone's code: Dask executes
  # the functions it is sent, Prefect and MLflow accept runs and models. Refuse, saying what is missing.
  missing=()
  for v in CAUSALMETA_TLS_CA CAUSALMETA_TLS_CERT CAUSALMETA_TLS_KEY; do
    [[ -n "${!v:-}" && -r "${!v}" ]] || missing+=("$v (a readable PEM file for Dask mutual TLS)")
  done
  [[ "${PREFECT_SERVER_API_AUTH_STRING:-}" == ?*:?* ]] || missing+=("PREFECT_SERVER_API_AUTH_STRING=user:password (Prefect basic auth)")
  [[ -n "${MLFLOW_TRACKING_USERNAME:-}" && -n "${MLFLOW_TRACKING_PASSWORD:-}" ]] \
    || missing+=("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow basic auth admin)")
  "$BIN/python" -c "import flask_wtf" 2>/dev/null \
    || missing+=("mlflow[auth] (Flask-WTF) in the venv: $BIN/pip install 'mlflow[auth]'")
  if (( ${#missing[@]} )); then
    echo "stack.sh: CAUSALMETA_BIND=$BIND is not loopback; refusing to serve without authentication. Missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    echo "  (unset CAUSALMETA_BIND to keep everything on 127.0.0.1; see deploy/README.md)" >&2
    exit 2
  fi
fi
PREFECT_URL="http://$BIND:$PREFECT_PORT"
MLFLOW_URL="http://$BIND:$MLFLOW_PORT"
if (( NETWORK )); then DASK_ADDR="tls://$BIND:$DASK_PORT"; else DASK_ADDR="tcp://$BIND:$DASK_PORT"; fi

TRAIN_THREADS="${CAUSALMETA_TRAIN_THREADS:-$CORES}"
[[ "$TRAIN_THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "stack.sh: CAUSALMETA_TRAIN_THREADS must be a positive integer, got '$TRAIN_THREADS'" >&2; exit 2; }
if [[ "$CMD" == up ]] && (( WORKERS > CORES )); then
  echo "stack.sh: warning: $WORKERS Dask workers x 1 thread on $CORES cores oversubscribes them" >&2
fi
ONE_THREAD=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
# One pool of cores for the serve process's runs and the local workers (flows/concurrency.py).
export CAUSALMETA_CORE_POOL="${CAUSALMETA_CORE_POOL:-stack-$(hostname)}" CAUSALMETA_POOL_CORES="${CAUSALMETA_POOL_CORES:-$CORES}"
export CAUSALMETA_DASK_POOL="${CAUSALMETA_DASK_POOL:-$CAUSALMETA_CORE_POOL}" CAUSALMETA_TRAIN_THREADS="$TRAIN_THREADS"
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="$STATE/prefect-home"
export CAUSALMETA_ROOT="$ROOT"

pidfile() { echo "$STATE/pids/$1.pid"; }
logfile() { echo "$STATE/logs/$1.log"; }
pid_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }  # a zombie is dead
is_alive() { local f; f="$(pidfile "$1")"; [[ -f "$f" ]] && pid_alive "$(cat "$f")"; }
services() {  # every service with a pid file, in start order
  local f; for f in prefect-server mlflow dask-scheduler; do [[ -f "$(pidfile $f)" ]] && echo "$f"; done
  for f in "$STATE"/pids/dask-worker-*.pid; do [[ -f "$f" ]] && basename "$f" .pid; done
  [[ -f "$(pidfile serve)" ]] && echo serve
  return 0
}
url_of() {
  case "$1" in
    prefect-server) echo "$PREFECT_URL (UI), $PREFECT_URL/api" ;;
    mlflow) echo "$MLFLOW_URL" ;;
    dask-scheduler) echo "$DASK_ADDR" ;;
    dask-worker-*) echo "-> $DASK_ADDR" ;;
    serve) echo "-> $PREFECT_URL/api" ;;
  esac
}

start() {  # start NAME CMD...: own session/process group, output to the log, pid file
  local name="$1"; shift
  setsid "$@" >"$(logfile "$name")" 2>&1 < /dev/null &
  echo $! >"$(pidfile "$name")"
  echo "started $name (pid $!)"
}

fail() {
  echo "stack.sh: $1; last lines of $(logfile "$2"):" >&2
  tail -n 30 "$(logfile "$2")" >&2 || true
  echo "stack.sh: stopping what was started" >&2
  do_down >&2
  exit 1
}

wait_http() {  # wait_http NAME URL TIMEOUT [USER:PASSWORD]
  local deadline=$((SECONDS + $3)) auth=()
  [[ -n "${4:-}" ]] && auth=(-u "$4")
  until curl -sf -o /dev/null "${auth[@]}" "$2"; do
    is_alive "$1" || fail "$1 exited" "$1"
    (( SECONDS < deadline )) || fail "$1 not healthy at $2 after $3 s" "$1"
    sleep 0.5
  done
  echo "$1 healthy: $2"
}

wait_port() {  # wait_port NAME PORT TIMEOUT
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$BIND/$2") 2>/dev/null; do
    is_alive "$1" || fail "$1 exited" "$1"
    (( SECONDS < deadline )) || fail "$1 not listening on $2 after $3 s" "$1"
    sleep 0.5
  done
  echo "$1 listening: $BIND:$2"
}

wait_log() {  # wait_log NAME TEXT TIMEOUT
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$(logfile "$1")" 2>/dev/null; do
    is_alive "$1" || fail "$1 exited" "$1"
    (( SECONDS < deadline )) || fail "$1 did not report '$2' after $3 s" "$1"
    sleep 0.5
  done
  echo "$1 ready"
}

do_up() {
  local running=""
  for s in $(services); do is_alive "$s" && running="$running $s"; done
  if [[ -n "$running" ]]; then
    echo "stack.sh: already running:$running (state $STATE); run 'deploy/stack.sh down' first" >&2
    exit 1
  fi
  mkdir -p "$STATE/pids" "$STATE/logs"
  rm -f "$STATE"/pids/*.pid
  for b in prefect mlflow dask python; do
    [[ -x "$BIN/$b" ]] || { echo "stack.sh: $BIN/$b not found: run 'make install' first" >&2; exit 1; }
  done
  for p in "$PREFECT_PORT" "$MLFLOW_PORT" "$DASK_PORT" "$DASK_HTTP_PORT"; do
    if (exec 3<>"/dev/tcp/$BIND/$p") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "stack.sh: port $p is already in use (set PREFECT_PORT / MLFLOW_PORT / DASK_PORT / DASK_HTTP_PORT)" >&2
      exit 1
    fi
  done
  mkdir -p "$PREFECT_HOME" "$ROOT/mlartifacts"

  # With a network bind: Dask mutual TLS on every connection (scheduler, workers, and the
  # clients in serve's flow runs through the DASK_ config variables), basic auth on the others.
  local dask_tls=() mlflow_auth=()
  if (( NETWORK )); then
    dask_tls=(--tls-ca-file "$CAUSALMETA_TLS_CA" --tls-cert "$CAUSALMETA_TLS_CERT" --tls-key "$CAUSALMETA_TLS_KEY")
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True \
      DASK_DISTRIBUTED__COMM__TLS__CA_FILE="$CAUSALMETA_TLS_CA" \
      DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT="$CAUSALMETA_TLS_CERT" \
      DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY="$CAUSALMETA_TLS_KEY" \
      PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"
    # the auth app keeps its users in the state folder, not in the cwd (its default)
    printf '%s\n' "[mlflow]" "default_permission = READ" "database_uri = sqlite:///$STATE/mlflow-auth.db" \
      "admin_username = $MLFLOW_TRACKING_USERNAME" \
      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" >"$STATE/mlflow-auth.ini"
    mlflow_auth=(--app-name basic-auth)
  fi

  # The three servers start side by side; they do not depend on each other.
  start prefect-server env "${ONE_THREAD[@]}" PREFECT_UI_API_URL="$PREFECT_URL/api" \
    "$BIN/prefect" server start --host "$BIND" --port "$PREFECT_PORT"
  # One gunicorn/uvicorn worker and no job runner: ~0.5 GB instead of ~3 GB (ENVIRONMENT.md).
  start mlflow env "${ONE_THREAD[@]}" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_AUTH_CONFIG_PATH="$STATE/mlflow-auth.ini" \
    MLFLOW_AUTH_ADMIN_PASSWORD="${MLFLOW_TRACKING_PASSWORD:-}" \
    "$BIN/mlflow" server "${mlflow_auth[@]}" --backend-store-uri "sqlite:///$ROOT/mlflow.db" \
    --artifacts-destination "$ROOT/mlartifacts" --host "$BIND" --port "$MLFLOW_PORT" --workers 1
  # --no-dashboard drops the dashboard pages, not the HTTP server (health, metrics): that one
  # listens on every interface unless given an address, and it has no authentication.
  start dask-scheduler env "${ONE_THREAD[@]}" "$BIN/dask" scheduler --host "$BIND" --port "$DASK_PORT" --no-dashboard \
    --dashboard-address "127.0.0.1:$DASK_HTTP_PORT" "${dask_tls[@]}"

  wait_http prefect-server "$PREFECT_URL/api/health" 180 "${PREFECT_API_AUTH_STRING:-}"
  wait_http mlflow "$MLFLOW_URL/health" 180
  wait_port dask-scheduler "$DASK_PORT" 120

  # Everything below executes flow and task code: it gets the whole stack's addresses.
  export PREFECT_API_URL="$PREFECT_URL/api" MLFLOW_TRACKING_URI="$MLFLOW_URL" DASK_SCHEDULER_ADDRESS="$DASK_ADDR"
  # The server keeps concurrency leases in memory: slots held by runs that died with an earlier
  # server are taken forever unless cleared now, before anything runs (flows/concurrency.py).
  "$BIN/python" -m flows.concurrency reset || fail "clearing stale concurrency slots failed" prefect-server
  local i
  for ((i = 0; i < WORKERS; i++)); do
    # --host: the worker and its nanny listen where the scheduler reaches them (without it, on
    # every interface); their HTTP servers stay on loopback like the scheduler's.
    start "dask-worker-$i" env "${ONE_THREAD[@]}" "$BIN/dask" worker "$DASK_ADDR" --nthreads 1 --name "causalmeta-$i" --no-dashboard \
      --host "$BIND" --dashboard-address "127.0.0.1:0" "${dask_tls[@]}"
  done
  # the serve process and its flow-run subprocesses: training's budget (tasks/train.py sets it too)
  start serve env OMP_NUM_THREADS="$TRAIN_THREADS" MKL_NUM_THREADS="$TRAIN_THREADS" \
    OPENBLAS_NUM_THREADS="$TRAIN_THREADS" "$BIN/python" -m deploy.serve --root "$ROOT"
  wait_log serve "deployments are being served" 240
  echo
  do_status
}

do_down() {
  local s pid stopped=0
  # Reverse start order: the serve process first, so no run is picked up while servers go.
  for s in $(services | tac); do
    pid="$(cat "$(pidfile "$s")")"
    if pid_alive "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      stopped=1
      echo "stopping $s (process group $pid)"
    fi
  done
  if (( stopped )); then
    local deadline=$((SECONDS + 15))
    for s in $(services); do
      pid="$(cat "$(pidfile "$s")")"
      while pid_alive "$pid" && (( SECONDS < deadline )); do sleep 0.3; done
      if pid_alive "$pid"; then
        echo "$s did not stop in 15 s: SIGKILL to process group $pid"
        kill -KILL -- "-$pid" 2>/dev/null || true
      fi
    done
  fi
  rm -f "$STATE"/pids/*.pid
  echo "stack down (logs kept in $STATE/logs)"
}

do_status() {
  local s pid state any=0
  printf '%-16s %-8s %-6s %s\n' SERVICE PID STATE URL
  for s in $(services); do
    any=1
    pid="$(cat "$(pidfile "$s")")"
    if pid_alive "$pid"; then state=alive; else state=DEAD; fi
    printf '%-16s %-8s %-6s %s\n' "$s" "$pid" "$state" "$(url_of "$s")"
  done
  (( any )) || echo "(no services started from state $STATE)"
  echo "state: $STATE   data root: $ROOT"
  local auth=(); [[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]] && auth=(-u "$PREFECT_SERVER_API_AUTH_STRING")
  if curl -sf -o /dev/null "${auth[@]}" "$PREFECT_URL/api/health"; then echo "prefect api: healthy"; fi
  if curl -sf -o /dev/null "$MLFLOW_URL/health"; then echo "mlflow: healthy"; fi
}

case "$CMD" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  *) echo "stack.sh: unknown command '$CMD'" >&2; usage ;;
esac
