#!/bin/busybox sh
# /init of the L2 guest (runs under altovirt inside L1). Prints what it sees
# as "L2-<KEY> value" lines on the serial console, signals boot-complete, then
# does what rig.mode=<mode> on the kernel command line asks:
#   report     print and power off          reboot    print and reboot -f
#   poweroff   print and poweroff -f        heartbeat print L2-TICK lines forever
#   devices    read /dev/hwrng, configure eth0 and ping L1; with
#              rig.data=DEV also mount DEV and write /hello.txt on it; reboot -f
#   disk       (root on /dev/vda) write /hello.txt, sync, reboot -f
#   vsock      (Kata's command line, console on hvc0) listen on vsock port
#              5000, exchange a line with L1, then connect to L1 (CID 2)
#              port 5001 and exchange another; ping L1 over eth0; report
#              the sizes of vdb and vdc once L1 plugged them; wait
#   hotplug    wait for a disk in the empty slot vda (L1 plugs it over QMP),
#              read its marker, wait for its removal; then wait for eth0's
#              carrier (a NIC plugged into the empty net slot) and ping L1
#   powerbutton  load the ACPI button and evdev drivers, run busybox acpid
#              (as a distribution runs acpid or systemd-logind): on the
#              power button (QMP system_powerdown) its handler powers off
#   ignorebutton  the same drivers, no acpid: L2-TICK lines forever, with
#              the GED's interrupt count (the press arrives, nobody acts)
#   snapshot   (data disk vda, eth0 on a tap, hybrid vsock) write a file
#              on vda, ping L1, listen on vsock port 5000 and say
#              L2-SNAP-READY; L1 snapshots the VM, quits it and restores it
#              in a new altovirt; L1's connection to port 5000 then runs the
#              after-restore checks: re-read the file from the disk (caches
#              dropped), write another, ping L1, answer on vsock
#   balloon    show the balloon's driver and negotiated features, fill the
#              free memory once (a tmpfs file, then removed: L1 backs it),
#              then print MemTotal whenever it changes (L1 inflates and
#              deflates over QMP; with free page reporting the freed memory
#              goes back to L1 by itself)
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /mnt
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "L2-UPTIME $(cut -d' ' -f1 /proc/uptime)"
# Boot-complete: write 123 to I/O port 0x3f0.
if outb 0x3f0 123; then echo "L2-BOOTCOMPLETE sent"; else echo "L2-BOOTCOMPLETE failed"; fi
echo "L2-CMDLINE $(cat /proc/cmdline)"
echo "L2-MEMTOTAL-KB $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
echo "L2-NPROC $(nproc)"
echo "L2-ONLINE $(cat /sys/devices/system/cpu/online)"
echo "L2-CPUFLAGS $(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
mode=report
data=
for w in $(cat /proc/cmdline); do
    case "$w" in
    rig.mode=*) mode="${w#rig.mode=}" ;;
    rig.data=*) data="${w#rig.data=}" ;;
    esac
done
# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_until() {
    n=$(($1 * 10))
    shift
    while ! "$@"; do
        n=$((n - 1))
        [ $n -le 0 ] && return 1
        sleep 0.1
    done
}
# The ACPI button and evdev drivers (modules of kernel (a)), then what they
# made of the DSDT's power button.
button_drivers() {
    for m in button evdev; do
        [ -e /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "L2-INSMOD-FAILED $m"; }
    done
    for d in /sys/class/input/input*; do
        [ "$(cat $d/name 2>/dev/null)" = "Power Button" ] || continue
        echo "L2-PWRBTN-DEVICE $(cat $d/phys) $(ls -d $d/event* 2>/dev/null | sed 's|.*/||')"
    done
}
# Interrupts the ACPI GED driver has handled (all CPUs), from /proc/interrupts.
ged_irqs() {
    awk '/ACPI:Ged/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print n; f = 1 }
         END { if (!f) print "none" }' /proc/interrupts
}
size_is() { [ "$(cat /sys/block/$1/size 2>/dev/null)" "$2" 0 ]; }
carrier_is() { [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = "$2" ]; }
# ping_l1 DEV ADDR PEER: addresses DEV and pings PEER.
ping_l1() {
    echo "L2-STEP ping"
    if ip addr add $2/24 dev $1; then
        if ping -c 3 -W 2 $3 >/tmp/ping 2>&1; then echo "L2-PING ok"; else echo "L2-PING failed"; fi
        sed 's/^/L2-PINGLOG /' /tmp/ping
    else
        echo "L2-PING no-$1"
    fi
}
# Modules (kernel (a) only), in dependency order; built-in ones are absent.
if [ -e /proc/modules ]; then
    for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
        [ -e /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "L2-INSMOD-FAILED $m"; }
    done
