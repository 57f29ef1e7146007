#!/usr/bin/env python3
"""Host-side peer for the test guest's `guest.virtio=net` test.

Usage: net_peer.py IFACE EXPECTED_TX_PAYLOAD REPLY_PAYLOAD TIMEOUT_SECONDS

Waits (up to TIMEOUT_SECONDS in all) for an Ethernet frame with ethertype
0x88B5 arriving from the guest on IFACE (normally the host end of a tap),
checks that its payload up to the first NUL byte is EXPECTED_TX_PAYLOAD,
then sends one frame to the frame's source MAC: source = IFACE's MAC,
ethertype 0x88B5, payload REPLY_PAYLOAD zero-padded to a 60-byte frame.

Prints "net_peer: listening on IFACE" (flushed) once the socket is bound,
so a caller can start the guest after that line. IFACE may appear late
(e.g. a tap the VMM creates): it is waited for within the timeout.

Exit status: 0 success; 1 wrong payload; 2 timeout; 3 usage or socket
error. Failures print one "net_peer: error: ..." line on stderr.

Needs CAP_NET_RAW (AF_PACKET). Linux only; standard library only.
"""

import os
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
ETH_HLEN = 14
MIN_FRAME = 60  # without FCS
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sends


def fail(code, msg):
    print(f"net_peer: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def mac_str(b):
    return ":".join(f"{x:02x}" for x in b)


def printable(b):
    return "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in b)


def open_socket(iface, deadline):
    """AF_PACKET socket bound to iface for ETHERTYPE, waiting for iface."""
    while not os.path.exists(f"/sys/class/net/{iface}"):
        if time.monotonic() >= deadline:
            fail(2, f"interface {iface} did not appear")
        time.sleep(0.01)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        s.bind((iface, ETHERTYPE))
    except OSError as e:
        fail(3, f"cannot open an AF_PACKET socket on {iface}: {e}")
    # sockaddr_ll of a bound packet socket carries the device's address.
    mac = s.getsockname()[4]
    if len(mac) != 6:
        try:
            with open(f"/sys/class/net/{iface}/address") as f:
                mac = bytes.fromhex(f.read().strip().replace(":", ""))
        except (OSError, ValueError) as e:
            fail(3, f"cannot read the MAC of {iface}: {e}")
    return s, mac


def main(argv):
    if len(argv) != 5:
        fail(3, f"usage: {argv[0]} IFACE EXPECTED_TX_PAYLOAD REPLY_PAYLOAD TIMEOUT_SECONDS")
    iface, expected, reply = argv[1], argv[2].encode(), argv[3].encode()
    try:
        timeout = float(argv[4])
    except ValueError:
        fail(3, f"bad timeout {argv[4]!r}")
    if ETH_HLEN + len(reply) > 1514:
        fail(3, "reply payload longer than 1500 bytes")
    deadline = time.monotonic() + timeout

    s, own_mac = open_socket(iface, deadline)
    print(f"net_peer: listening on {iface} ({mac_str(own_mac)})", flush=True)

    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            fail(2, f"no 0x{ETHERTYPE:04x} frame from the guest on {iface} within {timeout:g} s")
        frame, addr = s.recvfrom(65536)
        if addr[2] == PACKET_OUTGOING or len(frame) < ETH_HLEN:
            continue
        if struct.unpack("!H", frame[12:14])[0] != ETHERTYPE:
            continue
        break

    dst, src = frame[0:6], frame[6:12]
    payload = frame[ETH_HLEN:].split(b"\0", 1)[0]
    print(
        f"net_peer: got {len(frame)}-byte frame {mac_str(src)} -> {mac_str(dst)} "
        f"payload={printable(payload)}",
        flush=True,
    )
    if payload != expected:
        fail(1, f"guest payload is {printable(payload)!r}, expected {printable(expected)!r}")

    out = src + own_mac + struct.pack("!H", ETHERTYPE) + reply
    out += b"\0" * max(0, MIN_FRAME - len(out))
    try:
        s.send(out)
    except OSError as e:
        fail(3, f"cannot send the reply on {iface}: {e}")
    print(f"net_peer: sent reply to {mac_str(src)} payload={printable(reply)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
