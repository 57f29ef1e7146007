#!/usr/bin/env bash
# Runs the nested KVM-in-TCG rig: QEMU (TCG, nested SVM) boots L1, a Debian
# cloud kernel whose initramfs loads KVM and runs the given altovirt binary
# once per scenario against an L2 Debian cloud kernel with a busybox
# initramfs. L1's console goes to stdout; result lines start with "RIG ".
#
#   scripts/rig/run.sh ALTOVIRT_BINARY [SCENARIO...]
#
# Scenarios (default: boot reboot stopcont poweroff; see l1-init.sh for all)
# Environment: RIG_CACHE (cache root, see fetch.sh), RIG_TIMEOUT (seconds for
# the whole QEMU run, default 600), RIG_KEEP=1 keeps the work directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "rig: $*" >&2; }

[ $# -ge 1 ] || { echo "usage: $0 ALTOVIRT_BINARY [SCENARIO...]" >&2; exit 2; }
altovirt="$1"
shift
[ -x "$altovirt" ] || { echo "rig: ALTOVIRT_BINARY $altovirt is not an executable file" >&2; exit 2; }
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(boot reboot stopcont poweroff)

command -v qemu-system-x86_64 >/dev/null || { echo "rig: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 3; }
if ! command -v socat >/dev/null; then
    log "installing socat (L1's QMP client)"
    apt-get install -y -qq socat >&2
fi

cache="$("$here/fetch.sh")"
work="$(mktemp -d "${TMPDIR:-/tmp}/altovirt-rig.XXXXXX")"
if [ "${RIG_KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; else log "work dir: $work"; fi

bb="$cache/busybox/bin/busybox"

# The boot-complete helper (this kernel has no /dev/port): a static binary.
command -v rustc >/dev/null || { echo "rig: rustc not found (needed for tests/rig/outb.rs)" >&2; exit 3; }
rustc -O -C target-feature=+crt-static -C strip=symbols \
    "$here/../../tests/rig/outb.rs" -o "$work/outb"

# The host's TSC frequency, given to L1 as tsc_early_khz= (TCG's guest TSC is
# the host's): L1's own calibration against the PIT fails on a busy host,
# and a microvm has no other reference timer, so Linux then marks the TSC
# unusable and hangs before printing anything (tests/rig/tsckhz.rs).
rustc -O "$here/../../tests/rig/tsckhz.rs" -o "$work/tsckhz"
tsc_khz="$("$work/tsckhz")" || tsc_khz=
l1_tsc=
if [ -n "$tsc_khz" ]; then l1_tsc="tsc_early_khz=$tsc_khz"; else log "could not measure the host TSC; L1 calibrates it itself"; fi

# Shared libraries of the dynamic executables copied into L1 (and L2);
# none for a static one (altovirt is static-pie: ldd says so and fails).
libs() {
    { ldd "$1" 2>/dev/null || true; } | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p'
}
# A plain .ko of module $1 from the cached kernel package, in $work/ko/.
ko() {
    local f
    if [ -f "$cache/modules/$1.ko" ]; then echo "$cache/modules/$1.ko"; return; fi
    mkdir -p "$work/ko"
    f="$(find "$cache/kernel/lib/modules" \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" \) | head -n1)"
    case "$f" in
    "") echo "rig: module $1 not found in the kernel package" >&2; return 1 ;;
    *.xz) xz -dc "$f" >"$work/ko/$1.ko" ;;
    *.zst) zstd -qdc "$f" >"$work/ko/$1.ko" ;;
    *) cp "$f" "$work/ko/$1.ko" ;;
    esac
    echo "$work/ko/$1.ko"
}

# L2 initramfs: busybox, /init, outb, and the virtio modules.
{
    echo "file /bin/busybox $bb 0755"
    echo "file /bin/outb $work/outb 0755"
    echo "file /init $here/l2-init.sh 0755"
    echo "nod /dev/console c 5 1 0600"
    for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
        [ -f "$cache/modules/$m.ko" ] && echo "file /lib/modules/$m.ko $cache/modules/$m.ko 0644"
    done
    # The ACPI power button's input device and its /dev/input node (the
    # power button scenarios).
    for m in button evdev; do
        echo "file /lib/modules/$m.ko $(ko $m) 0644"
    done
} >"$work/l2.manifest"
# The initramfs loader wants the modules in dependency order; the loop above
# lists them so.
python3 "$here/mkcpio.py" "$work/l2-initrd.cpio" <"$work/l2.manifest"