fi
# Every bound virtio device in probe order (which follows the window
# order): its virtio device id and the platform device it came from
# (LNRO0005:NN from the ACPI DSDT, virtio-mmio.N from a virtio_mmio.device=
# token); then how many virtio-mmio platform devices were registered.
virtio_list() {
    i=0
    out=
    while [ -e /sys/bus/virtio/devices/virtio$i ]; do
        d=/sys/bus/virtio/devices/virtio$i
        out="$out $(cat $d/device)@$(basename "$(readlink -f $d/..)")"
        i=$((i + 1))
    done
    echo "L2-VIRTIO$out"
    echo "L2-MMIO-PLATFORM $(ls /sys/bus/platform/devices | grep -c -e '^LNRO0005' -e '^virtio-mmio')"
}
virtio_list
echo "L2-MODE $mode"
case "$mode" in
snapshot)
    if mount -t ext4 /dev/vda /mnt; then
        echo "before-snapshot $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/mnt/before.txt && sync &&
            echo "L2-SNAP-WROTE $(cat /mnt/before.txt)"
    else
        echo "L2-SNAP-WROTE mount-failed"
    fi
    ip link set eth0 up
    ping_l1 eth0 10.0.5.2 10.0.5.1
    cat >/tmp/after.sh <<'EOS'
#!/bin/busybox sh
# Runs for L1's vsock connection after the restore: what it prints goes
# back over vsock and to the console.
read -r what
{
    echo "L2-SNAP-ASKED $what"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    echo "L2-SNAP-READ $(cat /mnt/before.txt 2>&1)"
    echo "after-restore $what" >/mnt/after.txt && sync && echo "L2-SNAP-WROTE-AFTER ok"
    if ping -c 2 -W 2 10.0.5.1 >/tmp/ping2 2>&1; then echo "L2-SNAP-PING ok"; else echo "L2-SNAP-PING failed"; fi
    echo "L2-SNAP-UPTIME $(cut -d' ' -f1 /proc/uptime)"
} | tee /dev/console
EOS
    chmod +x /tmp/after.sh
    socat VSOCK-LISTEN:5000,fork EXEC:/tmp/after.sh 2>/tmp/vs.err &
    sleep 0.5
    echo "L2-SNAP-LISTENER pid=$(pidof socat) err=$(tr '\n' ' ' </tmp/vs.err)"
    echo "L2-SNAP-READY $(cut -d' ' -f1 /proc/uptime)"
    # Heartbeats through the tty (interrupt-driven UART) and through printk
    # (polled), to tell a stuck guest from a stuck console after a restore.
    i=0
    while :; do
        echo "L2-SNAP-TICK $i $(cut -d' ' -f1 /proc/uptime)"
        echo "<2>L2-SNAP-KTICK $i" >/dev/kmsg
        i=$((i + 1))
        sleep 2
    done
    ;;
heartbeat)
    i=0
    while :; do
        echo "L2-TICK $i $(cut -d' ' -f1 /proc/uptime)"
        i=$((i + 1))
        sleep 0.2
    done
    ;;
