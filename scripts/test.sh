#!/usr/bin/env bash
# The project's one test command (README, .ci/run). From a clean clone it:
#   1. checks formatting, lints (warnings are errors) and dependency
#      licences (scripts/licenses.sh, cargo-deny),
#   2. starts the services the tests need that are not already running
#      (see scripts/services.sh), and stops what it started on exit,
#   3. runs every test of the workspace.
# With CI=true a test that needs a missing service fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> licences, bans, sources (cargo-deny)"
scripts/licenses.sh

# shellcheck source=scripts/services.sh
source scripts/services.sh
services_start
trap services_stop EXIT

echo "==> cargo test --workspace"
cargo test --workspace --locked "$@"
