#!/usr/bin/env python3
"""Side-by-side start-up benchmark: altovirt vs QEMU microvm.

Boots the same tiny PVH test guest (tests/guests, built by cargo) repeatedly
with each VMM and prints medians of
  - wall time from exec to exit (the guest resets at once),
  - CPU time of the VMM process (user + system, from wait4),
  - resident memory of the VMM excluding guest RAM, sampled from
    /proc/PID/smaps while a guest that stays up (guest.exit=halt) runs.
Then block reads (unlimited), and the rate a disk limited with
`-drive …,iops=`/`bps=` actually delivers (configured vs achieved).
QEMU comes from Debian's qemu-system-x86 package (installed if missing).
Nothing here asserts a time: it measures and prints.

Usage: scripts/bench.py [-n ITERATIONS] [--mem MIB] [--no-block] [--no-ratelimit] [--write docs/benchmarks.md]
"""

import argparse
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_qemu():
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        return qemu
    print("installing qemu-system-x86 (Debian package)...", file=sys.stderr)
    sh(["apt-get", "update", "-qq"])
    sh(["apt-get", "install", "-y", "-qq", "qemu-system-x86"])
    return shutil.which("qemu-system-x86_64")


def build():
    # The test guests are built by the test_guests crate (not part of the
    # production build).
    sh(["cargo", "build", "--release", "--quiet", "-p", "altovirt", "-p", "test_guests"], cwd=ROOT)
    binary = os.path.join(ROOT, "target", "release", "altovirt")
    guests = sorted(
        glob.glob(os.path.join(ROOT, "target", "release", "build", "test_guests-*", "out", "guest-pvh.elf")),
        key=os.path.getmtime,
    )
    if not guests:
        sys.exit("bench: guest-pvh.elf not found after the build")
    return binary, guests[-1]


def altovirt_cmd(binary, guest, mem, exit_action, serial, disk=None, extra_append="", limits=""):
    # No hotplug slots: QEMU's microvm has none, and the guest would probe them.
    cmd = [binary, "-kernel", guest, "-m", str(mem), "-smp", "1",
           "-machine", "microvm,blk-slots=0,net-slots=0",
           "-serial", serial, "-append", f"guest.exit={exit_action} {extra_append}".strip()]
    if disk:
        cmd += ["-drive", f"id=d0,file={disk},readonly=on{limits}", "-device", "virtio-blk-device,drive=d0"]
    return cmd


def qemu_cmd(qemu, guest, mem, exit_action, serial, disk=None, extra_append="", limits=""):
    cmd = [qemu, "-M", "microvm,acpi=off,pic=on,pit=on,rtc=off", "-enable-kvm",
           "-cpu", "host,-arch-capabilities", "-m", str(mem), "-smp", "1",
           "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
           "-serial", serial, "-kernel", guest,
           "-append", f"guest.exit={exit_action} {extra_append}".strip()]
    if disk:
        cmd += ["-global", "virtio-mmio.force-legacy=false",
                "-drive", f"id=d0,file={disk},format=raw,if=none,readonly=on{limits}",
                "-device", "virtio-blk-device,drive=d0"]
    return cmd


