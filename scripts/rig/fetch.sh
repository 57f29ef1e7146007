#!/usr/bin/env bash
# Fetches the rig's guest assets from Debian's package registry into a cache
# outside the repository, keyed by the cloud kernel's ABI version, and prints
# the cache directory on stdout (everything else goes to stderr).
#
#   scripts/rig/fetch.sh            # resolve, download what is missing
#   RIG_CACHE=/some/dir scripts/rig/fetch.sh
#
# Layout of the cache directory:
#   debs/                        the downloaded .deb files
#   kernel/                      linux-image-<ver>-cloud-amd64-unsigned, extracted
#   busybox/                     busybox-static, extracted
#   vmlinuz                      -> kernel/boot/vmlinuz-<ver>
#   modules/                     the .ko files the rig uses (decompressed)
#   .complete                    written last; its presence means "cached"
set -euo pipefail

log() { echo "rig-fetch: $*" >&2; }

base="${RIG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/altovirt-rig}"

need_update=0
ver=""
resolve() {
    # The metapackage depends on linux-image-<ver>-cloud-amd64.
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -n1
}
ver="$(resolve || true)"
if [ -z "$ver" ]; then
    need_update=1
fi
if [ "$need_update" = 1 ]; then
    log "apt-get update"
    apt-get update -qq >&2
    ver="$(resolve)"
fi
[ -n "$ver" ] || { log "cannot resolve the linux-image-cloud-amd64 version"; exit 1; }

dir="$base/$ver"
if [ -f "$dir/.complete" ]; then
    log "cached: $dir"
    echo "$dir"
    exit 0
fi

log "kernel ABI $ver -> $dir"
mkdir -p "$dir/debs"
pkgs=("linux-image-$ver-unsigned" busybox-static)
(
    cd "$dir/debs"
    if ! apt-get download "${pkgs[@]}" >&2; then
        log "apt-get download failed; retrying after apt-get update"
        apt-get update -qq >&2
        apt-get download "${pkgs[@]}" >&2
    fi
)
rm -rf "$dir/kernel" "$dir/busybox" "$dir/modules"
dpkg-deb -x "$dir"/debs/linux-image-"$ver"-unsigned_*.deb "$dir/kernel"
dpkg-deb -x "$dir"/debs/busybox-static_*.deb "$dir/busybox"
ln -sf "kernel/boot/vmlinuz-$ver" "$dir/vmlinuz"

# Modules: L1 needs irqbypass, kvm, kvm-amd; L2's initramfs needs the virtio
# ones. Debian may ship them compressed (.ko.xz); store plain .ko files.
mkdir -p "$dir/modules"
moddir="$dir/kernel/lib/modules/$ver/kernel"
for m in irqbypass kvm kvm-amd virtio virtio_ring virtio_mmio virtio_blk \
    virtio_net net_failover failover virtio-rng virtio_console vmw_vsock_virtio_transport \
    vmw_vsock_virtio_transport_common vsock tun; do
    f="$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)"
    if [ -z "$f" ]; then
        log "note: module $m not found as a file (built in?)"
        continue
    fi
    case "$f" in
    *.xz) xz -dc "$f" >"$dir/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$dir/modules/$m.ko" ;;
    *) cp "$f" "$dir/modules/$m.ko" ;;
    esac
done
echo "$ver" >"$dir/.complete"
log "done: $dir"
echo "$dir"
