#!/usr/bin/env bash
# Short libFuzzer run of the QMP input target (qmp/fuzz). Usage:
#   scripts/fuzz.sh [SECONDS]      (default 30)
# Installs cargo-fuzz from crates.io if missing; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain build with the sanitizer flags cargo-fuzz needs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing: cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked --quiet
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd qmp/fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run qmp_input "$work" corpus/qmp_input -- \
    -max_total_time="$seconds" -max_len=8192 2>&1 | tail -n 5
echo "fuzz: qmp_input ran ${seconds}s without a crash"
