#!/usr/bin/env bash
# A real session on UDP loopback (keys on), the receiver sampled by perf (cpu-clock, DWARF
# stacks): a 32 MiB file the snapshot covers and 32 MiB of random bytes, each compared after.
#   scripts/benchmarks/profile_session.sh [PFS] [WORKDIR]
# then e.g. `perf report -i WORKDIR/covered.data --no-children` (docs/profile.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
pfs=${1:-target/release/pfs}; w=${2:-/tmp/pfs-profile}
pfs=$(realpath "$pfs")
rm -rf "$w"; mkdir -p "$w/in" "$w/out"
source scripts/keys.sh
"$pfs" snapshot build --size-mb 64 --out "$w"/snap >/dev/null 2>&1
dd if="$w"/snap/snapshot.bin of="$w"/in/covered.bin bs=1M skip=1 count=32 status=none
head -c 33554432 /dev/urandom > "$w"/in/random.bin
pfs_keys "$pfs" "$w"/keys 2>/dev/null
for f in covered random; do
  perf record -e cpu-clock --call-graph dwarf,16384 -o "$w"/$f.data -- "$pfs" recv --once "${RECV_KEYS[@]}" --transport udp --listen 127.0.0.1 --port 0 --snapshot "$w"/snap --out-dir "$w"/out > "$w"/$f.recv.log 2>&1 &
  rp=$!
  for _ in $(seq 300); do grep -q listening "$w"/$f.recv.log && break; sleep 0.1; done
  port=$(sed -n 's/.*listening on udp 127.0.0.1:\([0-9]*\).*/\1/p' "$w"/$f.recv.log)
  "$pfs" send "${SEND_KEYS[@]}" --transport udp --snapshot "$w"/snap --dst 127.0.0.1:$port "$w"/in/$f.bin > "$w"/$f.send.log 2>&1
  wait $rp
  tail -2 "$w"/$f.send.log
  cmp "$w"/in/$f.bin "$w"/out/$f.bin && echo "$f: bit-exact"
done
