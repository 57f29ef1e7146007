#!/usr/bin/env bash
# Short libFuzzer runs of the QMP input target (qmp/fuzz) and of the
# configuration parsers (machine_manager/fuzz), SECONDS each. Usage:
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
root="$(pwd)"
run() { # DIR TARGET MAX_LEN
    mkdir -p "$work/$2"
    (cd "$root/$1" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$2" "$work/$2" "corpus/$2" -- \
        -max_total_time="$seconds" -max_len="$3" 2>&1 | tail -n 5)
    echo "fuzz: $2 ran ${seconds}s without a crash"
}
run qmp/fuzz qmp_input 8192
run machine_manager/fuzz config_input 4096
