#!/usr/bin/env python3
"""Drives a real altovirt with QEMU's own Python QMP library (qemu.qmp).

Usage: test_qemu_qmp.py ALTOVIRT_BINARY GUEST_IMAGE
Exits 0 when every check passes; prints one line per check.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

from qemu.qmp import ExecuteError, QMPClient

BINARY, GUEST = sys.argv[1], sys.argv[2]
TIMEOUT = 20


def start_vm(tmp, extra=()):
    sock = os.path.join(tmp, "qmp.sock")
    console = os.path.join(tmp, "console")
    proc = subprocess.Popen(
        [BINARY, "-kernel", GUEST, "-append", "guest.exit=halt", "-smp", "2", "-m", "64",
         "-name", "qmp-test", "-uuid", "12345678-1234-1234-1234-1234567890AB",
         "-serial", f"file:{console}", "-qmp", f"unix:{sock},server,nowait", *extra],
        stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not os.path.exists(sock):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"QMP socket never appeared (altovirt status {proc.poll()})")
        time.sleep(0.01)
    return proc, sock, console


def wait_console(console, needle):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        try:
            with open(console, errors="replace") as f:
                if needle in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"console never showed {needle!r}")


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok - {name}")


async def next_event(qmp, name):
    event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
    check(f"event {name}", event["event"] == name, event)
    ts = event["timestamp"]
    check(f"event {name} timestamp", ts["seconds"] > 0 and 0 <= ts["microseconds"] < 10**6, ts)
    return event


async def lifecycle(tmp):
    proc, sock, console = start_vm(tmp)
    qmp = QMPClient("altovirt-test")
    await qmp.connect(sock)  # greeting + qmp_capabilities
    version = qmp.greeting.QMP.version
    check("greeting version >= 5", version["qemu"]["major"] >= 5, version)
    check("greeting package", version["package"].startswith("altovirt"), version)
    wait_console(console, "halting")

    status = await qmp.execute("query-status")
    check("query-status running", status == {"running": True, "singlestep": False, "status": "running"}, status)

    check("stop", await qmp.execute("stop") == {})
    await next_event(qmp, "STOP")
    status = await qmp.execute("query-status")
    check("query-status paused", status["status"] == "paused" and not status["running"], status)

    check("cont", await qmp.execute("cont") == {})
    await next_event(qmp, "RESUME")
    check("running again", (await qmp.execute("query-status"))["status"] == "running")

    cpus = await qmp.execute("query-cpus-fast")
    check("query-cpus-fast has 2 vCPUs", len(cpus) == 2, cpus)
    for cpu in cpus:
        comm = open(f"/proc/{proc.pid}/task/{cpu['thread-id']}/comm").read().strip()
        check(f"vCPU {cpu['cpu-index']} thread-id is its thread", comm == f"vcpu{cpu['cpu-index']}", comm)

    check("query-name", await qmp.execute("query-name") == {"name": "qmp-test"})
    uuid = await qmp.execute("query-uuid")
    check("query-uuid", uuid == {"UUID": "12345678-1234-1234-1234-1234567890ab"}, uuid)
    kvm = await qmp.execute("query-kvm")
    check("query-kvm", kvm == {"enabled": True, "present": True}, kvm)
    names = {c["name"] for c in await qmp.execute("query-commands")}
    check("query-commands", {"stop", "cont", "quit", "query-status", "system_powerdown"} <= names, names)
    check("query-hotpluggable-cpus not listed", "query-hotpluggable-cpus" not in names, names)
    try:
        await qmp.execute("query-hotpluggable-cpus")
        check("query-hotpluggable-cpus fails", False)
    except ExecuteError as e:
        check("query-hotpluggable-cpus fails as on QEMU's microvm",
              e.error_class == "GenericError" and str(e) == "machine does not support hot-plugging CPUs", e)

    # The ACPI power button: the guest (halted) ignores it and runs on.
    check("system_powerdown", await qmp.execute("system_powerdown") == {})
    await next_event(qmp, "POWERDOWN")
    check("running after system_powerdown", (await qmp.execute("query-status"))["status"] == "running")

    try:
        await qmp.execute("no-such-command")
        check("unknown command fails", False)
    except ExecuteError as e:
        check("unknown command is CommandNotFound", e.error_class == "CommandNotFound", e)
    try:
        await qmp.execute("stop", {"bogus": 1})
        check("bad argument fails", False)
    except ExecuteError as e:
        check("unexpected argument is GenericError", e.error_class == "GenericError", e)
    check("VM still running after errors", (await qmp.execute("query-status"))["status"] == "running")

    # getfd with SCM_RIGHTS, then closefd.
    a, b = socket.socketpair()
    qmp.send_fd_scm(a.fileno())
    check("getfd", await qmp.execute("getfd", {"fdname": "fd0"}) == {})
    check("closefd", await qmp.execute("closefd", {"fdname": "fd0"}) == {})
    try:
        await qmp.execute("closefd", {"fdname": "fd0"})
        check("closefd twice fails", False)
    except ExecuteError as e:
        check("closefd twice is GenericError", e.error_class == "GenericError", e)
    a.close()
    b.close()

    check("quit", await qmp.execute("quit") == {})
    event = await next_event(qmp, "SHUTDOWN")
    check("SHUTDOWN data", event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event)
    # After quit the VMM closes the socket (QEMU does too); qemu.qmp may have
    # seen that EOF already and reports it here, as QEMU's own harness expects.
    try:
        await qmp.disconnect()
    except EOFError:
        pass
    check("altovirt exits 0 on quit", proc.wait(TIMEOUT) == 0)
    check("QMP socket removed", not os.path.exists(sock))


async def prelaunch(tmp):
    proc, sock, console = start_vm(tmp, ["-S"])
    qmp = QMPClient("altovirt-test")
    await qmp.connect(sock)
    status = await qmp.execute("query-status")
    check("-S starts in prelaunch", status == {"running": False, "singlestep": False, "status": "prelaunch"}, status)
    time.sleep(0.3)
    check("-S guest has not run", not os.path.exists(console) or os.path.getsize(console) == 0)
    await qmp.execute("cont")
    await next_event(qmp, "RESUME")
    wait_console(console, "halting")
    check("cont starts the guest", True)
    await qmp.disconnect()
    proc.terminate()
    check("SIGTERM ends altovirt with 0", proc.wait(TIMEOUT) == 0)


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        await lifecycle(tmp)
    with tempfile.TemporaryDirectory() as tmp:
        await prelaunch(tmp)
    print("qemu.qmp: all checks passed")


asyncio.run(main())
