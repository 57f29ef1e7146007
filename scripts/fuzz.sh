#!/usr/bin/env bash
# Short libFuzzer runs of every fuzz target, SECONDS each (see
# docs/fuzzing.md for what each target drives). Usage:
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default 30 s, all targets)
# Installs cargo-fuzz from crates.io if missing; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain build with the sanitizer flags cargo-fuzz needs. Each
# fuzz workspace is built once (all its targets in one cargo run), then
# each target runs from its seed corpus into a scratch directory, so the
# committed corpus only changes by hand. A crash leaves its input in
# DIR/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
only=("$@")
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing: cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$(pwd)"

# workspace  target  max_len
targets=(
    "qmp/fuzz qmp_input 8192"
    "machine_manager/fuzz config_input 4096"
    "virtio/fuzz virtq_blk 4096"
    "virtio/fuzz virtq_net_tx 4096"
    "virtio/fuzz virtq_net_rx 8192"
    "virtio/fuzz virtq_vsock 4096"
    "virtio/fuzz virtq_rng 4096"
    "virtio/fuzz virtq_console 4096"
    "virtio/fuzz mmio_ops 4096"
    "virtio/fuzz transport_state 8192"
    "virtio/fuzz vhost_user_reply 4096"
    "boot_loader/fuzz kernel_image 65536"
    "shim/fuzz config_toml 4096"
)

wanted() {
    [ "${#only[@]}" -eq 0 ] && return 0
    local t
    for t in "${only[@]}"; do [ "$t" = "$1" ] && return 0; done
    return 1
}

built=" "
for line in "${targets[@]}"; do
    read -r dir target max_len <<<"$line"
    wanted "$target" || continue
    if [[ "$built" != *" $dir "* ]]; then
        echo "fuzz: building $dir"
        (cd "$root/$dir" && cargo fuzz build 2>&1 | tail -n 2)
        built="$built$dir "
    fi
    mkdir -p "$work/$target"
    echo "fuzz: $target for ${seconds}s"
    log="$work/$target.log"
    status=0
    (cd "$root/$dir" && cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=30 \
        -print_final_stats=1) >"$log" 2>&1 || status=$?
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED (status $status); the input is in $dir/artifacts/$target/" >&2
        exit 1
    fi
    echo "fuzz: $target ran ${seconds}s without a crash"
done
