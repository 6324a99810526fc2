#!/usr/bin/env python3
"""Run a receiver command and time its start-up: from spawning it to its first output line
starting with PREFIX (default `listening`). Its stdout and stderr go to LOG; the time, in
seconds, goes to LOG.listen as soon as the line appears (nothing when it never does). Exits
with the command's status.

    listen_time.py [--prefix P] LOG -- COMMAND...
"""
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    prefix = "listening"
    if args[:1] == ["--prefix"]:
        prefix, args = args[1], args[2:]
    if len(args) < 3 or args[1] != "--":
        sys.exit(__doc__)
    log, cmd = args[0], args[2:]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        seen = False
        for line in p.stderr:
            if not seen and line.startswith(prefix.encode()):
                seen = True
                with open(log + ".listen", "w") as f:
                    f.write(f"{time.monotonic() - t0:.6f}\n")
            out.write(line)
            out.flush()
        sys.exit(p.wait())


if __name__ == "__main__":
    main()
