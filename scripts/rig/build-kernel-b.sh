#!/usr/bin/env bash
# Builds kernel (b), the minimal microVM guest kernel, from Debian's
# linux-source-<major.minor> package and scripts/rig/kernel-b.config, into
# the rig cache; prints the bzImage path. Cached by source version and by the
# fragment's hash: a second run only prints the path.
#
#   scripts/rig/build-kernel-b.sh
#   JOBS=2 RIG_CACHE=/dir scripts/rig/build-kernel-b.sh
#   scripts/rig/build-kernel-b.sh --if-cached   # path if built, else exit 1
set -euo pipefail
if_cached=0
[ "${1:-}" = --if-cached ] && if_cached=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "rig-kernel-b: $*" >&2; }
base="${RIG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/altovirt-rig}"

# The source package that matches the cloud kernel's upstream series.
src_pkg() { apt-cache depends linux-source 2>/dev/null | sed -n 's/^ *Depends: \(linux-source-[0-9.]*\)$/\1/p' | head -n1; }
pkg="$(src_pkg || true)"
if [ -z "$pkg" ]; then
    apt-get update -qq >&2
    pkg="$(src_pkg)"
fi
ver="$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')"
hash="$(sha256sum "$here/kernel-b.config" | cut -c1-12)"
dir="$base/kernel-b/$pkg-$ver-$hash"
if [ -f "$dir/bzImage" ]; then
    log "cached: $dir/bzImage"
    echo "$dir/bzImage"
    exit 0
fi
[ "$if_cached" = 0 ] || { log "not built yet: $dir/bzImage"; exit 1; }
for tool in make gcc flex bison bc; do
    command -v $tool >/dev/null || need="${need:-} $tool"
done
[ -f /usr/include/gelf.h ] || need="${need:-} libelf-dev"
command -v xz >/dev/null || need="${need:-} xz-utils"   # the source tarball
if [ -n "${need:-}" ]; then
    log "installing build tools:$need"
    apt-get install -y -qq make gcc flex bison bc libc6-dev libelf-dev xz-utils >&2
fi

# The source .deb is shared by every fragment version.
debs="$base/kernel-b/debs"
mkdir -p "$debs" "$dir"
(cd "$debs" && [ -n "$(ls "${pkg}_${ver//:/%3a}"_*.deb 2>/dev/null)" ] || apt-get download "$pkg=$ver" >&2)
start=$(date +%s)
rm -rf "$dir/pkg" "$dir/src"
dpkg-deb -x "$debs/${pkg}_${ver//:/%3a}"_*.deb "$dir/pkg"
mkdir -p "$dir/src"
tar -C "$dir/src" --strip-components=1 -xf "$dir"/pkg/usr/src/"$pkg".tar.*
t_extract=$(($(date +%s) - start))
cd "$dir/src"
KCONFIG_ALLCONFIG="$here/kernel-b.config" make -s allnoconfig >&2
# Every line of the fragment must have survived Kconfig's dependencies.
missing=0
while read -r line; do
    case "$line" in "#"* | "") continue ;; esac
    key="${line%%=*}"
    val="${line#*=}"
    if [ "$val" = n ]; then
        grep -q "^$key=" .config && { log "$key is set but the fragment says n"; missing=1; }
    else
        grep -qx "$line" .config || { log "$line did not survive Kconfig"; missing=1; }
    fi
done <"$here/kernel-b.config"
[ "$missing" = 0 ] || exit 1
make -s -j"${JOBS:-$(nproc)}" bzImage >&2
cp arch/x86/boot/bzImage "$dir/bzImage"
cp .config "$dir/config"
t_total=$(($(date +%s) - start))
echo "extract ${t_extract}s, total ${t_total}s with -j${JOBS:-$(nproc)}" >"$dir/build-time"
log "built in ${t_total}s (extract ${t_extract}s): $dir/bzImage"
rm -rf "$dir/src" "$dir/pkg"
echo "$dir/bzImage"
