#!/usr/bin/env bash
# Sourced by scripts/test.sh: starts the external services tests use and
# exports their URLs. Each service honours a URL already set in the
# environment (then nothing is started).
#
#   DATABASE_URL   PostgreSQL; default postgres://postgres@127.0.0.1:5432/test
#                  when a server answers there (CI pre-starts one).
#   IPFS_API_URL   Kubo-compatible RPC API; see scripts/ipfs-node.sh.

EHR_STARTED_PIDS=()

services_start() {
    if [[ -z "${DATABASE_URL:-}" ]]; then
        if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
            export DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
            echo "==> PostgreSQL at $DATABASE_URL"
        else
            echo "==> no PostgreSQL on 127.0.0.1:5432 (PostgreSQL tests fail under CI=true, skip otherwise)"
        fi
    fi
    if [[ -z "${IPFS_API_URL:-}" && -x scripts/ipfs-node.sh ]]; then
        local url
        if url=$(scripts/ipfs-node.sh start); then
            export IPFS_API_URL="$url"
            EHR_STARTED_PIDS+=("ipfs")
            echo "==> IPFS node at $IPFS_API_URL"
        else
            echo "==> could not start an IPFS node (IPFS tests fail under CI=true, skip otherwise)"
        fi
    fi
}

services_stop() {
    for s in "${EHR_STARTED_PIDS[@]:-}"; do
        case "$s" in
            ipfs) scripts/ipfs-node.sh stop || true ;;
        esac
    done
}