def block_run(make_cmd, disk, size, count):
    """Wall time (ms) of a run whose guest reads `count` blocks of `size`."""
    t0 = time.perf_counter()
    out = subprocess.run(make_cmd("triplefault", "stdio", disk,
                                  f"guest.virtio=blkbench guest.blkbench={size}:{count}"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    wall = (time.perf_counter() - t0) * 1000
    if f"blkbench: bytes={size} count={count} errors=0" not in out.stdout:
        sys.exit(f"bench: block run failed ({size}x{count}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return wall


def block_throughput(make_cmd, disk, size, count, runs=3):
    """(µs per request, MiB/s) from the difference between `count` requests and none."""
    base = statistics.median(block_run(make_cmd, disk, size, 0) for _ in range(runs))
    full = statistics.median(block_run(make_cmd, disk, size, count) for _ in range(runs))
    per_req_us = max(full - base, 0.001) * 1000 / count
    mib_s = size * count / (1 << 20) / (max(full - base, 0.001) / 1000)
    return per_req_us, mib_s


def limited_rate(make_cmd, disk, size, n1, n2, runs=3):
    """Achieved requests/s under a limit: (n2 - n1) / (t(n2) - t(n1)), medians of `runs`.

    Both counts exceed the initial bucket (a full second's worth for
    altovirt, a tenth for QEMU), so boot time and the first burst cancel out.
    """
    t1 = statistics.median(block_run(make_cmd, disk, size, n1) for _ in range(runs))
    t2 = statistics.median(block_run(make_cmd, disk, size, n2) for _ in range(runs))
    return (n2 - n1) / max((t2 - t1) / 1000, 1e-6)


def rate_limit_rows(vmms, disk):
    """Configured vs achieved rates of a throttled disk, for each VMM (QEMU's
    legacy `-drive iops=`/`bps=` keys, which altovirt accepts too)."""
    iops, bps, size_bw = 1000, 8 << 20, 65536
    lines = ["", "Block I/O rate limits (same guest and disk; `-drive …,iops=` or `bps=`; achieved rate is "
             "(N2 − N1) / (t(N2) − t(N1)) so boot time and the initial burst cancel out, median of 3):", "",
             "| VMM | iops=1000, 4 KiB reads: achieved ops/s | bps=8 MiB/s, 64 KiB reads: achieved MiB/s |",
             "| --- | ---: | ---: |"]
    for name, make in vmms:
        ops = limited_rate(lambda e, s, d=None, x="": make(e, s, d, x, f",iops={iops}"),
                           disk, 4096, 2 * iops, 4 * iops)
        per_s = limited_rate(lambda e, s, d=None, x="": make(e, s, d, x, f",bps={bps}"),
                             disk, size_bw, 2 * bps // size_bw, 4 * bps // size_bw)
        lines.append(f"| {name} | {ops:.0f} ({(ops / iops - 1) * 100:+.1f} %) | "
                     f"{per_s * size_bw / (1 << 20):.2f} ({(per_s * size_bw / bps - 1) * 100:+.1f} %) |")
    return lines


def time_runs(make_cmd, n):
    walls, cpus = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.Popen(make_cmd("triplefault", "none"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((ru.ru_utime + ru.ru_stime) * 1000)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            sys.exit(f"bench: {make_cmd('triplefault', 'none')[0]} exited {code}: {err}")
    return statistics.median(walls), statistics.median(cpus)


def rss_excluding_guest_ram(pid, mem_mib):
    """Sum of Rss (KiB) over mappings smaller than guest RAM."""
    guest_kib = mem_mib * 1024
    total = 0
    size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size < guest_kib:
                total += int(line.split()[1])
    return total


def memory(make_cmd, mem_mib, samples=3):
    values = []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as d:
            console = os.path.join(d, "console")
            proc = subprocess.Popen(make_cmd("halt", f"file:{console}"),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    if "halting" in open(console, errors="replace").read():
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.02)
            else:
                proc.kill()
                sys.exit(f"bench: guest did not come up under {make_cmd('halt', 'x')[0]}")
            time.sleep(0.2)
            values.append(rss_excluding_guest_ram(proc.pid, mem_mib))
            proc.kill()
            proc.wait()
    return statistics.median(values)


def qmp_exchange(sock, msg):
    """Sends one command on a negotiated socket file and returns its reply."""
    sock[0].sendall(json.dumps(msg).encode())
    while True:
        line = sock[1].readline()
        if not line:
            sys.exit("bench: QMP connection closed")
        reply = json.loads(line)
        if "event" not in reply:
            return reply


def hotplug_latency(binary, guest, mem, runs=30):
    """Median ms of blockdev-add + device_add over QMP (altovirt only)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "qmp.sock")
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        proc = subprocess.Popen([binary, "-kernel", guest, "-m", str(mem), "-serial", "none",
                                 "-append", "guest.exit=halt", "-qmp", f"unix:{path},server,nowait"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while not os.path.exists(path):
                if time.time() > deadline:
                    sys.exit("bench: no QMP socket")
                time.sleep(0.01)
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            f = s.makefile("rb")
            f.readline()
            conn = (s, f)
            qmp_exchange(conn, {"execute": "qmp_capabilities"})
            times = []
            for i in range(runs):
                t0 = time.perf_counter()
                r1 = qmp_exchange(conn, {"execute": "blockdev-add", "arguments": {
                    "driver": "raw", "node-name": f"n{i}",
                    "file": {"driver": "file", "filename": disk}}})
                r2 = qmp_exchange(conn, {"execute": "device_add", "arguments": {
                    "driver": "virtio-blk-mmio", "id": f"d{i}", "drive": f"n{i}"}})
                times.append((time.perf_counter() - t0) * 1000)
                if "return" not in r1 or "return" not in r2:
                    sys.exit(f"bench: hotplug failed: {r1} {r2}")
                qmp_exchange(conn, {"execute": "device_del", "arguments": {"id": f"d{i}"}})
                qmp_exchange(conn, {"execute": "blockdev-del", "arguments": {"node-name": f"n{i}"}})
            s.close()
            return statistics.median(times)
        finally:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--iterations", type=int, default=20)
    ap.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    ap.add_argument("--write", help="also write the markdown report to this file")
    ap.add_argument("--no-block", action="store_true", help="skip the block throughput runs")
    ap.add_argument("--no-ratelimit", action="store_true", help="skip the block rate-limit runs")
    args = ap.parse_args()

    binary, guest = build()
    qemu = ensure_qemu()
    qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]

    vmms = [
        ("altovirt", lambda e, s, d=None, x="", l="": altovirt_cmd(binary, guest, args.mem, e, s, d, x, l)),
        ("qemu microvm", lambda e, s, d=None, x="", l="": qemu_cmd(qemu, guest, args.mem, e, s, d, x, l)),
    ]
    rows = []
    for name, make in vmms:
        time_runs(make, 2)  # warm the page cache
        wall, cpu = time_runs(make, args.iterations)
        rss = memory(make, args.mem)
        rows.append((name, wall, cpu, rss))

    lines = [
        f"Tiny PVH guest, {args.mem} MiB, 1 vCPU, {args.iterations} runs each, medians; "
        f"host: {platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()}); {qemu_version}.",
        "",
        "| VMM | exec→exit wall (ms) | CPU user+sys (ms) | RSS excl. guest RAM (MiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, wall, cpu, rss in rows:
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {rss / 1024:.1f} |")
    if not args.no_block:
        with tempfile.TemporaryDirectory() as d:
            disk = os.path.join(d, "disk.img")
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            lines += ["", "Block reads from the same guest (virtio-blk, one request in flight, "
                      "sequential, raw image in the page cache; time per request is the wall-time "
                      "difference between N requests and none, median of 3):", "",
                      "| VMM | 4 KiB: µs/request | 4 KiB: MiB/s | 64 KiB: µs/request | 64 KiB: MiB/s |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            for name, make in vmms:
                small = block_throughput(make, disk, 4096, 2000)
                big = block_throughput(make, disk, 65536, 500)
                lines.append(f"| {name} | {small[0]:.1f} | {small[1]:.1f} | {big[0]:.1f} | {big[1]:.1f} |")
            if not args.no_ratelimit:
                lines += rate_limit_rows(vmms, disk)
    hp = hotplug_latency(binary, guest, args.mem)
    lines += ["", "Block hotplug (QMP `blockdev-add` + `device_add` round trip, median of 30):", "",
              "| VMM | hotplug latency (ms) |", "| --- | ---: |",
              f"| altovirt | {hp:.2f} |",
              "| qemu microvm | n/a: the microvm machine has no hotplug |"]
    report = "\n".join(lines)
    print(report)
    if args.write:
        with open(args.write, "w") as f:
            f.write("# Benchmarks\n\nProduced by `scripts/bench.py`"
                    f" on {time.strftime('%Y-%m-%d')}.\n\n"
                    "The guest is `tests/guests` built as an ELF with a PVH note, which both VMMs boot. "
                    "For the timing runs it triple-faults right after printing its report (both VMMs exit on that; "
                    "QEMU with `-no-reboot`); for the memory sample it halts and the VMM's `/proc/PID/smaps` is read: "
                    "the sum of `Rss` over every mapping smaller than guest RAM.\n\n")
            f.write(report + "\n")


if __name__ == "__main__":
    main()
