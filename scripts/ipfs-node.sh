#!/usr/bin/env bash
# A real IPFS node for the tests: js-ipfs (npm `ipfs@0.66.1`, a Kubo-compatible HTTP RPC API),
# offline, bound to 127.0.0.1 only.
#
#   scripts/ipfs-node.sh start    install (cached) + init a fresh repo + start the daemon;
#                                 prints ONLY the API URL on stdout, exits 0 once
#                                 /api/v0/version answers. Starting twice reuses the running node.
#   scripts/ipfs-node.sh stop     stops the daemon by the PID recorded at start.
#   scripts/ipfs-node.sh status   prints the URL and exits 0 if our node answers, else exits 1.
#   scripts/ipfs-node.sh install  installs (or checks) the cached node_modules only.
#
# Environment:
#   EHR_CACHE           cache root (default ~/.cache/ehrchain); node_modules live in
#                       $EHR_CACHE/ipfs-node, reinstalled only when package(-lock).json change.
#   EHR_IPFS_API_PORT   API port (default 5201); EHR_IPFS_GATEWAY_PORT (default 8201).
#   EHR_IPFS_STATE      runtime dir for repo, PID and log (default <repo>/.ehr/ipfs-node).
#
# Installing downloads only from the npm registry: `npm ci --ignore-scripts` against the
# committed package-lock.json (no install scripts run, so nothing else is fetched).
# Logs go to stderr and to $EHR_IPFS_STATE/daemon.log.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PKG_DIR="$ROOT/scripts/ipfs-node"
CACHE="${EHR_CACHE:-$HOME/.cache/ehrchain}/ipfs-node"
STATE="${EHR_IPFS_STATE:-$ROOT/.ehr/ipfs-node}"
API_PORT="${EHR_IPFS_API_PORT:-5201}"
GATEWAY_PORT="${EHR_IPFS_GATEWAY_PORT:-8201}"
URL="http://127.0.0.1:$API_PORT"
PID_FILE="$STATE/pid"
LOG="$STATE/daemon.log"

log() { echo "ipfs-node: $*" >&2; }
die() { log "$*"; exit 1; }

api_answers() {
    # js-ipfs and Kubo answer POST /api/v0/version with JSON containing "Version".
    local out
    out=$(curl -fsS -m 3 -X POST "$URL/api/v0/version" 2>/dev/null) || return 1
    [[ "$out" == *'"Version"'* ]]
}

our_pid() {
    # The recorded PID, if that process is still our js-ipfs daemon.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "ipfs" || return 1
    echo "$pid"
}

install() {
    command -v node >/dev/null || die "node is not installed (apt-get install nodejs npm)"
    command -v npm >/dev/null || die "npm is not installed (apt-get install npm)"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 18)) || die "node >= 18 is needed, found $(node --version)"
    local want have=""
    want=$(cat "$PKG_DIR/package.json" "$PKG_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)
    [[ -f "$CACHE/.installed" ]] && have=$(cat "$CACHE/.installed")
    if [[ "$want" == "$have" && -x "$CACHE/node_modules/.bin/jsipfs" ]]; then
        return 0
    fi
    log "installing js-ipfs into $CACHE (npm ci; a minute or two the first time)"
    mkdir -p "$CACHE"
    cp "$PKG_DIR/package.json" "$PKG_DIR/package-lock.json" "$CACHE/"
    rm -f "$CACHE/.installed"
    (cd "$CACHE" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2 \
        || die "npm ci failed in $CACHE"
    [[ -x "$CACHE/node_modules/.bin/jsipfs" ]] || die "jsipfs missing after npm ci"
    echo "$want" >"$CACHE/.installed"
}

start() {
    if pid=$(our_pid) && api_answers; then
        log "already running (pid $pid)"
        echo "$URL"
        return 0
    fi
    if api_answers; then
        die "something else already answers on $URL; set EHR_IPFS_API_PORT or IPFS_API_URL"
    fi
    install
    mkdir -p "$STATE"
    # A fresh repository each start: tests never see a previous run's blocks or pins.
    rm -rf "$STATE/repo"
    : >"$LOG"
    cat >"$STATE/config.json" <<EOF
{
  "Addresses": {
    "Swarm": [],
    "Announce": [],
    "NoAnnounce": [],
    "API": "/ip4/127.0.0.1/tcp/$API_PORT",
    "Gateway": "/ip4/127.0.0.1/tcp/$GATEWAY_PORT",
    "RPC": "",
    "Delegates": []
  },
  "Bootstrap": [],
  "Discovery": { "MDNS": { "Enabled": false }, "webRTCStar": { "Enabled": false } },
  "Swarm": { "DisableNatPortMap": true }
}
EOF
    local jsipfs="$CACHE/node_modules/.bin/jsipfs"
    IPFS_PATH="$STATE/repo" "$jsipfs" init --emptyRepo --profile test "$STATE/config.json" \
        >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "jsipfs init failed (log: $LOG)"; }
    log "starting js-ipfs daemon on $URL (log: $LOG)"
    IPFS_PATH="$STATE/repo" setsid "$jsipfs" daemon --offline --enable-preload=false \
        >>"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    for _ in $(seq 1 120); do
        if api_answers; then
            echo "$URL"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$LOG" >&2
            rm -f "$PID_FILE"
            die "the daemon exited during start-up (log: $LOG)"
        fi
        sleep 0.5
    done
    tail -n 30 "$LOG" >&2
    stop
    die "the daemon did not answer $URL/api/v0/version within 60 s"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped (pid $pid)"
}

status() {
    if our_pid >/dev/null && api_answers; then
        echo "$URL"
        return 0
    fi
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    install) install ;;
    *)
        echo "usage: $0 start|stop|status|install" >&2
        exit 2
        ;;
esac
