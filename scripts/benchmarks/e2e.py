#!/usr/bin/env python3
"""Helpers of the end-to-end benchmark (scripts/benchmarks/e2e_bench.sh).

    e2e.py time --watch FINAL [--timeout S] -- CMD...
        Start CMD and time it: `file_s` = seconds from starting CMD until FINAL appears under
        its name (inotify on its directory: created or renamed into place), `exit_s` = seconds
        until CMD exits. Prints one JSON line {"file_s", "exit_s", "rc"}. Without --watch only
        exit_s is measured. Exits 1 when CMD fails or FINAL does not appear.
    e2e.py tcp-recv --listen IP --port P --out FINAL [--no-sync] [--zstd-patch-from OLD | --zstd]
        Accept one TCP connection, write what arrives to FINAL.part (through `zstd -d
        --long=30 --patch-from=OLD` when given, `zstd -d` with --zstd), fsync it (unless --no-sync), rename it to
        FINAL and fsync the directory (unless --no-sync). Prints "listening" when bound, then
        one JSON line {"wire_bytes"}.
    e2e.py tcp-send --dst IP --port P FILE|-
        Connect and send FILE (sendfile) or standard input, then close.
"""
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_CLOSE_WRITE = 0x8


def usage():
    sys.stderr.write(__doc__)
    sys.exit(2)


def opts(argv, flags):
    """Parse --key value / --flag options up to '--'; returns (dict, rest)."""
    d, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return d, argv[i + 1:]
        if not a.startswith("--"):
            return d, argv[i:]
        k = a[2:]
        if k in flags:
            d[k] = True
            i += 1
        else:
            if i + 1 >= len(argv):
                usage()
            d[k] = argv[i + 1]
            i += 2
    return d, []


def cmd_time(argv):
    o, cmd = opts(argv, set())
    if not cmd:
        usage()
    timeout = float(o.get("timeout", "120"))
    watch = o.get("watch")
    fd = None
    if watch:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            sys.exit("e2e.py: inotify_init1 failed")
        d = os.path.dirname(os.path.abspath(watch)) or "."
        if libc.inotify_add_watch(fd, d.encode(), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) < 0:
            sys.exit(f"e2e.py: inotify_add_watch {d} failed")
        if os.path.exists(watch):
            sys.exit(f"e2e.py: {watch} exists before the run")
    name = os.path.basename(watch).encode() if watch else b""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr)
    done = {}

    def waiter():
        proc.wait()
        done["exit"] = time.perf_counter() - t0

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    file_s = None
    while watch and file_s is None:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            now = time.perf_counter() - t0
            try:
                buf = os.read(fd, 65536)
            except BlockingIOError:
                continue
            off = 0
            while off + 16 <= len(buf):
                _wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
                ev = buf[off + 16:off + 16 + ln].rstrip(b"\0")
                off += 16 + ln
                if ev == name and mask & (IN_CREATE | IN_MOVED_TO):
                    file_s = now
                    break
        elif "exit" in done and not os.path.exists(watch):
            # the command is gone and nothing is coming; give stragglers a moment
            if time.perf_counter() - t0 > done["exit"] + 5:
                break
    th.join(max(0.0, timeout - (time.perf_counter() - t0)))
    rc = proc.poll()
    if rc is None:
        proc.kill()
        proc.wait()
    out = {"file_s": file_s, "exit_s": done.get("exit"), "rc": rc}
    print(json.dumps(out), flush=True)
    if rc != 0 or (watch and file_s is None):
        sys.exit(1)


def cmd_tcp_recv(argv):
    o, _ = opts(argv, {"no-sync", "zstd"})
    final = o["out"]
    part = final + ".part"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((o["listen"], int(o["port"])))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    n = 0
    f = None
    dec = None
    if "zstd-patch-from" in o or "zstd" in o:
        basis = ["--long=30", "--patch-from=" + o["zstd-patch-from"]] if "zstd-patch-from" in o else []
        dec = subprocess.Popen(["zstd", "-d", "-q", "-f", *basis, "-o", part], stdin=subprocess.PIPE)
        sink = dec.stdin
    else:
        f = open(part, "wb")
        sink = f
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
        sink.write(b)
    c.close()
    if dec:
        dec.stdin.close()
        if dec.wait() != 0:
            sys.exit("e2e.py: zstd -d failed")
        f = open(part, "rb+")
    else:
        f.flush()
    if "no-sync" not in o:
        os.fsync(f.fileno())
    f.close()
    os.rename(part, final)
    if "no-sync" not in o:
        dfd = os.open(os.path.dirname(os.path.abspath(final)), os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    print(json.dumps({"wire_bytes": n}), flush=True)


def cmd_tcp_send(argv):
    o, rest = opts(argv, set())
    if len(rest) != 1:
        usage()
    c = socket.create_connection((o["dst"], int(o["port"])))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if rest[0] == "-":
        src = sys.stdin.buffer
        while True:
            b = src.read1(1 << 20)
            if not b:
                break
            c.sendall(b)
    else:
        with open(rest[0], "rb") as f:
            c.sendfile(f)
    c.shutdown(socket.SHUT_WR)
    # wait for the receiver to close: the whole stream has been read
    c.recv(1)
    c.close()


def main():
    if len(sys.argv) < 2:
        usage()
    cmd, argv = sys.argv[1], sys.argv[2:]
    {"time": cmd_time, "tcp-recv": cmd_tcp_recv, "tcp-send": cmd_tcp_send}.get(cmd, lambda _: usage())(argv)


if __name__ == "__main__":
    main()
