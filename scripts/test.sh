#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need
# if it is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v ld >/dev/null 2>&1 || need_apt+=(binutils)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)   # network namespaces for the virtio-net tests
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)   # the shim drives real QEMU too; the rig's L1; image locks
command -v qemu-io >/dev/null 2>&1 || need_apt+=(qemu-utils)   # tests/host_inputs.rs: qemu-io honours altovirt's image locks
command -v socat >/dev/null 2>&1 || need_apt+=(socat)   # the rig's QMP client inside L1
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)   # the rig's ext4 root disk (mkfs.ext4 -d, debugfs)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# virtiofsd, the virtio-fs back-end Kata runs, from crates.io (tests/virtio_fs.rs;
# about 1.5 minutes to build the first time, then it stays in ~/.cargo/bin).
if ! command -v virtiofsd >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd" ]; then
    echo "installing: virtiofsd (crates.io) and the libraries it links"
    apt-get update -qq && apt-get install -y -qq libseccomp-dev libcap-ng-dev
    # From / so that this repository's .cargo/config.toml (static linking)
    # does not apply to virtiofsd.
    (cd / && cargo install --locked --quiet virtiofsd)
fi

# QEMU's own QMP client library drives altovirt in tests/qmp.rs.
if ! python3 -c "import qemu.qmp" >/dev/null 2>&1; then
    echo "installing: qemu.qmp (PyPI)"
    python3 -m pip install -q qemu.qmp
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "warning: /dev/kvm is not usable; KVM tests will fail under CI=true and skip (with a message) otherwise" >&2
fi

cargo fmt --all -- --check

# The rig's kernel (b), a minimal microVM kernel built from Debian's
# linux-source package (about 3 minutes the first time on 2 cores; cached
# under ~/.cache/altovirt-rig afterwards). See docs/rig.md.
./scripts/rig/build-kernel-b.sh >/dev/null

# Every test of every crate, reporting all failures rather than the first.
cargo test --workspace --no-fail-fast "$@"
