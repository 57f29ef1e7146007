#!/usr/bin/env bash
# Boot time of the L2 Debian cloud kernel inside the rig, altovirt next to
# QEMU microvm (both under L1's KVM, same kernel, initramfs, -m 256 -smp 2,
# "quiet"). Prints a table; the raw rig output goes to $RIG_BENCH_LOG.
#
#   scripts/rig/bench.sh ALTOVIRT_BINARY [ROUNDS]
#
# Both boot the kernel with ACPI (its only way to find CPUs and devices)
# and the same command line; altovirt runs without hotplug slots
# (blk-slots=0,net-slots=0), as QEMU's microvm has none. QEMU's wall time
# includes loading QEMU and its ~50 shared libraries under TCG (L1), which
# dominates it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 ALTOVIRT_BINARY [ROUNDS]" >&2; exit 2; }
rounds="${2:-1}"
scen=()
for _ in $(seq "$rounds"); do scen+=(bench_boot qemu_boot); done
# Snapshot restore against the cold boot of the same VM (kernel (b), when
# built): one b_snapshot run per round.
if "$here/build-kernel-b.sh" --if-cached >/dev/null 2>&1; then
    for _ in $(seq "$rounds"); do scen+=(b_snapshot); done
fi
out="${RIG_BENCH_LOG:-$(mktemp "${TMPDIR:-/tmp}/altovirt-rig-bench.XXXXXX")}"
"$here/run.sh" "$1" "${scen[@]}" >"$out"
echo "rig boot benchmark ($rounds round(s)); raw output: $out"
echo
awk '
/^RIG (bench_boot|qemu_boot) begin/ { sc = $2; n[sc]++ }
/^L2 (bench_boot|qemu_boot) L2-UPTIME / { up[$2] = up[$2] " " $4 }
/^RIG (bench_boot|qemu_boot) wall-ms / { wall[$2] = wall[$2] " " $4 }
/^RIG (bench_boot|qemu_boot) boot-complete-us / { bc[$2] = bc[$2] " " int($4 / 1000) }
END {
    printf "| VMM (inside L1) | L2 uptime at init (s) | exec -> boot-complete (ms) | exec -> exit (ms) |\n"
    printf "| --- | ---: | ---: | ---: |\n"
    printf "| altovirt | %s | %s | %s |\n", up["bench_boot"], bc["bench_boot"], wall["bench_boot"]
    printf "| qemu microvm | %s | %s | %s |\n", up["qemu_boot"], "n/a (no port 0x3f0)", wall["qemu_boot"]
}' "$out"
if grep -q '^RIG b_snapshot cold-' "$out"; then
    echo
    awk '
    /^RIG b_snapshot cold-boot-complete-us / { bc = bc " " int($4 / 1000) }
    /^RIG b_snapshot cold-ready-ms / { rd = rd " " $4 }
    /^RIG b_snapshot restore-us / { rs = rs " " int($4 / 1000) }
    /^RIG b_snapshot restore-answer-ms / { an = an " " $4 }
    /^RIG b_snapshot snap-memory-kb / { mk = mk " " int($4 / 1024) }
    /^RIG b_snapshot restored-rss-kb / { rss = rss " " int($4 / 1024) }
    END {
        printf "Kernel (b), blk + net + hybrid vsock, -m 256 -smp 2 (b_snapshot):\n\n"
        printf "| | exec -> boot-complete (ms) | exec -> ready for L1 (ms) |\n| --- | ---: | ---: |\n"
        printf "| cold boot | %s | %s |\n", bc, rd
        printf "| restore (-incoming) | %s (exec -> restored, vCPUs about to run) | %s (exec -> the guest answered over vsock, read and wrote its disk, pinged L1) |\n", rs, an
        printf "\nSnapshot memory file on disk: %s MiB of 256; restored VMM RSS: %s MiB\n", mk, rss
    }' "$out"
fi
