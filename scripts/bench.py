#!/usr/bin/env python3
"""Side-by-side benchmark: altovirt vs QEMU microvm (and Firecracker when
FIRECRACKER=/path/to/firecracker is set).

Boots the same tiny PVH test guest (tests/guests, built by cargo) and prints
medians of:
  - exec → first guest byte on the serial console and exec → exit (the guest
    prints its report and triple-faults), in paired runs: each iteration runs
    every VMM once, in turn, so load on the host hits them alike; CPU time of
    the VMM (user + system, from wait4);
  - resident memory of the VMM excluding guest RAM (/proc/PID/smaps) while a
    guest that stays up (guest.exit=halt) runs;
  - QMP: query-status round trips on one connection (p50/p99), hotplug
    latency (blockdev-add + device_add), and whether the VMM's memory stays
    flat over 10,000 QMP commands and 200 hotplug cycles;
  - restore from a snapshot (QMP stop + migrate file:DIR, then -incoming
    file:DIR) against a cold boot of the same guest;
  - density: N concurrent 32 MiB microVMs, time until all are up and memory
    per VM (RSS, PSS, the host kernel's own memory from /proc/meminfo), for
    growing N;
then block reads (unlimited), and the rate a disk limited with
`-drive …,iops=`/`bps=` actually delivers (configured vs achieved).
QEMU comes from Debian's qemu-system-x86 package (installed if missing).
Nothing here asserts a time: it measures and prints.

Usage: scripts/bench.py [-n ITERATIONS] [--mem MIB] [--density N[,N...]]
                        [--only SECTIONS] [--no-block] [--no-ratelimit]
                        [--write docs/benchmarks.md]
"""

import argparse
import glob
import json
import os
import platform
import select
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
    # .cargo/config.toml names the target (static linking), so the release
    # artefacts are under target/<triple>/release.
    release = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release")
    binary = os.path.join(release, "altovirt")
    guests = sorted(
        glob.glob(os.path.join(release, "build", "test_guests-*", "out", "guest-pvh.elf")),
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


def block_throughput(make_cmd, disk, size, count, runs=5):
    """(µs per request, MiB/s) from the difference between `count` requests and none.

    Each round runs the empty and the full guest back to back and the median
    of the per-round differences is used, so load that drifts during the run
    cancels out instead of landing on one side of the subtraction.
    """
    diffs = []
    for _ in range(runs):
        base = block_run(make_cmd, disk, size, 0)
        full = block_run(make_cmd, disk, size, count)
        diffs.append(full - base)
    diff = max(statistics.median(diffs), 0.001)
    per_req_us = diff * 1000 / count
    mib_s = size * count / (1 << 20) / (diff / 1000)
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


# The first bytes the test guest prints: exec → first byte is timed to them,
# so a VMM's own messages on the same stream do not count.
GUEST_MARK = b"altovirt-guest"
_SCRATCH = tempfile.mkdtemp(prefix="altovirt-bench.")


class Vmm:
    """One VMM under test: how to build its command line for a guest."""

    def __init__(self, name, make, console_on_stdout=False):
        self.name = name
        self._make = make
        # Firecracker has no -serial: the guest's console is its stdout.
        self.console_on_stdout = console_on_stdout

    def cmd(self, exit_action, serial, disk=None, extra_append="", limits=""):
        return self._make(exit_action, serial, disk, extra_append, limits)

    def spawn(self, exit_action, serial, extra=(), **kw):
        """Starts the VMM; `serial` is "stdio" (a pipe), "none" or "file:PATH"."""
        out = subprocess.PIPE if serial == "stdio" else subprocess.DEVNULL
        if self.console_on_stdout and serial.startswith("file:"):
            out = open(serial[5:], "wb")
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.cmd(exit_action, serial) + list(extra), stdout=out, **kw)
        if out not in (subprocess.PIPE, subprocess.DEVNULL):
            out.close()
        return proc


