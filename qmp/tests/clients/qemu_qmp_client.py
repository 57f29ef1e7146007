#!/usr/bin/env python3
"""Drives the qmp crate's test server with QEMU's Python library (qemu.qmp).

Usage: qemu_qmp_client.py SOCKET
Prints one line per check and "qemu.qmp: all checks passed" at the end.
"""

import asyncio
import socket
import sys

from qemu.qmp import ExecuteError, QMPClient

SOCK = sys.argv[1]
TIMEOUT = 10


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok - {name}")


async def expect_error(qmp, cmd, args, cls):
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as e:
        check(f"{cmd} fails with {cls}", e.error_class == cls, e)
        return
    check(f"{cmd} fails", False)


async def main():
    qmp = QMPClient("qmp-crate-test")
    await qmp.connect(SOCK)  # greeting + qmp_capabilities
    # qemu.qmp's Greeting model exposes members as attributes.
    ver = qmp.greeting.QMP.version
    check("greeting version", ver["qemu"]["major"] >= 5, ver)
    check("no capabilities offered", list(qmp.greeting.QMP.capabilities) == [])

    status = await qmp.execute("query-status")
    check("query-status", status["status"] == "running", status)

    check("stop", await qmp.execute("stop") == {})
    event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
    check("STOP event", event["event"] == "STOP", event)
    check("timestamp", 0 <= event["timestamp"]["microseconds"] < 10**6, event)

    names = {c["name"] for c in await qmp.execute("query-commands")}
    check("query-commands", {"getfd", "device_add", "qmp_capabilities"} <= names, names)

    await expect_error(qmp, "no-such-command", None, "CommandNotFound")
    await expect_error(qmp, "stop", {"bogus": 1}, "GenericError")
    await expect_error(qmp, "getfd", {"fdname": "x"}, "GenericError")

    # Descriptors ride on a lone space (send_fd_scm), then getfd names them.
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    qmp.send_fd_scm(a.fileno())
    check("getfd tap0", await qmp.execute("getfd", {"fdname": "tap0"}) == {})
    qmp.send_fd_scm(c.fileno())
    check("getfd spare", await qmp.execute("getfd", {"fdname": "spare"}) == {})
    res = await qmp.execute("netdev_add", {"type": "tap", "id": "n0", "fd": "tap0"})
    check("netdev_add takes the fd", res == {}, res)
    check("closefd", await qmp.execute("closefd", {"fdname": "spare"}) == {})
    await expect_error(qmp, "closefd", {"fdname": "spare"}, "GenericError")
    for s in (a, b, c, d):
        s.close()

    check("device_del", await qmp.execute("device_del", {"id": "disk1"}) == {})
    event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
    check("DEVICE_DELETED", event["event"] == "DEVICE_DELETED" and event["data"]["device"] == "disk1", event)

    await qmp.disconnect()
    print("qemu.qmp: all checks passed")


asyncio.run(main())
