#!/usr/bin/env python3
"""HDiffPatch (PyPI `hdiffpatch`) for the planner benchmark: one diff, timed, checked.

    hdp.py CONFIG OLD NEW OUT      CONFIG: zstd-3 | zstd-19 | lzma2-9; OLD may be /dev/null

Reads OLD and NEW, times `hdiffpatch.diff(old, new, config, validate=False)` plus writing the
patch to OUT (interpreter start and file reads are not counted), then applies the patch back
(untimed) and checks the result equals NEW. Prints one JSON line:
{"config", "bytes", "seconds", "verified"}; exits 1 (with the reason on stderr) when the
patch does not rebuild NEW.
"""
import json
import sys
import time

import hdiffpatch


def config(name):
    if name == "zstd-3":
        return hdiffpatch.ZStdConfig(level=3, window=23)
    if name == "zstd-19":
        return hdiffpatch.ZStdConfig(level=19, window=23)
    if name == "lzma2-9":
        return hdiffpatch.Lzma2Config(level=9)
    raise SystemExit(f"hdp.py: unknown config {name!r} (zstd-3, zstd-19, lzma2-9)")


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    name, old_path, new_path, out = sys.argv[1:]
    cfg = config(name)
    with open(old_path, "rb") as f:
        old = f.read()
    with open(new_path, "rb") as f:
        new = f.read()
    t = time.perf_counter()
    patch = hdiffpatch.diff(old, new, cfg, validate=False)
    with open(out, "wb") as f:
        f.write(patch)
    secs = time.perf_counter() - t
    ok = hdiffpatch.apply(old, patch) == new
    print(json.dumps({"config": name, "bytes": len(patch), "seconds": secs, "verified": ok}))
    if not ok:
        print(f"hdp.py: {name}: the patch does not rebuild {new_path}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
