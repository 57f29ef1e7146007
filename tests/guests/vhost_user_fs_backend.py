#!/usr/bin/env python3
"""A minimal vhost-user virtio-fs backend for altovirt's tests (stdlib only).

Usage: vhost_user_fs_backend.py SOCKET_PATH [--stall-at=REQUEST]

Listens on SOCKET_PATH (like virtiofsd --socket-path), accepts one
frontend, and serves the vhost-user handshake (features, protocol features
REPLY_ACK and MQ, queue count, memory table, vrings). On every request-queue
kick it walks the split ring in the shared guest memory, answers FUSE_INIT
with 7.31 and anything else with -ENOSYS, then signals the call eventfd.

With --stall-at=REQUEST (a request number, e.g. 5 for SET_MEM_TABLE) it
stops answering when that request arrives, as a wedged backend would, but
keeps the connection open until the frontend closes or shuts it down.

It prints one line per notable event on stdout (flushed), for the test:
  listening
  connected
  mem regions=<n>
  vring <index> enabled
  fuse init <major>.<minor> unique=<n>
  vring <index> base=<n>        (GET_VRING_BASE)
  stalled <request>             (--stall-at)
  disconnected
"""

import mmap
import os
import select
import socket
import struct
import sys

GET_FEATURES, SET_FEATURES, SET_OWNER = 1, 2, 3
SET_MEM_TABLE = 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_ENABLE = 18

F_VERSION_1 = 1 << 32
F_PROTOCOL_FEATURES = 1 << 30
PROTO_MQ, PROTO_REPLY_ACK = 1 << 0, 1 << 3
FLAG_REPLY, FLAG_NEED_REPLY = 0x4, 0x8
NUM_QUEUES = 2

FUSE_INIT = 26
ENOSYS = 38
DESC_F_NEXT, DESC_F_WRITE = 1, 2


def say(line):
    print(line, flush=True)


