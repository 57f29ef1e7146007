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
# Kernel (a) boots with ACPI (its only way to find CPUs and virtio devices);
# kernel (b) has no ACPI and finds its devices in the virtio_mmio.device=
# tokens altovirt always appends; only Kata's line (b_kata) says acpi=off.
BASEARGS="console=ttyS0 reboot=k panic=1 8250.nr_uarts=1"
insmod /rig/modules/tun.ko 2>/dev/null

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
# tap_up SCENARIO TAP ADDR: waits for altovirt to create TAP, addresses it.
tap_up() {
    i=0
    while [ ! -e /sys/class/net/$2 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    ip addr add $3/24 dev $2 && ip link set $2 up && say $1 tap up
}
wait_count() { # FILE PATTERN N TIMEOUT_S: waits for N lines matching PATTERN
    i=0
    while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do
        i=$((i + 1))
        [ $i -gt $(($4 * 10)) ] && return 1
        sleep 0.1
    done
}
wait_for_sock() { i=0; while [ ! -S "$1" ]; do i=$((i+1)); [ $i -gt 100 ] && return 1; sleep 0.05; done; }
dump() { # SCENARIO: the L2 console and the VMM log
    sed "s/^/L2 $1 /" /tmp/$1.serial 2>/dev/null | tr -d '\r'
    sed "s/^/LOG $1 /" /tmp/$1.log 2>/dev/null
}
boot_time_us() { cat /tmp/$1.log /tmp/$1.stderr 2>/dev/null | sed -n 's/.*boot complete after \([0-9]*\) us.*/\1/p' | head -n1; }

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
sc_bench_boot() { # reboot, without hotplug slots (QEMU's microvm has none), for bench.sh
    start bench_boot reboot -machine microvm,blk-slots=0,net-slots=0
    finish bench_boot 120
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

# The same L2 boot under QEMU microvm, for comparison (both with ACPI).
sc_qemu_boot() {
    sc=qemu_boot
    rm -f /tmp/$sc.*
    T0=$(now_cs)
    qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 2 \
        -nodefaults -no-user-config -nographic -no-reboot -bios /rig/qemu/bios-microvm.bin \
        -kernel $L2K -initrd $L2I -serial file:/tmp/$sc.serial \
        -append "$BASEARGS quiet rig.mode=report rig.scenario=$sc" </dev/null >/tmp/$sc.stdout 2>/tmp/$sc.stderr &
    VMM=$!
    finish $sc 120
}

# Kernel (b) (scripts/rig/build-kernel-b.sh): virtio-mmio devices from the
# command line, so disk, net and rng work without ACPI; MP tables give SMP.
L2B=/rig/l2/bzImage-b
# StratoVirt's users boot such kernels with a plain command line, no
# acpi=off: altovirt puts every window on it whatever ACPI says.
sc_b_devices() { # -smp 2, a data disk, virtio-rng and virtio-net over a tap to L1, default slots
    sc=b_devices
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    cp /rig/l2/data.ext4 /tmp/img-$sc.ext4
    cat >/tmp/cfg-$sc.json <<JSON
{"drive": [{"drive_id": "data", "path_on_host": "/tmp/img-$sc.ext4"}],
 "net": [{"iface_id": "net0", "host_dev_name": "rigtap0"}],
 "rng": {"random_file": "/dev/urandom"}}
JSON
    SC_KERNEL=$L2B SC_QUIET=${RIG_B_QUIET:-1} SC_ARGS="rig.data=/dev/vda"
    start $sc devices -config /tmp/cfg-$sc.json
    SC_KERNEL= SC_ARGS=
    listen /tmp/$sc.qmp /tmp/$sc.events
    tap_up $sc rigtap0 10.0.2.1
    finish $sc 40
    say $sc disk-file "$(debugfs -R 'cat /hello.txt' /tmp/img-$sc.ext4 2>/dev/null)"
}
sc_b_rootdisk() { # root on virtio-blk (block slot 0 = vda); the file L2 writes is read back after exit
    sc=b_rootdisk
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    cp /rig/l2/rootfs.ext4 /tmp/img-$sc.ext4
    cat >/tmp/cfg-$sc.json <<JSON
{"drive": [{"drive_id": "root", "path_on_host": "/tmp/img-$sc.ext4"}]}
JSON
    SC_KERNEL=$L2B SC_INITRD=- SC_QUIET=${RIG_B_QUIET:-1} SC_ARGS="root=/dev/vda rw rootfstype=ext4 init=/init"
    start $sc disk -config /tmp/cfg-$sc.json
    SC_KERNEL= SC_INITRD= SC_ARGS= SC_QUIET=
    listen /tmp/$sc.qmp /tmp/$sc.events
    finish $sc 40
    say $sc disk-file "$(debugfs -R 'cat /hello.txt' /tmp/img-$sc.ext4 2>/dev/null)"
}

# The memory balloon with kernel (b) (CONFIG_VIRTIO_BALLOON=y). L2
# (rig.mode=balloon) fills its free memory once (a tmpfs file, removed), so
# whatever pages Linux's driver puts in the balloon are backed in L1, prints
# its MemTotal, then prints MemTotal again whenever it changes.
# VmRSS of process $1 in KiB ("0" once it is gone: the callers do arithmetic
# with it, and an error there would end L1's init).
rss_kb() {
    r=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/$1/status 2>/dev/null)
    echo "${r:-0}"
}
BALLOON_MIB=64
sc_b_balloon() { # QMP balloon: inflate by 64 MiB (RSS and MemTotal drop), deflate
    sc=b_balloon
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    SC_KERNEL=$L2B SC_QUIET=${RIG_B_QUIET:-1}
    start $sc balloon -device virtio-balloon-device,id=balloon0
    SC_KERNEL= SC_QUIET=
    q=/tmp/$sc.qmp
    listen $q /tmp/$sc.events
    if wait_for /tmp/$sc.serial L2-BALLOON-READY 120; then
        ram=$((256 << 20))
        small=$(((256 - BALLOON_MIB) << 20))
        say $sc rss-before-kb $(rss_kb $VMM)
        qmp $q '{"execute":"query-balloon"}' '{"execute":"balloon","arguments":{"value":'$small'}}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-inflate /"
        # Done when altovirt reports the guest's new size (BALLOON_CHANGE).
        if wait_for /tmp/$sc.events '"actual": *'$small 120; then
            say $sc rss-inflated-kb $(rss_kb $VMM)
            qmp $q '{"execute":"query-balloon"}' | tr -d '\r' | sed "s/^/RIG $sc qmp-inflated /"
            m0=$(tr -d '\r' </tmp/$sc.serial | sed -n 's/^L2-BALLOON-MEMTOTAL-KB //p' | head -n1)
            wait_for /tmp/$sc.serial "L2-BALLOON-MEMTOTAL-KB $((m0 - BALLOON_MIB * 1024))[^0-9]*$" 60 ||
                say $sc no-memtotal-inflated
            qmp $q '{"execute":"balloon","arguments":{"value":'$ram'}}' |
                tr -d '\r' | sed "s/^/RIG $sc qmp-deflate /"
            wait_for /tmp/$sc.events '"actual": *'$ram 120 || say $sc no-deflate-event
            wait_count /tmp/$sc.serial "L2-BALLOON-MEMTOTAL-KB $m0[^0-9]*$" 2 60 || say $sc no-memtotal-deflated
            qmp $q '{"execute":"query-balloon"}' | tr -d '\r' | sed "s/^/RIG $sc qmp-deflated /"
        else
            say $sc no-inflate-event
        fi
    else
        say $sc not-ready
    fi
    qmp $q '{"execute":"quit"}' >/dev/null
    finish $sc 30
}
# Free page reporting: L2 fills and frees its memory; Linux reports the
# freed blocks (after its 2 s delay) and altovirt's resident memory drops
# without any QMP command.
sc_b_balloon_report() {
    sc=b_balloon_report
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    SC_KERNEL=$L2B SC_QUIET=${RIG_B_QUIET:-1}
    start $sc balloon -device virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on
    SC_KERNEL= SC_QUIET=
    listen /tmp/$sc.qmp /tmp/$sc.events
    if wait_for /tmp/$sc.serial L2-BALLOON-FILLED 120; then
        peak=$(rss_kb $VMM)
        say $sc rss-filled-kb $peak
        i=0
        while kill -0 $VMM 2>/dev/null && [ $((peak - $(rss_kb $VMM))) -lt $((BALLOON_MIB * 1024)) ] &&
            [ $i -lt 600 ]; do
            i=$((i + 1))
            sleep 0.1
        done
        say $sc rss-reported-kb $(rss_kb $VMM)
    else
        say $sc not-filled
    fi
    qmp /tmp/$sc.qmp '{"execute":"quit"}' >/dev/null
    finish $sc 30
}

# Snapshot and restore with kernel (b): L2 (rig.mode=snapshot) writes a
# file on its data disk, pings L1 over a tap and listens on hybrid vsock;
# L1 pauses it, `migrate`s it to a directory and quits it, then restores it
# with the same arguments plus -incoming in a new altovirt. L1's vsock
# connection then makes L2 re-read the file from the disk, write another
# (read back with debugfs after exit) and ping L1 again.
snap_vmm() { # SERIAL QMP LOG EXTRA...: the scenario's altovirt, same devices each time
    ser=$1 q=$2 log=$3
    shift 3
    altovirt -kernel $L2B -initrd /rig/l2/initrd-kata.cpio -m 256 -smp 2 \
        -append "$BASEARGS quiet rig.mode=snapshot rig.scenario=b_snapshot" \
        -serial file:$ser -qmp unix:$q,server,nowait -D $log \
        -config /tmp/cfg-b_snapshot.json \
        -device vsock-device,id=vsock0,guest-cid=3,uds-path=/tmp/b_snapshot.vsock \
        "$@" </dev/null >/dev/null 2>>/tmp/b_snapshot.stderr &
    VMM=$!
}
snap_tap_up() { # the host side keeps its MAC across both VMs, as a real host's would
    i=0
    while [ ! -e /sys/class/net/rigtap5 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    ip link set rigtap5 address 02:00:00:00:05:01 && ip addr add 10.0.5.1/24 dev rigtap5 &&
        ip link set rigtap5 up && say b_snapshot tap up
}
sc_b_snapshot() {
    sc=b_snapshot
    if [ ! -f $L2B ]; then say $sc skipped no-kernel-b; return; fi
    rm -rf /tmp/$sc.* /tmp/$sc-snap
    cp /rig/l2/data.ext4 /tmp/img-$sc.ext4
    cat >/tmp/cfg-$sc.json <<JSON
{"drive": [{"drive_id": "data", "path_on_host": "/tmp/img-$sc.ext4"}],
 "net": [{"iface_id": "net0", "host_dev_name": "rigtap5"}]}
JSON
    T0=$(now_cs)
    ALTOVIRT_LOG=debug snap_vmm /tmp/$sc.serial /tmp/$sc.qmp /tmp/$sc.log
    snap_tap_up
    if wait_for /tmp/$sc.serial L2-SNAP-READY 120; then
        say $sc cold-boot-complete-us $(boot_time_us $sc)
        say $sc cold-ready-ms $((($(now_cs) - T0) * 10))
        # The same vsock request before the snapshot: hybrid vsock with
        # Linux's driver works at all.
        { echo "CONNECT 5000"; echo "before-$sc"; sleep 8; } |
            socat -t 10 - UNIX-CONNECT:/tmp/$sc.vsock 2>&1 | tr -d '\r' >/tmp/$sc.vsock-pre &
        rp=$!
        wait_for /tmp/$sc.vsock-pre L2-SNAP-UPTIME 60 || say $sc no-vsock-answer-before
        kill $rp 2>/dev/null
        sed "s/^/RIG $sc vsock-pre /" /tmp/$sc.vsock-pre
        # Writing guest RAM takes seconds here (L1's user space runs under
        # TCG): the client stays until query-migrate has answered.
        {
            echo '{"execute":"qmp_capabilities"}'
            echo '{"execute":"stop"}'
            echo '{"execute":"migrate","arguments":{"uri":"file:/tmp/'$sc'-snap"}}'
            echo '{"execute":"query-migrate"}'
            i=0
            while ! grep -q '"status"' /tmp/$sc.qmp-save 2>/dev/null && [ $i -lt 1200 ]; do
                i=$((i + 1))
                sleep 0.1
            done
            echo '{"execute":"quit"}'
            sleep 1
        } | socat -t 2 - UNIX-CONNECT:/tmp/$sc.qmp >/tmp/$sc.qmp-save 2>&1
        tr -d '\r' </tmp/$sc.qmp-save | sed "s/^/RIG $sc qmp-save /"
        i=0
        while kill -0 $VMM 2>/dev/null && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
        kill -9 $VMM 2>/dev/null
        wait $VMM
        say $sc save-exit $?
        say $sc snap-files "$(ls /tmp/$sc-snap | tr '\n' ' ')"
        say $sc snap-memory-kb "$(du -k /tmp/$sc-snap/memory | cut -f1)"
        rm -f /tmp/$sc.vsock
        T1=$(now_cs)
        ALTOVIRT_LOG=debug snap_vmm /tmp/$sc-r.serial /tmp/$sc-r.qmp /tmp/$sc-r.log -incoming file:/tmp/$sc-snap
        snap_tap_up
        wait_for_sock /tmp/$sc.vsock
        word="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        { echo "CONNECT 5000"; echo "check-$word"; sleep 10; } |
            socat -t 12 - UNIX-CONNECT:/tmp/$sc.vsock 2>&1 | tr -d '\r' >/tmp/$sc.vsock-reply &
        rp=$!
        wait_for /tmp/$sc.vsock-reply L2-SNAP-UPTIME 60 || say $sc no-vsock-answer
        say $sc restore-answer-ms $((($(now_cs) - T1) * 10))
        say $sc restore-us "$(sed -n 's/.*restored the snapshot .* after \([0-9]*\) us.*/\1/p' /tmp/$sc-r.log | head -n1)"
        kill $rp 2>/dev/null
        sed "s/^/RIG $sc vsock-reply /" /tmp/$sc.vsock-reply
        say $sc word check-$word
        RSS=$(rss_kb $VMM)
        say $sc restored-rss-kb $RSS
        qmp /tmp/$sc-r.qmp '{"execute":"query-status"}' '{"execute":"quit"}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-restored /"
        i=0
        while kill -0 $VMM 2>/dev/null && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
        wait $VMM
        say $sc restore-exit $?
    else
        say $sc not-ready
        kill -9 $VMM 2>/dev/null
    fi
    sed "s/^/RIG $sc stderr /" /tmp/$sc.stderr 2>/dev/null
    sed "s/^/L2 $sc /" /tmp/$sc.serial 2>/dev/null | tr -d '\r'
    sed "s/^/L2 $sc /" /tmp/$sc-r.serial 2>/dev/null | tr -d '\r'
    sed "s/^/LOG $sc /" /tmp/$sc.log /tmp/$sc-r.log 2>/dev/null
    say $sc after-file "$(debugfs -R 'cat /after.txt' /tmp/img-$sc.ext4 2>/dev/null)"
}

# Kernel (a) with its virtio devices found through ACPI: a data disk (ext4,
# read back with debugfs after exit), virtio-rng and virtio-net over a tap;
# no hotplug slots, so the disk is vda and the NIC eth0.
sc_a_devices() {
    sc=a_devices
    cp /rig/l2/data.ext4 /tmp/img-$sc.ext4
    SC_ARGS="rig.data=/dev/vda"
    start $sc devices -machine microvm,blk-slots=0,net-slots=0 \
        -drive id=data,file=/tmp/img-$sc.ext4,readonly=off \
        -device virtio-blk-device,drive=data,id=virtio-blk0 \
        -netdev tap,id=n0,ifname=rigtap0 -device virtio-net-device,netdev=n0,id=net0 \
        -object rng-random,id=objrng0,filename=/dev/urandom \
        -device virtio-rng-device,rng=objrng0,id=virtio-rng0
    SC_ARGS=
    listen /tmp/$sc.qmp /tmp/$sc.events
    tap_up $sc rigtap0 10.0.2.1
    finish $sc 60
    say $sc disk-file "$(debugfs -R 'cat /hello.txt' /tmp/img-$sc.ext4 2>/dev/null)"
}

# Hotplug into the empty slots, driven from L1 over QMP while L2's init
# (rig.mode=hotplug) watches: altovirt starts with -S and a 2 MiB disk goes
# into block slot 1 (vdb) before the guest runs; then a raw image with a
# marker goes into block slot 0 (vda) and out again, then a tap NIC into
# net slot 0 (eth0), with the MAC the guest already shows (Linux reads it
# only at probe time).
hotplug_run() { # SCENARIO KERNEL EXTRA-KERNEL-ARGS
    sc=$1
    img=/tmp/hp-$sc.img
    dd if=/dev/zero of=$img bs=1M count=4 2>/dev/null
    printf 'altovirt-hotplug-marker' | dd of=$img conv=notrunc 2>/dev/null
    pre=/tmp/pre-$sc.img
    dd if=/dev/zero of=$pre bs=1M count=2 2>/dev/null
    SC_KERNEL=$2 SC_ARGS="$3"
    start $sc hotplug -S -machine microvm,blk-slots=2,net-slots=1
    SC_KERNEL= SC_ARGS=
    q=/tmp/$sc.qmp
    # -S: a disk plugged into block slot 1 (vdb) before the guest runs,
    # as QEMU allows in prelaunch; then cont.
    wait_for_sock $q
    qmp $q '{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"pre0","file":{"driver":"file","filename":"'$pre'"}}}' \
        '{"execute":"device_add","arguments":{"driver":"virtio-blk-mmio","id":"predisk0","drive":"pre0","addr":"1"}}' \
        '{"execute":"query-status"}' '{"execute":"cont"}' |
        tr -d '\r' | sed "s/^/RIG $sc qmp-prelaunch /"
    listen $q /tmp/$sc.events
    if wait_for /tmp/$sc.serial L2-HOTPLUG-READY 60; then
        qmp $q '{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"hp0","file":{"driver":"file","filename":"'$img'"}}}' \
            '{"execute":"device_add","arguments":{"driver":"virtio-blk-mmio","id":"hpdisk0","drive":"hp0","addr":"0"}}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-blk-add /"
        if wait_for /tmp/$sc.serial L2-HOTPLUG-BLK-MARKER 30; then
            qmp $q '{"execute":"device_del","arguments":{"id":"hpdisk0"}}' |
                tr -d '\r' | sed "s/^/RIG $sc qmp-blk-del /"
        fi
        wait_for /tmp/$sc.serial L2-HOTPLUG-BLK-GONE 30
        mac=$(tr -d '\r' </tmp/$sc.serial | sed -n 's/^L2-NETMAC \([0-9a-f:]*\)$/\1/p' | head -n1)
        say $sc guest-mac $mac
        qmp $q '{"execute":"netdev_add","arguments":{"type":"tap","id":"hpnet0","ifname":"righp0"}}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-netdev-add /"
        tap_up $sc righp0 10.0.3.1
        qmp $q '{"execute":"device_add","arguments":{"driver":"virtio-net-mmio","id":"hpnic0","netdev":"hpnet0","mac":"'$mac'","addr":"0"}}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-net-add /"
    else
        say $sc not-ready
    fi
    finish $sc 60
}
sc_a_hotplug() { hotplug_run a_hotplug $L2K ""; }
sc_b_hotplug() {
    if [ ! -f $L2B ]; then say b_hotplug skipped no-kernel-b; return; fi
    hotplug_run b_hotplug $L2B ""
}

# Kata's StratoVirt command line, verbatim (minus virtio-fs, which altovirt
# does not have yet), with kernel (b): /dev/vhost-vsock opened by the shell
# as descriptor 3, the tap as descriptor 4 (tapfd, as Kata's runtime opens
# it), the console on a socket L1 reads. L1 and L2 exchange lines over
# vsock both ways with socat; between the two boots L1 hot-plugs two disks
# with Kata's exact QMP sequence.
KATA_APPEND="tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 \
i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests \
net.ifnames=0 pci=lastbus=0 root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro \
rootfstype=ext4 console=hvc0 console=hvc1 quiet systemd.show_status=false panic=1 \
nr_cpus=1 selinux=0 systemd.unit=kata-containers.target \
systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket \
scsi_mod.scan=none ramdom.trust_cpu=on pci=off iommu=off acpi=off 8250.nr_uarts=0 \
agent.log_vport=1025 guest.exit=reset"
sc_b_kata() {
    sc=b_kata
    if [ ! -f $L2B ] || [ ! -f /rig/l2/initrd-kata.cpio ]; then say $sc skipped no-kernel-b; return; fi
    for m in vhost_iotlb vhost vsock vmw_vsock_virtio_transport_common vhost_vsock; do
        insmod /rig/modules/$m.ko || say $sc insmod-failed $m
    done
    if [ -c /dev/vhost-vsock ]; then say $sc vhost-vsock present; else say $sc vhost-vsock missing; fi
    rm -f /tmp/$sc.*
    cp /rig/l2/data.ext4 /tmp/kata-rootfs.img
    # L1's end of the guest-to-host exchange: port 5001, once per boot.
    (
        for n in 1 2; do
            (echo "from-L1-listener $n"; sleep 6) | socat -t 4 VSOCK-LISTEN:5001 - >>/tmp/$sc.l1got 2>&1
        done
    ) &
    L1LISTEN=$!
    T0=$(now_cs)
    (
        exec 3<>/dev/vhost-vsock
        exec tapfd katatap0 4 altovirt \
            -name sandbox-6a2b7c5e -uuid 1f3c6e9a-4b2d-4e8f-9a1b-2c3d4e5f6a7b \
            -smp 1 -m 2048 -kernel $L2B \
            -append "$KATA_APPEND rig.mode=vsock rig.scenario=$sc" \
            -qmp unix:/tmp/$sc.qmp,server,nowait -D -disable-seccomp \
            -machine type=microvm,dump-guest-core=off,mem-share=on \
            -initrd /rig/l2/initrd-kata.cpio \
            -object rng-random,id=objrng0,filename=/dev/urandom \
            -device virtio-rng-device,rng=objrng0,id=virtio-rng0 \
            -device virtio-serial-device,id=virtio-serial0 \
            -chardev socket,id=charconsole0,path=/tmp/$sc.console,server,nowait \
            -device virtconsole,chardev=charconsole0,id=virtio-console0,nr=0 \
            -device vhost-vsock-device,id=vsock-id,guest-cid=3,vhostfd=3 \
            -drive id=rootfs,file=/tmp/kata-rootfs.img,readonly=on,direct=off \
            -device virtio-blk-device,drive=rootfs,id=virtio-blk0 \
            -netdev tap,id=eth0,fds=4 \
            -device virtio-net-device,netdev=eth0,id=eth0,mac=52:54:00:6b:61:74 \
            -serial stdio
    ) </dev/null >/tmp/$sc.stdout 2>/tmp/$sc.stderr &
    VMM=$!
    listen /tmp/$sc.qmp /tmp/$sc.events
    wait_for_sock /tmp/$sc.console && socat -u UNIX-CONNECT:/tmp/$sc.console STDOUT >/tmp/$sc.serial 2>&1 &
    tap_up $sc katatap0 10.0.4.1
    # Two boots: the second after QMP system_reset, which stops and
    # restarts the kernel's vhost-vsock rings.
    for n in 1 2; do
        if wait_count /tmp/$sc.serial L2-VSOCK-LISTEN $n 60; then
            sleep 0.3
            say $sc vsock-l1-got-$n "$(echo from-L1 | socat -t 4 - VSOCK-CONNECT:3:5000 2>&1 | tr -d '\r')"
            t0=$(now_cs)
            say $sc vsock-big-md5-$n "$(socat -u VSOCK-CONNECT:3:5002 STDOUT 2>/dev/null | md5sum | cut -d' ' -f1)"
            t1=$(now_cs)
            dd if=/dev/urandom of=/tmp/$sc.big bs=64k count=64 2>/dev/null
            say $sc vsock-sent-md5-$n "$(md5sum </tmp/$sc.big | cut -d' ' -f1) $(wc -c </tmp/$sc.big)"
            t2=$(now_cs)
            socat -u OPEN:/tmp/$sc.big VSOCK-CONNECT:3:5003 2>&1 | sed "s/^/RIG $sc bulk-send-error /"
            t3=$(now_cs)
            say $sc vsock-bulk-ms-$n $(((t1 - t0) * 10)) $(((t3 - t2) * 10))
        else
            say $sc no-listener-$n
            break
        fi
        wait_count /tmp/$sc.serial L2-VSOCK-DONE $n 30 || say $sc not-done-$n
        if [ $n = 1 ]; then
            # Kata's disk hotplug (stratovirt.go, govmm's maps): blockdev-add
            # with aio native, then device_add with addr = the index of the
            # /dev/vdX letter Kata tells its agent (vda is the rootfs).
            for d in b:1:4 c:2:2; do
                letter=${d%%:*}; rest=${d#*:}; addr=${rest%%:*}; mib=${rest#*:}
                img=/tmp/kata-hp-$letter.img
                dd if=/dev/zero of=$img bs=1M count=$mib 2>/dev/null
                qmp /tmp/$sc.qmp '{"arguments":{"driver":"raw","file":{"aio":"native","driver":"file","filename":"'$img'"},"node-name":"drive-vd'$letter'","read-only":false},"execute":"blockdev-add"}' |
                    tr -d '\r' | sed "s/^/RIG $sc qmp-kata-blockdev-add /"
                qmp /tmp/$sc.qmp '{"arguments":{"addr":"'$addr'","driver":"virtio-blk-mmio","drive":"drive-vd'$letter'","id":"drive-vd'$letter'"},"execute":"device_add"}' |
                    tr -d '\r' | sed "s/^/RIG $sc qmp-kata-device-add /"
                wait_for /tmp/$sc.serial "L2-KATA-vd$letter " 30 || say $sc no-vd$letter
            done
            qmp /tmp/$sc.qmp '{"execute":"system_reset"}' | tr -d '\r' | sed "s/^/RIG $sc qmp-reset /"
        else
            wait_count /tmp/$sc.serial "L2-KATA-vdc " 2 30 || say $sc no-vdc-after-reset
        fi
    done
    qmp /tmp/$sc.qmp '{"execute":"quit"}' >/dev/null
    finish $sc 30
    kill $L1LISTEN 2>/dev/null
    tr -d '\r' </tmp/$sc.l1got | sed "s/^/RIG $sc vsock-l1-listener-got /"
}

# The ACPI power button (kernel (a)): QMP system_powerdown presses it; the
# GED's interrupt runs its _EVT, which notifies the PNP0C0C button, and
# Linux's button driver reports KEY_POWER. In a_powerdown busybox acpid
# reacts (as a distribution's acpid or systemd-logind would) and the guest
# powers off; in a_powerdown_ignored nothing listens and the guest runs on
# until QMP quit.
sc_a_powerdown() {
    sc=a_powerdown
    start $sc powerbutton
    listen /tmp/$sc.qmp /tmp/$sc.events
    if wait_for /tmp/$sc.serial L2-PWRBTN-READY 60; then
        t0=$(now_cs)
        qmp /tmp/$sc.qmp '{"execute":"system_powerdown"}' | tr -d '\r' | sed "s/^/RIG $sc qmp-powerdown /"
        # From the press to altovirt's exit (the QMP client's 0.5 s included).
        i=0
        while kill -0 $VMM 2>/dev/null && [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.05; done
        say $sc press-to-exit-ms $((($(now_cs) - t0) * 10))
    else
        say $sc not-ready
    fi
    finish $sc 60
}
sc_a_powerdown_ignored() {
    sc=a_powerdown_ignored
    start $sc ignorebutton
    listen /tmp/$sc.qmp /tmp/$sc.events
    if wait_for /tmp/$sc.serial "L2-TICK 3 " 60; then
        qmp /tmp/$sc.qmp '{"execute":"system_powerdown"}' | tr -d '\r' | sed "s/^/RIG $sc qmp-powerdown /"
        # The guest saw the interrupt once its GED count moves; then 2 s.
        wait_for /tmp/$sc.serial "L2-TICK .* ged=1" 30 || say $sc no-ged-irq
        n1=$(grep -c L2-TICK /tmp/$sc.serial)
        sleep 2
        n2=$(grep -c L2-TICK /tmp/$sc.serial)
        say $sc ticks-after-powerdown $((n2 - n1))
        qmp /tmp/$sc.qmp '{"execute":"query-status"}' '{"execute":"quit"}' |
            tr -d '\r' | sed "s/^/RIG $sc qmp-status-quit /"
    else
        say $sc no-heartbeat
        qmp /tmp/$sc.qmp '{"execute":"quit"}' >/dev/null
    fi
    finish $sc 30
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
