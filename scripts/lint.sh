#!/usr/bin/env bash
# Static checks CI holds the code to (.ci/run): formatting, clippy with the
# workspace lints as errors, and cargo-deny's bans, licences and sources.
# Installs cargo-deny from crates.io if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "installing: cargo-deny (crates.io)"
    cargo install cargo-deny --locked --quiet
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo deny --log-level error check bans licenses sources