class Backend:
    def __init__(self, conn, stall_at=None):
        self.conn = conn
        self.stall_at = stall_at
        self.regions = []  # (gpa, size, uaddr, mmap)
        self.rings = {}

    def ring(self, i):
        return self.rings.setdefault(
            i, {"num": 0, "base": 0, "addr": None, "kick": None, "call": None,
                "used_idx": 0}
        )

    # -- memory ------------------------------------------------------------

    def _find(self, addr, length, key):
        for gpa, size, uaddr, mm in self.regions:
            start = gpa if key == "gpa" else uaddr
            if start <= addr and addr + length <= start + size:
                return mm, addr - start
        raise ValueError(f"address {addr:#x}+{length} not in guest memory")

    def read(self, addr, length, key="gpa"):
        mm, off = self._find(addr, length, key)
        return mm[off:off + length]

    def write(self, addr, data, key="gpa"):
        mm, off = self._find(addr, len(data), key)
        mm[off:off + len(data)] = data

    # -- socket ------------------------------------------------------------

    def recv_exact(self, n, fds):
        buf = b""
        while len(buf) < n:
            data, got, _flags, _addr = socket.recv_fds(self.conn, n - len(buf), 8)
            if not data:
                raise EOFError
            buf += data
            fds.extend(got)
        return buf

    def reply(self, request, payload):
        hdr = struct.pack("<III", request, 0x1 | FLAG_REPLY, len(payload))
        self.conn.sendall(hdr + payload)

    def handle(self):
        fds = []
        request, flags, size = struct.unpack("<III", self.recv_exact(12, fds))
        body = self.recv_exact(size, fds) if size else b""
        if request == self.stall_at:
            say(f"stalled {request}")
            for fd in fds:
                os.close(fd)
            while self.conn.recv(4096):
                pass
            raise EOFError
        answered = True
        if request == GET_FEATURES:
            self.reply(request, struct.pack("<Q", F_VERSION_1 | F_PROTOCOL_FEATURES))
        elif request == GET_PROTOCOL_FEATURES:
            self.reply(request, struct.pack("<Q", PROTO_MQ | PROTO_REPLY_ACK))
        elif request == GET_QUEUE_NUM:
            self.reply(request, struct.pack("<Q", NUM_QUEUES))
        elif request == GET_VRING_BASE:
            index, _ = struct.unpack("<II", body)
            r = self.ring(index)
            say(f"vring {index} base={r['base']}")
            self.reply(request, struct.pack("<II", index, r["base"]))
            r["addr"] = None
        else:
            answered = False
            self.apply(request, body, fds)
        if not answered and flags & FLAG_NEED_REPLY:
            self.reply(request, struct.pack("<Q", 0))

    def apply(self, request, body, fds):
        if request == SET_MEM_TABLE:
            count, _pad = struct.unpack_from("<II", body)
            for _, _, _, mm in self.regions:
                mm.close()
            self.regions = []
            for k in range(count):
                gpa, size, uaddr, off = struct.unpack_from("<QQQQ", body, 8 + 32 * k)
                mm = mmap.mmap(fds[k], size, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
                os.close(fds[k])
                self.regions.append((gpa, size, uaddr, mm))
            say(f"mem regions={count}")
        elif request == SET_VRING_NUM:
            index, num = struct.unpack("<II", body)
            self.ring(index)["num"] = num
        elif request == SET_VRING_BASE:
            index, num = struct.unpack("<II", body)
            self.ring(index)["base"] = num
            self.ring(index)["used_idx"] = num
        elif request == SET_VRING_ADDR:
            index, _flags, desc, used, avail, _log = struct.unpack("<IIQQQQ", body)
            self.ring(index)["addr"] = (desc, used, avail)
        elif request in (SET_VRING_KICK, SET_VRING_CALL):
            (value,) = struct.unpack("<Q", body)
            key = "kick" if request == SET_VRING_KICK else "call"
            r = self.ring(value & 0xFF)
            if r[key] is not None:
                os.close(r[key])
            r[key] = fds[0] if fds else None
        elif request == SET_VRING_ENABLE:
            index, on = struct.unpack("<II", body)
            if on:
                say(f"vring {index} enabled")
        else:
            for fd in fds:
                os.close(fd)

    # -- queues ------------------------------------------------------------

    def serve_ring(self, index):
        r = self.rings[index]
        if r["addr"] is None or not r["num"]:
            return
        desc, used, avail = r["addr"]
        num = r["num"]
        (avail_idx,) = struct.unpack("<H", self.read(avail + 2, 2, "uaddr"))
        served = False
        while r["base"] != avail_idx:
            slot = r["base"] % num
            (head,) = struct.unpack("<H", self.read(avail + 4 + 2 * slot, 2, "uaddr"))
            readable, writable = b"", []
            i = head
            for _ in range(num):
                addr, length, flags, nxt = struct.unpack(
                    "<QIHH", self.read(desc + 16 * i, 16, "uaddr"))
                if flags & DESC_F_WRITE:
                    writable.append((addr, length))
                else:
                    readable += self.read(addr, length)
                if not flags & DESC_F_NEXT:
                    break
                i = nxt
            written = self.fuse(readable, writable) if index > 0 else 0
            uslot = r["used_idx"] % num
            self.write(used + 4 + 8 * uslot, struct.pack("<II", head, written), "uaddr")
            r["used_idx"] = (r["used_idx"] + 1) & 0xFFFF
            self.write(used + 2, struct.pack("<H", r["used_idx"]), "uaddr")
            r["base"] = (r["base"] + 1) & 0xFFFF
            served = True
        if served and r["call"] is not None:
            os.write(r["call"], struct.pack("<Q", 1))

    def fuse(self, request, writable):
        if len(request) < 40:
            return 0
        _length, opcode, unique = struct.unpack_from("<IIQ", request)
        if opcode == FUSE_INIT and len(request) >= 48:
            major, minor = struct.unpack_from("<II", request, 40)
            say(f"fuse init {major}.{minor} unique={unique}")
            out = struct.pack("<IIIIHHIIHHI28x", 7, 31, 0x20000, 0, 16, 12, 0x20000, 1,
                              32, 0, 0)
            reply = struct.pack("<IiQ", 16 + len(out), 0, unique) + out
        else:
            reply = struct.pack("<IiQ", 16, -ENOSYS, unique)
        done = 0
        for addr, length in writable:
            chunk = reply[done:done + length]
            if not chunk:
                break
            self.write(addr, chunk)
            done += len(chunk)
        return done


def main():
    path = sys.argv[1]
    stall_at = None
    for arg in sys.argv[2:]:
        if arg.startswith("--stall-at="):
            stall_at = int(arg.split("=", 1)[1])
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    say("listening")
    conn, _ = listener.accept()
    say("connected")
    b = Backend(conn, stall_at)
    while True:
        kicks = {r["kick"]: i for i, r in b.rings.items() if r["kick"] is not None}
        ready, _, _ = select.select([conn] + list(kicks), [], [])
        for fd in ready:
            if fd is conn:
                try:
                    b.handle()
                except (EOFError, ConnectionResetError):
                    say("disconnected")
                    return
            else:
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    continue
                b.serve_ring(kicks[fd])


if __name__ == "__main__":
    main()
