#!/bin/busybox sh
# /init of the L2 guest (runs under altovirt inside L1). Prints what it sees
# as "L2-<KEY> value" lines on the serial console, signals boot-complete, then
# does what rig.mode=<mode> on the kernel command line asks:
#   report     print and power off          reboot    print and reboot -f
#   poweroff   print and poweroff -f        heartbeat print L2-TICK lines forever
#   devices    read /dev/hwrng, configure eth0 and ping L1, reboot -f
#   disk       (root on /dev/vda) write /hello.txt, sync, reboot -f
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
for w in $(cat /proc/cmdline); do
    case "$w" in rig.mode=*) mode="${w#rig.mode=}" ;; esac
done
# Modules (kernel (a) only), in dependency order; built-in ones are absent.
if [ -e /proc/modules ]; then
    for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
        [ -e /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "L2-INSMOD-FAILED $m"; }
    done
fi
echo "L2-MODE $mode"
case "$mode" in
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
    echo "L2-STEP net"
    if ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0; then
        echo "L2-STEP ping"
        if ping -c 3 -W 2 10.0.2.1 >/tmp/ping 2>&1; then echo "L2-PING ok"; else echo "L2-PING failed"; fi
        sed 's/^/L2-PINGLOG /' /tmp/ping
    else
        echo "L2-PING no-eth0"
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
*)
    echo "L2-DONE"
    reboot -f
    ;;
esac
echo "L2-STILL-RUNNING"
sleep 1000