def firecracker_cmd(fc, guest, mem, exit_action, serial, disk=None, extra_append="", limits=""):
    cfg = {
        "boot-source": {"kernel_image_path": guest,
                        "boot_args": f"guest.exit={exit_action} {extra_append}".strip()},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mem},
    }
    fd, path = tempfile.mkstemp(suffix=".json", dir=_SCRATCH)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    return [fc, "--no-api", "--config-file", path]


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def start_exit_run(vmm):
    """(ms to the guest's first byte, ms to exit, CPU ms) of one boot that ends at once."""
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = vmm.spawn("triplefault", "stdio", stderr=err)
    fd = proc.stdout.fileno()
    buf, chunks = b"", []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append((len(buf) + len(chunk), time.perf_counter()))
        buf += chunk
    _, status, ru = os.wait4(proc.pid, 0)
    t_exit = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    at = buf.find(GUEST_MARK)
    if at < 0 or (proc.returncode != 0 and not vmm.console_on_stdout):
        err.seek(0)
        sys.exit(f"bench: {vmm.name} exited {proc.returncode} (guest output {buf[:200]!r}): "
                 f"{err.read().decode(errors='replace')[-2000:]}")
    first = next(t for end, t in chunks if end > at)
    return (first - t0) * 1000, (t_exit - t0) * 1000, (ru.ru_utime + ru.ru_stime) * 1000


def paired_start_exit(vmms, n, warm=2):
    """Medians over `n` iterations, each running every VMM once in turn, and
    the median of the per-iteration ratios to the first VMM."""
    res = {v.name: {"first": [], "exit": [], "cpu": []} for v in vmms}
    for i in range(warm + n):
        for v in vmms:
            first, wall, cpu = start_exit_run(v)
            if i >= warm:
                res[v.name]["first"].append(first)
                res[v.name]["exit"].append(wall)
                res[v.name]["cpu"].append(cpu)
    base = res[vmms[0].name]
    for v in vmms:
        r = res[v.name]
        r["exit_ratio"] = median([b / x for b, x in zip(base["exit"], r["exit"])])
        r["first_ratio"] = median([b / x for b, x in zip(base["first"], r["first"])])
    return res


def wait_console(path, text, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                if text in f.read():
                    return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            sys.exit(f"bench: {proc.args[0]} exited {proc.returncode} before printing {text!r}")
        time.sleep(0.005)
    proc.kill()
    sys.exit(f"bench: no {text!r} from {proc.args[0]}")


def memory(vmm, mem_mib, samples=3):
    values = []
    for i in range(samples):
        console = os.path.join(_SCRATCH, f"mem-{vmm.name.split()[0]}-{i}")
        proc = vmm.spawn("halt", f"file:{console}")
        wait_console(console, b"halting", proc)
        time.sleep(0.2)
        values.append(rss_excluding_guest_ram(proc.pid, mem_mib))
        proc.kill()
        proc.wait()
    return median(values)


class Qmp:
    """A negotiated QMP connection."""

    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    sys.exit(f"bench: no QMP socket at {path}")
                time.sleep(0.005)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, execute, arguments=None):
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode())
        while True:
            line = self.file.readline()
            if not line:
                sys.exit(f"bench: QMP connection closed after {execute}")
            reply = json.loads(line)
            if "event" not in reply:
                return reply

    def ok(self, execute, arguments=None):
        reply = self.cmd(execute, arguments)
        if "return" not in reply:
            sys.exit(f"bench: QMP {execute} {arguments}: {reply}")
        return reply["return"]

    def close(self):
        self.file.close()
        self.sock.close()


QMP_MIX = ["query-status", "query-version", "query-name", "query-kvm", "query-cpus-fast", "query-block"]