devices)
    echo "L2-RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
    echo "L2-RNG-BYTES $(head -c 16 /dev/hwrng 2>/dev/null | od -An -tx1 | tr -d ' \n')"
    echo "L2-BLOCK $(ls /sys/block | tr '\n' ' ')"
    if [ -n "$data" ]; then
        echo "L2-DATA-SIZE $(cat /sys/block/${data#/dev/}/size 2>/dev/null)"
        if mount -t ext4 $data /mnt; then
            word="$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
            echo "written by L2 $word" >/mnt/hello.txt && sync && umount /mnt &&
                echo "L2-WROTE written by L2 $word"
        else
            echo "L2-DATA mount-failed"
        fi
    fi
    echo "L2-STEP net"
    ip link set eth0 up
    ping_l1 eth0 10.0.2.2 10.0.2.1
    reboot -f
    ;;
vsock)
    word="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "L2-BLOCK $(for b in /sys/block/*; do echo -n "${b##*/}:$(cat $b/size):ro=$(cat $b/ro) "; done)"
    # Bulk data both ways (4 MiB each, many ring wraps): L1 reads /tmp/big
    # from port 5002 and writes its own file to port 5003.
    dd if=/dev/urandom of=/tmp/big bs=64k count=64 2>/dev/null
    echo "L2-VSOCK-BIG-MD5 $(md5sum </tmp/big | cut -d' ' -f1)"
    socat -u OPEN:/tmp/big VSOCK-LISTEN:5002 2>/tmp/vs2.err &
    rm -f /tmp/in
    socat -u VSOCK-LISTEN:5003 CREATE:/tmp/in 2>/tmp/vs3.err &
    bulk_in=$!
    # L1 connects to port 5000: the guest sends its line and reads L1's.
    (echo "from-L2 $word"; sleep 4) | socat -t 4 VSOCK-LISTEN:5000 - >/tmp/vs.in 2>/tmp/vs.err &
    echo "L2-VSOCK-LISTEN 5000 from-L2 $word"
    if wait_until 60 test -s /tmp/vs.in; then
        echo "L2-VSOCK-GOT $(cat /tmp/vs.in)"
    else
        echo "L2-VSOCK-GOT timeout $(cat /tmp/vs.err)"
    fi
    if wait_until 60 eval '! kill -0 $bulk_in 2>/dev/null'; then
        echo "L2-VSOCK-IN-MD5 $(md5sum </tmp/in | cut -d' ' -f1) $(wc -c </tmp/in)"
    else
        echo "L2-VSOCK-IN-MD5 timeout $(cat /tmp/vs3.err)"
    fi
    # The guest connects to the host (CID 2) port 5001, where L1 listens.
    echo "L2-VSOCK-REPLY $(echo "to-L1 $word" | socat -t 4 - VSOCK-CONNECT:2:5001 2>&1)"
    ip link set eth0 up
    ping_l1 eth0 10.0.4.2 10.0.4.1
    # L1 resets the VM (QMP system_reset) and repeats, or quits.
    echo "L2-VSOCK-DONE"
    # Meanwhile L1 plugs two disks the way Kata's runtime does, promising
    # its agent /dev/vdb (addr 1) and /dev/vdc (addr 2); after the reset
    # they are there from the start.
    for dev in vdb vdc; do
        if wait_until 60 size_is $dev -ne; then
            echo "L2-KATA-${dev} $(cat /sys/block/$dev/size)"
        else
            echo "L2-KATA-${dev} timeout"
        fi
    done
    sleep 1000
    ;;
