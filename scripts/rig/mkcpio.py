#!/usr/bin/env python3
"""Writes a newc ("070701") cpio archive, as the Linux initramfs loader reads
it, from a manifest on stdin. Runs as any user: device nodes and ownership are
written into the headers, never created on the host.

Manifest lines (fields separated by whitespace; '#' starts a comment):
    dir   DEST [MODE]
    file  DEST SRC [MODE]          MODE defaults to SRC's permission bits
    slink DEST TARGET
    nod   DEST c|b MAJOR MINOR [MODE]

Parent directories of every DEST are added automatically. All entries are
owned by root (uid 0, gid 0).

usage: mkcpio.py OUTPUT < manifest
"""

import gzip
import os
import stat
import sys


class Writer:
    def __init__(self, out):
        self.out = out
        self.ino = 300000
        self.seen = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        self.ino += 1
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(
            "%08X" % v
            for v in (
                self.ino,
                mode,
                0,  # uid
                0,  # gid
                nlink,
                0,  # mtime: fixed so that archives are reproducible
                len(data),
                0,  # dev major
                0,  # dev minor
                rdev[0],
                rdev[1],
                len(name_b),
                0,  # check
            )
        )
        self.out.write(hdr.encode())
        self.out.write(name_b)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self):
        n = self.out.tell() % 4
        if n:
            self.out.write(b"\0" * (4 - n))

    def parents(self, dest):
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]), 0o755)

    def dir(self, dest, mode=0o755):
        dest = dest.strip("/")
        if not dest or dest in self.seen:
            return
        self.parents(dest)
        self.seen.add(dest)
        self._entry(dest, stat.S_IFDIR | mode, nlink=2)

    def file(self, dest, src, mode=None):
        dest = dest.strip("/")
        self.parents(dest)
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = os.stat(src).st_mode & 0o7777
        self.seen.add(dest)
        self._entry(dest, stat.S_IFREG | mode, data)

    def slink(self, dest, target):
        dest = dest.strip("/")
        self.parents(dest)
        self.seen.add(dest)
        self._entry(dest, stat.S_IFLNK | 0o777, target.encode())

    def nod(self, dest, kind, major, minor, mode=0o600):
        dest = dest.strip("/")
        self.parents(dest)
        ftype = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        self.seen.add(dest)
        self._entry(dest, ftype | mode, rdev=(major, minor))

    def trailer(self):
        self._entry("TRAILER!!!", 0)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: mkcpio.py OUTPUT < manifest")
    out_path = sys.argv[1]
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as raw:
        import io

        buf = io.BytesIO()
        w = Writer(buf)
        for lineno, line in enumerate(sys.stdin, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            kind, args = line[0], line[1:]
            try:
                if kind == "dir":
                    w.dir(args[0], int(args[1], 8) if len(args) > 1 else 0o755)
                elif kind == "file":
                    w.file(args[0], args[1], int(args[2], 8) if len(args) > 2 else None)
                elif kind == "slink":
                    w.slink(args[0], args[1])
                elif kind == "nod":
                    w.nod(args[0], args[1], int(args[2]), int(args[3]),
                          int(args[4], 8) if len(args) > 4 else 0o600)
                else:
                    raise ValueError("unknown entry type %r" % kind)
            except (IndexError, ValueError, OSError) as e:
                sys.exit("mkcpio.py: manifest line %d: %s" % (lineno, e))
        w.trailer()
        data = buf.getvalue()
        if out_path.endswith(".gz"):
            data = gzip.compress(data, compresslevel=1, mtime=0)
        raw.write(data)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    main()
