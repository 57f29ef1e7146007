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
    altovirt -kernel $L2K -initrd $L2I -m 256 -smp 2 \
        -append "$BASEARGS $QUIET rig.mode=$mode rig.scenario=$sc" \
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
QUIET=quiet
sc_boot() { # boots, prints what the guest sees, reboots
    QUIET= start boot report
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
        -append "${BASEARGS% acpi=off} $QUIET rig.mode=report rig.scenario=$sc" </dev/null >/tmp/$sc.stdout 2>/tmp/$sc.stderr &
    VMM=$!
    finish $sc 120
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