# altovirt without debug info: smaller initramfs, faster L1 boot.
if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$altovirt" "$work/altovirt"
else
    cp "$altovirt" "$work/altovirt"
fi

# An empty ext4 data disk (kernel (a)'s a_devices writes a file on it, L1
# reads it back with debugfs).
command -v mkfs.ext4 >/dev/null || apt-get install -y -qq e2fsprogs >&2
mkfs.ext4 -q -F -L rigdata "$work/data.ext4" 8M >&2

# Kernel (b) scenarios: the kernel only if already built (or RIG_BUILD_KERNEL_B=1),
# and a root file system image made with mkfs.ext4 -d (no mounting).
kernel_b=
with_b=0
for s in "${scenarios[@]}"; do case "$s" in b_*) with_b=1 ;; esac; done
if [ "$with_b" = 1 ]; then
    if [ "${RIG_BUILD_KERNEL_B:-0}" = 1 ]; then
        kernel_b="$("$here/build-kernel-b.sh")"
    else
        kernel_b="$("$here/build-kernel-b.sh" --if-cached || true)"
    fi
    [ -n "$kernel_b" ] || log "kernel (b) is not built: its scenarios will report skipped (scripts/rig/build-kernel-b.sh builds it)"
    root="$work/rootfs"
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,lib/modules}
    cp "$bb" "$work/outb" "$root/bin/"
    cp "$here/l2-init.sh" "$root/init"
    chmod 0755 "$root/init" "$root/bin/busybox" "$root/bin/outb"
    mkfs.ext4 -q -F -L rigroot -d "$root" "$work/rootfs.ext4" 32M >&2
fi

# QEMU goes into L1 only for the scenarios that compare with it.
with_qemu=0
for s in "${scenarios[@]}"; do case "$s" in qemu*) with_qemu=1 ;; esac; done

# Kata's command line (b_kata) and the snapshot (b_snapshot): vhost-vsock in L1 (modules from the same
# package), a helper that hands altovirt a tap descriptor, and an L2
# initramfs with socat (the vsock peer) and its libraries.
with_kata=0
for s in "${scenarios[@]}"; do case "$s" in b_kata | b_snapshot) with_kata=1 ;; esac; done
if [ "$with_kata" = 1 ] && [ -n "$kernel_b" ]; then
    rustc -O -C target-feature=+crt-static -C strip=symbols \
        "$here/../../tests/rig/tapfd.rs" -o "$work/tapfd"
    {
        cat "$work/l2.manifest"
        echo "file /bin/socat $(command -v socat) 0755"
        libs "$(command -v socat)" | sort -u | while read -r lib; do
            echo "file $lib $(readlink -f "$lib") 0755"
        done
    } >"$work/l2-kata.manifest"
    python3 "$here/mkcpio.py" "$work/l2-kata.cpio" <"$work/l2-kata.manifest"
else
    with_kata=0
fi
{
    echo "file /bin/busybox $bb 0755"
    echo "file /init $here/l1-init.sh 0755"
    echo "nod /dev/console c 5 1 0600"
    echo "file /bin/altovirt $work/altovirt 0755"
    echo "file /bin/socat $(command -v socat) 0755"
    for m in irqbypass kvm kvm-amd tun; do
        echo "file /rig/modules/$m.ko $cache/modules/$m.ko 0644"
    done
    echo "file /rig/l2/vmlinuz $cache/vmlinuz 0644"
    echo "file /rig/l2/initrd.cpio $work/l2-initrd.cpio 0644"
    echo "file /rig/l2/data.ext4 $work/data.ext4 0644"
    echo "file /bin/debugfs $(command -v debugfs) 0755"
    if [ "$with_kata" = 1 ]; then
        echo "file /bin/tapfd $work/tapfd 0755"
        echo "file /rig/l2/initrd-kata.cpio $work/l2-kata.cpio 0644"
        for m in vhost_iotlb vhost vsock vmw_vsock_virtio_transport_common vhost_vsock; do
            echo "file /rig/modules/$m.ko $(ko $m) 0644"
        done
    fi
    if [ -n "$kernel_b" ]; then
        echo "file /rig/l2/bzImage-b $kernel_b 0644"
        echo "file /rig/l2/rootfs.ext4 $work/rootfs.ext4 0644"
    fi
    if [ "$with_qemu" = 1 ]; then
        echo "file /bin/qemu-system-x86_64 $(command -v qemu-system-x86_64) 0755"
        echo "file /rig/qemu/bios-microvm.bin $(readlink -f /usr/share/qemu/bios-microvm.bin) 0644"
    fi
    {
        libs "$altovirt"
        libs "$(command -v socat)"
        libs "$(command -v debugfs)"
        if [ "$with_qemu" = 1 ]; then libs "$(command -v qemu-system-x86_64)"; fi
    } | sort -u | while read -r lib; do
        # Keep the path ldd reports (the loader's path is baked into binaries).
        echo "file $lib $(readlink -f "$lib") 0755"
    done
} >"$work/l1.manifest"
python3 "$here/mkcpio.py" "$work/l1-initrd.cpio" <"$work/l1.manifest"

