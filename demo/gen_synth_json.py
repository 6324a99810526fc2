#!/usr/bin/env python3
# ============================== DEMO ==============================
# DEMO material only: a synthetic JSON generator for demo/run.sh. No production code path
# uses it.
#
#   demo/gen_synth_json.py --out FILE --size-mb N [--seed S]
#
# Writes a JSON array of event records, at least N MiB (it stops at the first record past N
# MiB and closes the array). The output depends only on --seed and --size-mb: every choice
# comes from SplitMix64 (the snapshot's generator), so it is byte-identical on any machine and
# Python version.
import argparse
import json
import sys

BANNER = "=== DEMO === synthetic JSON generator (demo material, not part of pfs) ==="
MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n

    def pick(self, items):
        return items[self.below(len(items))]


EVENTS = ["login", "logout", "view", "click", "purchase", "refund", "search", "upload", "error"]
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-northeast"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/7.88.1", "pfs-demo/1.0", "python-requests/2.31"]
WORDS = ["alpha", "beta", "gamma", "delta", "packet", "frame", "queue", "snapshot", "blueprint",
         "segment", "spill", "ring", "socket", "kernel", "bypass", "xdp"]


def record(rng, i):
    t = 1_700_000_000 + i * 7 + rng.below(7)
    rec = {
        "id": i,
        "ts": f"2026-11-{1 + (t // 86400) % 28:02d}T{(t // 3600) % 24:02d}:{(t // 60) % 60:02d}:{t % 60:02d}Z",
        "user": f"user_{rng.below(5000):05d}",
        "event": rng.pick(EVENTS),
        "region": rng.pick(REGIONS),
        "latency_ms": round(rng.below(250_000) / 1000, 3),
        "ok": rng.below(20) != 0,
        "agent": rng.pick(AGENTS),
        "tags": [rng.pick(WORDS) for _ in range(rng.below(4))],
        "msg": " ".join(rng.pick(WORDS) for _ in range(3 + rng.below(8))),
    }
    if rec["event"] == "purchase":
        rec["amount"] = {"currency": "EUR", "cents": rng.below(100_000)}
    return rec


def main():
    ap = argparse.ArgumentParser(description="DEMO: deterministic synthetic JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size-mb", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(BANNER, file=sys.stderr)
    target = int(a.size_mb * 1024 * 1024)
    rng = SplitMix64(a.seed)
    written = 0
    with open(a.out, "w", encoding="ascii", newline="\n") as f:
        f.write("[\n")
        written = 2
        i = 0
        while written < target:
            line = ("" if i == 0 else ",\n") + json.dumps(record(rng, i), separators=(", ", ": "))
            f.write(line)
            written += len(line)
            i += 1
        f.write("\n]\n")
        written += 3
    print(f"DEMO: wrote {a.out}: {written} bytes, {i} records, seed {a.seed}", file=sys.stderr)


if __name__ == "__main__":
    main()