hotplug)
    echo "L2-BLOCK $(for b in /sys/block/*; do echo -n "${b##*/}:$(cat $b/size) "; done)"
    ip link set eth0 up
    echo "L2-NETMAC $(cat /sys/class/net/eth0/address)"
    echo "L2-CARRIER-EMPTY $(cat /sys/class/net/eth0/carrier)"
    echo "L2-HOTPLUG-READY"
    if wait_until 60 size_is vda -ne; then
        echo "L2-HOTPLUG-BLK-SIZE $(cat /sys/block/vda/size)"
        echo "L2-HOTPLUG-BLK-MARKER $(head -c 23 /dev/vda)"
        if wait_until 60 size_is vda -eq; then
            echo "L2-HOTPLUG-BLK-GONE $(cat /sys/block/vda/size)"
        else
            echo "L2-HOTPLUG-BLK-GONE timeout"
        fi
    else
        echo "L2-HOTPLUG-BLK-SIZE timeout"
    fi
    if wait_until 60 carrier_is eth0 1; then
        echo "L2-HOTPLUG-CARRIER 1"
        ping_l1 eth0 10.0.3.2 10.0.3.1
    else
        echo "L2-HOTPLUG-CARRIER timeout"
    fi
    reboot -f
    ;;
disk)
    echo "L2-ROOT $(sed -n 's|^\([^ ]*\) / \([^ ]*\) .*|\1 \2|p' /proc/mounts | tail -n1)"
    word="$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "L2-STEP write $word"
    echo "written by L2 $word" >/hello.txt && sync && echo "L2-WROTE written by L2 $word"
    reboot -f
    ;;
reboot)
    sleep 1
    echo "L2-REBOOTING"
    reboot -f
    ;;
poweroff)
    sleep 1
    echo "L2-POWEROFF"
    poweroff -f
    ;;
powerbutton)
    button_drivers
    # busybox acpid's built-in tables map KEY_POWER to the action
    # PWRF/00000080, which it runs from /etc/acpi.
    mkdir -p /etc/acpi/PWRF
    {
        echo '#!/bin/sh'
        echo 'exec >/dev/console 2>&1'
        echo 'echo "L2-PWRBTN-PRESSED $(grep ACPI:Ged /proc/interrupts | tr -s " ")"'
        echo 'echo "L2-POWEROFF"'
        echo 'poweroff -f'
    } >/etc/acpi/PWRF/00000080
    chmod 0755 /etc/acpi/PWRF/00000080
    acpid -d &   # -d: in the foreground, logging to the console
    acpid=$!
    # Ready once acpid holds the event devices open (no press is missed).
    if wait_until 10 eval 'ls -l /proc/$acpid/fd 2>/dev/null | grep -q /dev/input/event'; then
        echo "L2-ACPID $(ls -l /proc/$acpid/fd | grep -o '/dev/input/event[0-9]*' | tr '\n' ' ')"
    else
        echo "L2-ACPID no-event-devices"
    fi
    echo "L2-GED-IRQS $(ged_irqs)"
    echo "L2-PWRBTN-READY"
    sleep 1000
    ;;
ignorebutton)
    button_drivers
    echo "L2-PWRBTN-READY"
    i=0
    while :; do
        echo "L2-TICK $i ged=$(ged_irqs)"
        i=$((i + 1))
        sleep 0.2
    done
    ;;
balloon)
    bal=
    for d in /sys/bus/virtio/devices/virtio*; do
        [ "$(cat $d/device 2>/dev/null)" = 0x0005 ] && bal=$d
    done
    echo "L2-BALLOON-DRIVER $(basename "$(readlink -f $bal/driver 2>/dev/null)" 2>/dev/null)"
    echo "L2-BALLOON-FEATURES $(cat $bal/features 2>/dev/null)"
    memtotal() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
    free_kb=$(sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    fill=$(((free_kb - 24576) / 1024))
    mkdir -p /fill && mount -t tmpfs -o size=${fill}m tmpfs /fill
    dd if=/dev/zero of=/fill/f bs=1M count=$fill 2>/dev/null
    echo "L2-BALLOON-FILLED $fill MiB"
    rm -f /fill/f
    echo "L2-BALLOON-MEMTOTAL-KB $(memtotal)"
    echo "L2-BALLOON-READY"
    last=$(memtotal)
    while :; do
        m=$(memtotal)
        [ "$m" != "$last" ] && echo "L2-BALLOON-MEMTOTAL-KB $m"
        last=$m
        sleep 0.2
    done
    ;;
*)
    echo "L2-DONE"
    reboot -f
    ;;
esac
echo "L2-STILL-RUNNING"
sleep 1000
