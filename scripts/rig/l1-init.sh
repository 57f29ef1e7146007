#!/bin/busybox sh
# /init of L1 (QEMU TCG with nested SVM). Loads KVM, then runs altovirt once
# per scenario named in rig.scenarios=a,b,c on the kernel command line, and
# reports on the console with lines the host parses:
#   RIG <scenario> <key> <value...>     results
#   L2 <scenario> <line>                the L2 serial console, verbatim
#   RIG-DONE                            all scenarios ran
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

say() { echo "RIG $*"; }
# Centiseconds since L1 booted.
now_cs() { sed 's/^\([0-9]*\)\.\([0-9][0-9]\).*/\1\2/' /proc/uptime; }

for m in irqbypass kvm kvm-amd; do
    insmod /rig/modules/$m.ko || say l1 insmod-failed $m
done
if [ -c /dev/kvm ]; then say l1 kvm ok; else say l1 kvm missing; fi
say l1 cpuflags $(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -n1)
dmesg | grep -i -E 'apic|acpi' | head -n 20 | sed 's/^/RIG l1 dmesg /' 

L2K=/rig/l2/vmlinuz
L2I=/rig/l2/initrd.cpio
BASEARGS="console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 acpi=off"

# qmp SOCK CMD...: sends qmp_capabilities and each CMD, prints the replies.
qmp() {
    sock=$1
    shift
    {
        echo '{"execute":"qmp_capabilities"}'
        for c in "$@"; do echo "$c"; done
        sleep 0.5
    } | socat -t 1 - UNIX-CONNECT:"$sock" 2>&1
}
wait_for() { # FILE PATTERN TIMEOUT_S
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt $(($3 * 10)) ] && return 1
        sleep 0.1
    done
}
# Event listener: connects to the QMP socket and records everything it reads.
listen() { # SOCK OUT
    wait_for_sock "$1" || return 1
    { echo '{"execute":"qmp_capabilities"}'; sleep 600; } |
        socat -t 1 - UNIX-CONNECT:"$1" >"$2" 2>&1 &
    LISTENER=$!
}
wait_for_sock() { i=0; while [ ! -S "$1" ]; do i=$((i+1)); [ $i -gt 100 ] && return 1; sleep 0.05; done; }
dump() { # SCENARIO: the L2 console and the VMM log
    sed "s/^/L2 $1 /" /tmp/$1.serial 2>/dev/null | tr -d '\r'
    sed "s/^/LOG $1 /" /tmp/$1.log 2>/dev/null
}
boot_time_us() { sed -n 's/.*boot complete after \([0-9]*\) us.*/\1/p' /tmp/$1.log | head -n1; }

# start SCENARIO MODE EXTRA-ALTOVIRT-ARGS...: runs altovirt in the background.
start() {
    sc=$1
    mode=$2
    shift 2
    rm -f /tmp/$sc.*
    T0=$(now_cs)
    # Per-scenario overrides: SC_KERNEL, SC_INITRD (none: "-"), SC_ARGS, SC_QUIET.
    k=${SC_KERNEL:-$L2K}
    i=${SC_INITRD:-$L2I}
    [ "$i" = - ] && i=
    q=quiet
    [ "${SC_QUIET:-1}" = 0 ] && q=
    altovirt -kernel $k ${i:+-initrd $i} -m 256 -smp 2 \
        -append "$BASEARGS $q ${SC_ARGS:-} rig.mode=$mode rig.scenario=$sc" \
        -serial file:/tmp/$sc.serial -qmp unix:/tmp/$sc.qmp,server,nowait \
        -D /tmp/$sc.log "$@" </dev/null >/tmp/$sc.stdout 2>/tmp/$sc.stderr &
    VMM=$!
}
# finish SCENARIO TIMEOUT_S: waits for altovirt, reports exit status and time.
finish() {
    sc=$1
    i=0
    while kill -0 $VMM 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt $(($2 * 10)) ]; then
            say $sc timeout $2
            kill -9 $VMM
            break
        fi
        sleep 0.1
    done
    wait $VMM
    st=$?
    T1=$(now_cs)
    say $sc exit $st
    say $sc wall-ms $(((T1 - T0) * 10))
    bt=$(boot_time_us $sc)
    [ -n "$bt" ] && say $sc boot-complete-us $bt
    if [ -n "$LISTENER" ]; then
        sleep 0.3
        kill $LISTENER 2>/dev/null
        tr -d '\r' </tmp/$sc.events | grep -o '"event": *"[A-Z_]*"[^}]*}' |
            sed "s/^/RIG $sc event /"
        LISTENER=
    fi
    sed "s/^/RIG $sc stderr /" /tmp/$sc.stderr
    dump $sc
}

