#!/usr/bin/env python3
"""Sum a packed block stream's streams (raw and stored bytes per stream, the coders used).

    block_streams.py STREAM

STREAM: blocks end to end (`PFS_PRODUCER_DUMP=PATH` of benches/producer.rs writes one):
block := body_len u32 LE | body; body := varint file_len | varint nsegs | directory | data;
directory := 9 x (coder u8 | varint raw_len | varint stored_len) (src/blueprint/block.rs).
"""
import collections
import struct
import sys

NAMES = ["ops", "lens", "offs", "imms", "backs", "dzeros", "dbytes", "lits", "refs"]
CODERS = {0: "stored", 1: "zstd", 2: "lzma", 3: "xz"}


def varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    b = open(sys.argv[1], "rb").read()
    raw = collections.Counter()
    stored = collections.Counter()
    coders = collections.defaultdict(collections.Counter)
    at = blocks = file_bytes = heads = 0
    while at < len(b):
        (n,) = struct.unpack_from("<I", b, at)
        body = b[at + 4 : at + 4 + n]
        i = 0
        fl, i = varint(body, i)
        _, i = varint(body, i)
        for name in NAMES:
            c = body[i]
            r, i = varint(body, i + 1)
            st, i = varint(body, i)
            raw[name] += r
            stored[name] += st
            if r:
                coders[name][CODERS.get(c, str(c))] += 1
        heads += 4 + i
        file_bytes += fl
        blocks += 1
        at += 4 + n
    print(f"{blocks} blocks, {file_bytes:,} file bytes, {len(b):,} stream bytes, {heads:,} of them block heads and directories")
    print("| stream | raw | stored | coders (blocks) |")
    print("| --- | ---: | ---: | --- |")
    for name in NAMES:
        if raw[name]:
            c = ", ".join(f"{k} {v}" for k, v in coders[name].most_common())
            print(f"| {name} | {raw[name]:,} | {stored[name]:,} | {c} |")


if __name__ == "__main__":
    main()
