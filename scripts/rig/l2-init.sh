#!/bin/busybox sh
# /init of the L2 guest (runs under altovirt inside L1). Prints what it sees
# as "L2-<KEY> value" lines on the serial console, signals boot-complete, then
# does what rig.mode=<mode> on the kernel command line asks:
#   report     print and power off          reboot    print and reboot -f
#   poweroff   print and poweroff -f        heartbeat print L2-TICK lines forever
#   disk       write a file onto /dev/vda (ext4), read it back, reboot -f
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
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net virtio-rng; do
    [ -e /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || echo "L2-INSMOD-FAILED $m"; }
done
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
