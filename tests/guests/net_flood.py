#!/usr/bin/env python3
"""Host-side sender for the test guest's `guest.virtio=net-rx` test.

Usage: net_flood.py IFACE COUNT PAYLOAD_BYTES

Sends COUNT Ethernet frames out of IFACE (normally the host end of a tap,
so they reach the VMM reading the tap) as fast as it can: destination
broadcast, source IFACE's MAC, ethertype 0x88B5, payload a 32-bit
big-endian sequence number from 0, then "altovirt-seq", zero-padded to
PAYLOAD_BYTES (at least 16, at most 1500). Prints "net_flood: sent COUNT"
when done.

A tap queues up to 500 frames for its reader (the kernel drops beyond
that), so a COUNT below that is never dropped on the host even when the
VMM reads slowly.

Exit status: 0 success; 3 usage or socket error (one "net_flood: error:
..." line on stderr). Needs CAP_NET_RAW (AF_PACKET). Standard library only.
"""

import socket
import struct
import sys

ETHERTYPE = 0x88B5
MAGIC = b"altovirt-seq"


def fail(msg):
    print(f"net_flood: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


def main(argv):
    if len(argv) != 4:
        fail(f"usage: {argv[0]} IFACE COUNT PAYLOAD_BYTES")
    iface = argv[1]
    try:
        count, size = int(argv[2]), int(argv[3])
    except ValueError:
        fail("COUNT and PAYLOAD_BYTES are integers")
    if count < 0 or not 4 + len(MAGIC) <= size <= 1500:
        fail("COUNT must be >= 0 and PAYLOAD_BYTES 16 to 1500")
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        s.bind((iface, ETHERTYPE))
        src = s.getsockname()[4]
    except OSError as e:
        fail(f"cannot open an AF_PACKET socket on {iface}: {e}")
    head = b"\xff" * 6 + src + struct.pack("!H", ETHERTYPE)
    for seq in range(count):
        payload = struct.pack("!I", seq) + MAGIC
        frame = head + payload + b"\0" * (size - len(payload))
        try:
            s.send(frame)
        except OSError as e:
            fail(f"cannot send frame {seq} on {iface}: {e}")
    print(f"net_flood: sent {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