# Every scenario but "boot" runs the guest with "quiet": boot keeps the whole
# kernel log for diagnosis, the others measure a realistic boot.
sc_boot() { # boots, prints what the guest sees, reboots
    SC_QUIET=0
    start boot report
    SC_QUIET=
    listen /tmp/boot.qmp /tmp/boot.events
    finish boot 120
}
sc_reboot() {
    start reboot reboot
    listen /tmp/reboot.qmp /tmp/reboot.events
    finish reboot 120
}
sc_poweroff() {
    start poweroff poweroff
    listen /tmp/poweroff.qmp /tmp/poweroff.events
    finish poweroff 60
}
sc_stopcont() {
    start stopcont heartbeat
    listen /tmp/stopcont.qmp /tmp/stopcont.events
    if wait_for /tmp/stopcont.serial "L2-TICK 3 " 120; then
        qmp /tmp/stopcont.qmp '{"execute":"stop"}' | sed 's/^/RIG stopcont qmp-stop /'
        n1=$(grep -c L2-TICK /tmp/stopcont.serial)
        sleep 2
        n2=$(grep -c L2-TICK /tmp/stopcont.serial)
        say stopcont ticks-while-stopped $((n2 - n1))
        qmp /tmp/stopcont.qmp '{"execute":"query-status"}' '{"execute":"cont"}' |
            sed 's/^/RIG stopcont qmp-cont /'
        sleep 2
        n3=$(grep -c L2-TICK /tmp/stopcont.serial)
        say stopcont ticks-after-cont $((n3 - n2))
    else
        say stopcont no-heartbeat
    fi
    qmp /tmp/stopcont.qmp '{"execute":"quit"}' >/dev/null
    finish stopcont 30
}

# The same L2 boot under QEMU microvm, for comparison. QEMU's microvm
# firmware leaves LINT0 masked, so with acpi=off this kernel (no MP-table
# support, hence no APIC) gets no interrupts and init's console writes hang;
# QEMU therefore boots it with ACPI (its default), without acpi=off.
sc_qemu_boot() {
    sc=qemu_boot
    rm -f /tmp/$sc.*
    T0=$(now_cs)
    qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 2 \
        -nodefaults -no-user-config -nographic -no-reboot -bios /rig/qemu/bios-microvm.bin \
        -kernel $L2K -initrd $L2I -serial file:/tmp/$sc.serial \
        -append "${BASEARGS% acpi=off} quiet rig.mode=report rig.scenario=$sc" </dev/null >/tmp/$sc.stdout 2>/tmp/$sc.stderr &
    VMM=$!
    finish $sc 120
}

# Kernel (b) (scripts/rig/build-kernel-b.sh): virtio-mmio devices from the
# command line, so disk, net and rng work without ACPI; MP tables give SMP.
L2B=/rig/l2/bzImage-b
sc_b_devices() { # -smp 2, virtio-rng and virtio-net over a tap to L1
    sc=b_devices
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    insmod /rig/modules/tun.ko 2>/dev/null
    cat >/tmp/cfg-$sc.json <<JSON
{"net": [{"iface_id": "net0", "host_dev_name": "rigtap0"}],
 "rng": {"random_file": "/dev/urandom"}}
JSON
    SC_KERNEL=$L2B SC_QUIET=${RIG_B_QUIET:-1}
    start $sc devices -config /tmp/cfg-$sc.json
    SC_KERNEL=
    listen /tmp/$sc.qmp /tmp/$sc.events
    # altovirt creates the tap; L1 addresses it.
    i=0
    while [ ! -e /sys/class/net/rigtap0 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    ip addr add 10.0.2.1/24 dev rigtap0 && ip link set rigtap0 up && say $sc tap up
    finish $sc 40
}
sc_b_rootdisk() { # root file system on virtio-blk; the file L2 writes is read back after exit
    sc=b_rootdisk
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    cp /rig/l2/rootfs.ext4 /tmp/img-$sc.ext4
    cat >/tmp/cfg-$sc.json <<JSON
{"drive": [{"drive_id": "root", "path_on_host": "/tmp/img-$sc.ext4"}]}
JSON
    SC_KERNEL=$L2B SC_INITRD=- SC_QUIET=${RIG_B_QUIET:-1} SC_ARGS="root=/dev/vda rw rootfstype=ext4 init=/init"
    start $sc disk -config /tmp/cfg-$sc.json -machine microvm,blk-slots=0
    SC_KERNEL= SC_INITRD= SC_ARGS= SC_QUIET=
    listen /tmp/$sc.qmp /tmp/$sc.events
    finish $sc 40
    say $sc disk-file "$(debugfs -R 'cat /hello.txt' /tmp/img-$sc.ext4 2>/dev/null)"
}

scenarios=
for w in $(cat /proc/cmdline); do
    case "$w" in rig.scenarios=*) scenarios="${w#rig.scenarios=}" ;; esac
done
for s in $(echo "$scenarios" | tr ',' ' '); do
    say $s begin
    if type sc_$s >/dev/null 2>&1; then sc_$s; else say $s unknown-scenario; fi
    say $s end
done
echo "RIG-DONE"
sync
reboot -f