def qmp_bench(name, cmd, mem_mib, hotplug_cycles=0, total=10000, timed=1000):
    """Boots a halting guest with a QMP socket and measures: RSS excluding
    guest RAM after boot, query-status latency (`timed` round trips on one
    connection), RSS after `total` commands, hotplug latency and RSS after
    `hotplug_cycles` blockdev-add/device_add/device_del/blockdev-del cycles."""
    d = tempfile.mkdtemp(dir=_SCRATCH)
    sock, console = os.path.join(d, "qmp.sock"), os.path.join(d, "console")
    disk = os.path.join(d, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    proc = subprocess.Popen(cmd(sock, console), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_console(console, b"halting", proc)
        q = Qmp(sock)
        time.sleep(0.2)
        out = {"rss_boot": rss_excluding_guest_ram(proc.pid, mem_mib)}
        lat = []
        for _ in range(timed):
            t0 = time.perf_counter()
            q.ok("query-status")
            lat.append((time.perf_counter() - t0) * 1e6)
        out["qmp_p50"], out["qmp_p99"] = percentile(lat, 50), percentile(lat, 99)
        for i in range(total - timed):
            q.ok(QMP_MIX[i % len(QMP_MIX)])
        out["rss_qmp"] = rss_excluding_guest_ram(proc.pid, mem_mib)
        if hotplug_cycles:
            hp = []
            for i in range(hotplug_cycles):
                t0 = time.perf_counter()
                q.ok("blockdev-add", {"driver": "raw", "node-name": f"n{i}",
                                      "file": {"driver": "file", "filename": disk}})
                q.ok("device_add", {"driver": "virtio-blk-mmio", "id": f"d{i}", "drive": f"n{i}"})
                hp.append((time.perf_counter() - t0) * 1000)
                q.ok("device_del", {"id": f"d{i}"})
                q.ok("blockdev-del", {"node-name": f"n{i}"})
            out["hp_p50"], out["hp_p99"] = percentile(hp, 50), percentile(hp, 99)
            out["rss_hotplug"] = rss_excluding_guest_ram(proc.pid, mem_mib)
        q.close()
        return out
    finally:
        proc.kill()
        proc.wait()


def read_line_with(proc, prefix, deadline):
    """Reads the console pipe until a line starting with `prefix`; returns its arrival time."""
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        left = deadline - time.time()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            sys.exit(f"bench: no {prefix!r} line from {proc.args[0]} (console: {buf[-300:]!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            sys.exit(f"bench: console closed before {prefix!r} (console: {buf[-300:]!r})")
        buf += chunk
        if any(line.startswith(prefix) for line in buf.split(b"\n")):
            return time.perf_counter()


def restore_bench(binary, guest, mem, n, warm=2):
    """Cold boot of the counter guest (exec → "counter: ready") against a
    restore of its snapshot (exec → the "count" line answering a byte written
    at once), paired runs; medians in ms, plus the snapshot's size."""
    d = tempfile.mkdtemp(dir=_SCRATCH)
    snap, sock = os.path.join(d, "snap"), os.path.join(d, "qmp.sock")
    base = [binary, "-kernel", guest, "-m", str(mem), "-smp", "1",
            "-machine", "microvm,blk-slots=0,net-slots=0", "-serial", "stdio",
            "-append", "guest.exit=counter"]
    proc = subprocess.Popen(base + ["-qmp", f"unix:{sock},server,nowait"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    read_line_with(proc, b"counter: ready", time.time() + 30)
    q = Qmp(sock)
    q.ok("stop")
    q.ok("migrate", {"uri": f"file:{snap}"})
    deadline = time.time() + 60
    while q.ok("query-migrate").get("status") != "completed":
        if time.time() > deadline:
            sys.exit("bench: the snapshot did not complete")
        time.sleep(0.01)
    q.ok("quit")
    q.close()
    proc.wait()
    cold, warm_ = [], []
    for i in range(warm + n):
        t0 = time.perf_counter()
        p = subprocess.Popen(base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        t = read_line_with(p, b"counter: ready", time.time() + 30)
        p.kill()
        p.wait()
        t1 = time.perf_counter()
        r = subprocess.Popen(base + ["-incoming", f"file:{snap}"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        r.stdin.write(b"x")
        r.stdin.flush()
        t2 = read_line_with(r, b"count ", time.time() + 30)
        r.kill()
        r.wait()
        if i >= warm:
            cold.append((t - t0) * 1000)
            warm_.append((t2 - t1) * 1000)
    size = sum(os.stat(os.path.join(snap, f)).st_blocks * 512 for f in os.listdir(snap))
    return median(cold), median(warm_), size


KERNEL_MEM_FIELDS = ("Slab", "KernelStack", "PageTables", "SecPageTables", "VmallocUsed", "Percpu")


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def proc_kib(pid, path, field):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_ms(pid):
    """User + system CPU time of every thread of `pid`, live or ended (ms)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat (utime, stime), counted after the command name.
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def proc_threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def density_run(binary, guest, n, mem=32):
    """Starts `n` microVMs of `mem` MiB at once (a guest that halts and stays
    up); returns seconds until all printed, per-VM KiB (VmRSS, PSS, the host
    kernel's memory, MemAvailable drop) and seconds until all exited on SIGTERM."""
    d = tempfile.mkdtemp(dir=_SCRATCH)
    before = meminfo()
    procs, consoles = [], []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            console = os.path.join(d, f"c{i}")
            consoles.append(console)
            procs.append(subprocess.Popen(
                [binary, "-kernel", guest, "-m", str(mem), "-serial", f"file:{console}",
                 "-append", "guest.exit=halt"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        pending = set(range(n))
        deadline = time.time() + 60 + n * 0.1
        while pending:
            for i in list(pending):
                try:
                    with open(consoles[i], "rb") as f:
                        if b"halting" in f.read():
                            pending.discard(i)
                except FileNotFoundError:
                    pass
                if procs[i].poll() is not None:
                    sys.exit(f"bench: density VM {i} exited {procs[i].returncode}")
            if time.time() > deadline:
                sys.exit(f"bench: {len(pending)} of {n} VMs did not come up")
            time.sleep(0.01)
        started = time.perf_counter() - t0
        time.sleep(0.5)
        after = meminfo()
        rss = [proc_kib(p.pid, "status", "VmRSS") for p in procs]
        cpu = [proc_cpu_ms(p.pid) for p in procs]
        threads = [proc_threads(p.pid) for p in procs]
        pss = [proc_kib(p.pid, "smaps_rollup", "Pss") for p in procs]
        kernel = sum(after.get(k, 0) - before.get(k, 0) for k in KERNEL_MEM_FIELDS)
        avail = before["MemAvailable"] - after["MemAvailable"]
    finally:
        t1 = time.perf_counter()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        stopped = time.perf_counter() - t1
    return {"n": n, "start_s": started, "stop_s": stopped, "rss": median(rss), "pss": median(pss),
            "kernel": kernel / n, "avail": avail / n, "cpu_ms": sum(cpu) / n,
            "threads": median(threads)}


def mib(kib):
    return f"{kib / 1024:.2f}"


SECTIONS = ("startup", "memory", "qmp", "restore", "density", "block")
HISTORY_MARK = "<!-- bench.py --write replaces everything above this line -->"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--iterations", type=int, default=20)
    ap.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    ap.add_argument("--density", default="10,100,1000",
                    help="comma-separated numbers of concurrent 32 MiB VMs (e.g. 10,100,1000)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    ap.add_argument("--write", help="also write the markdown report to this file")
    ap.add_argument("--no-block", action="store_true", help="skip the block throughput runs")
    ap.add_argument("--no-ratelimit", action="store_true", help="skip the block rate-limit runs")
    ap.add_argument("--altovirt", metavar="PATH",
                    help="measure this altovirt binary instead of the release build "
                         "(e.g. another profile, to compare two builds in back-to-back runs)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        sys.exit(f"bench: unknown section(s) {sorted(only - set(SECTIONS))}")
    if args.no_block:
        only.discard("block")

    binary, guest = build()
    if args.altovirt:
        if not (os.path.isfile(args.altovirt) and os.access(args.altovirt, os.X_OK)):
            sys.exit(f"bench: --altovirt {args.altovirt} is not an executable file")
        binary = os.path.abspath(args.altovirt)
    qemu = ensure_qemu()
    qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    vmms = [
        Vmm("altovirt", lambda e, s, d=None, x="", l="": altovirt_cmd(binary, guest, args.mem, e, s, d, x, l)),
        Vmm("qemu microvm", lambda e, s, d=None, x="", l="": qemu_cmd(qemu, guest, args.mem, e, s, d, x, l)),
    ]
    fc = os.environ.get("FIRECRACKER")
    fc_note = "Firecracker: not run (set FIRECRACKER=/path/to/firecracker to add it)."
    if fc:
        if not (os.path.isfile(fc) and os.access(fc, os.X_OK)):
            sys.exit(f"bench: FIRECRACKER={fc} is not an executable file")
        fc_version = subprocess.run([fc, "--version"], capture_output=True, text=True).stdout.splitlines()
        fc_note = f"{fc_version[0] if fc_version else fc}."
        vmms.insert(1, Vmm("firecracker", lambda e, s, d=None, x="", l="": firecracker_cmd(
            fc, guest, args.mem, e, s, d, x, l), console_on_stdout=True))
    print(fc_note, file=sys.stderr)

    load = os.getloadavg()
    lines = [
        f"Tiny PVH guest, {args.mem} MiB, 1 vCPU, {args.iterations} runs each, medians; "
        f"host: {platform.node()} ({os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"load average {load[0]:.2f} at the start); {qemu_version}; {fc_note}",
    ]
    if "startup" in only:
        res = paired_start_exit(vmms, args.iterations)
        lines += ["", "Start-up and exit, paired runs (each iteration boots every VMM once, in turn; "
                  "the ratio is the median of the per-iteration ratios altovirt ÷ that VMM):", "",
                  "| VMM | exec→first guest byte (ms) | exec→exit (ms) | altovirt ÷ VMM, exit | "
                  "CPU user+sys (ms) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for v in vmms:
            r = res[v.name]
            lines.append(f"| {v.name} | {median(r['first']):.1f} | {median(r['exit']):.1f} | "
                         f"{r['exit_ratio']:.2f} | {median(r['cpu']):.1f} |")
    if "memory" in only:
        lines += ["", "Memory of the VMM while the guest is up (sum of `Rss` over the mappings "
                  "smaller than guest RAM in /proc/PID/smaps, median of 3):", "",
                  "| VMM | RSS excl. guest RAM (MiB) |", "| --- | ---: |"]
        for v in vmms:
            lines.append(f"| {v.name} | {mib(memory(v, args.mem))} |")
    if "qmp" in only:
        def alto_qmp(sock, console):
            return [binary, "-kernel", guest, "-m", str(args.mem), "-smp", "1",
                    "-serial", f"file:{console}", "-append", "guest.exit=halt",
                    "-qmp", f"unix:{sock},server,nowait"]

        def qemu_qmp(sock, console):
            return qemu_cmd(qemu, guest, args.mem, "halt", f"file:{console}") + [
                "-qmp", f"unix:{sock},server=on,wait=off"]
        a = qmp_bench("altovirt", alto_qmp, args.mem, hotplug_cycles=200)
        qm = qmp_bench("qemu microvm", qemu_qmp, args.mem)
        lines += ["", "QMP on one connection: 1,000 timed `query-status` round trips, then 9,000 more "
                  "commands (a mix of queries), then 200 hotplug cycles (`blockdev-add` + `device_add` "
                  "timed, then `device_del` + `blockdev-del`; altovirt's default machine, with its "
                  "hotplug slots). RSS excludes guest RAM:", "",
                  "| VMM | query-status p50 / p99 (µs) | hotplug p50 / p99 (ms) | RSS after boot (MiB) | "
                  "after 10,000 commands | after 200 hotplug cycles |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |",
                  f"| altovirt | {a['qmp_p50']:.0f} / {a['qmp_p99']:.0f} | {a['hp_p50']:.2f} / "
                  f"{a['hp_p99']:.2f} | {mib(a['rss_boot'])} | {mib(a['rss_qmp'])} | {mib(a['rss_hotplug'])} |",
                  f"| qemu microvm | {qm['qmp_p50']:.0f} / {qm['qmp_p99']:.0f} | n/a: no hotplug on microvm | "
                  f"{mib(qm['rss_boot'])} | {mib(qm['rss_qmp'])} | n/a |"]
        if fc:
            lines.append("| firecracker | n/a: no QMP | | | | |")
    if "restore" in only:
        cold, warm, size = restore_bench(binary, guest, args.mem, args.iterations)
        lines += ["", "Snapshot restore (altovirt; the counter guest, `guest.exit=counter`): cold boot is "
                  "exec → `counter: ready`; restore is exec of the same command line with "
                  f"`-incoming file:DIR` → the `count` line answering a byte written at once "
                  f"(snapshot {size / (1 << 20):.1f} MiB of disk blocks), paired runs:", "",
                  "| | exec→guest running (ms) |", "| --- | ---: |",
                  f"| cold boot | {cold:.1f} |", f"| restore | {warm:.1f} |"]
    if "density" in only:
        rows = [density_run(binary, guest, int(n)) for n in args.density.split(",")]
        lines += ["", "Density: N altovirt processes started at once, 32 MiB each, default machine, "
                  "a guest that halts and stays up; start is exec of the first → `halting` from the "
                  "last; per VM: median VmRSS and PSS (/proc/PID/smaps_rollup, guest RAM it touched "
                  f"included), the growth of the host kernel's own memory ({' + '.join(KERNEL_MEM_FIELDS)} "
                  "in /proc/meminfo) and of MemAvailable's drop, divided by N; CPU / VM is user + "
                  "system time of each VMM process up to that point (nearly all of it the guest's "
                  "boot, which runs as the vCPU thread's system time), averaged; threads is the "
                  "median thread count of a VMM (the host kernel may add one of its own per VM, "
                  "e.g. `kvm-nx-lpage-recovery`); stop is SIGTERM to all → all reaped. With "
                  f"{os.cpu_count()} CPUs, start all is about N × CPU / VM ÷ CPUs once N is large:", "",
                  "| N | start all (s) | CPU / VM (ms) | threads / VM | VmRSS / VM (MiB) | PSS / VM (MiB) | "
                  "host kernel / VM (MiB) | MemAvailable drop / VM (MiB) | stop all (s) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['n']} | {r['start_s']:.2f} | {r['cpu_ms']:.0f} | {r['threads']:g} | "
                         f"{mib(r['rss'])} | {mib(r['pss'])} | "
                         f"{mib(r['kernel'])} | {mib(r['avail'])} | {r['stop_s']:.2f} |")
    if "block" in only:
        bvmms = [(v.name, v.cmd) for v in vmms if not v.console_on_stdout]
        with tempfile.TemporaryDirectory() as d:
            disk = os.path.join(d, "disk.img")
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            lines += ["", "Block reads from the same guest (virtio-blk, one request in flight, "
                      "sequential, raw image in the page cache; time per request is the wall-time "
                      "difference between N requests and none in back-to-back runs, median of 5 such pairs):", "",
                      "| VMM | 4 KiB: µs/request | 4 KiB: MiB/s | 64 KiB: µs/request | 64 KiB: MiB/s |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            for name, make in bvmms:
                small = block_throughput(make, disk, 4096, 5000)
                big = block_throughput(make, disk, 65536, 2000)
                lines.append(f"| {name} | {small[0]:.1f} | {small[1]:.1f} | {big[0]:.1f} | {big[1]:.1f} |")
            if not args.no_ratelimit:
                lines += rate_limit_rows(bvmms, disk)
    load = os.getloadavg()
    lines += ["", f"Load average at the end: {load[0]:.2f}."]
    report = "\n".join(lines)
    print(report)
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    if args.write:
        history = ""
        if os.path.exists(args.write):
            old = open(args.write).read()
            if HISTORY_MARK in old:
                history = old[old.index(HISTORY_MARK):]
        command = " ".join(["scripts/bench.py"] + sys.argv[1:])
        if fc:
            command = "FIRECRACKER=… " + command
        with open(args.write, "w") as f:
            f.write("# Benchmarks\n\nProduced by `" + command + "`"
                    f" on {time.strftime('%Y-%m-%d')}.\n\n"
                    "The guest is `tests/guests` built as an ELF with a PVH note, which every VMM boots. "
                    "For the timing runs it triple-faults right after printing its report (the VMMs exit on "
                    "that; QEMU with `-no-reboot`); for the memory samples it halts and the VMM's "
                    "`/proc/PID/smaps` is read.\n\n")
            f.write(report + "\n")
            if history:
                f.write("\n" + history)


if __name__ == "__main__":
    main()