IFS=,
sc="${scenarios[*]}"
unset IFS
log "booting L1 (scenarios: $sc)"
# L1's console is the only output on stdout. Two watchdogs:
# - should L1 print nothing at all (it used to hang before its kernel's
#   first message when its TSC calibration failed on a busy host; fixed by
#   tsc_early_khz= above), after ${RIG_FIRST_OUTPUT_S:-180} s L1's registers
#   go to stderr (QEMU's monitor over QMP) and L1 is booted again, up to
#   ${RIG_L1_ATTEMPTS:-5} boots in all.
# - L1 reboots right after RIG-DONE (QEMU -no-reboot then exits); should it
#   hang on the way out, QEMU is ended 10 s after RIG-DONE.
fifo="$work/console"
mkfifo "$fifo"
l1qmp="$work/l1.qmp"
boot_l1() {
    rm -f "$l1qmp"
    timeout --foreground -k 5 "${RIG_TIMEOUT:-600}" qemu-system-x86_64 \
        -M microvm -accel tcg -cpu qemu64,+svm,+npt -m 2560 \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -qmp "unix:$l1qmp,server,nowait" \
        -kernel "$cache/vmlinuz" -initrd "$work/l1-initrd.cpio" \
        -append "console=ttyS0 quiet panic=-1 $l1_tsc rig.scenarios=$sc" </dev/null >"$fifo" &
    qpid=$!
    exec 3<"$fifo"
    done_seen=0
    first=1
    while :; do
        if [ "$first" = 1 ]; then
            if ! IFS= read -r -t "${RIG_FIRST_OUTPUT_S:-180}" line <&3; then
                log "L1 printed nothing in ${RIG_FIRST_OUTPUT_S:-180} s; its state:"
                printf '%s\n' '{"execute":"qmp_capabilities"}' \
                    '{"execute":"human-monitor-command","arguments":{"command-line":"info registers"}}' |
                    socat -t 2 - "UNIX-CONNECT:$l1qmp" 2>&1 | sed 's/\\r\\n/\n/g' | head -n 40 >&2 || true
                kill "$qpid" 2>/dev/null || true
                wait "$qpid" 2>/dev/null || true
                exec 3<&-
                return 2
            fi
            first=0
        else
            IFS= read -r line <&3 || break
        fi
        printf '%s\n' "$line"
        case "$line" in RIG-DONE*) done_seen=1; break ;; esac
    done
    if [ "$done_seen" = 1 ]; then
        cat <&3 &
        for _ in $(seq 100); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$qpid" 2>/dev/null; then
            log "L1 did not end 10 s after RIG-DONE: stopping QEMU"
            kill "$qpid" 2>/dev/null || true
        fi
    fi
    st=0
    wait "$qpid" || st=$?
    exec 3<&-
    [ "$done_seen" = 1 ] && return 0
    return "$st"
}
st=0
boot_l1 || st=$?
attempt=1
while [ "$st" = 2 ] && [ "$attempt" -lt "${RIG_L1_ATTEMPTS:-5}" ]; do
    attempt=$((attempt + 1))
    log "booting L1 again (attempt $attempt of ${RIG_L1_ATTEMPTS:-5})"
    st=0
    boot_l1 || st=$?
done
exit "$st"
