#!/usr/bin/env bash
# Streaming send over a veth pair (root): when the first frames leave, and the wall time a
# user waits, for a random file and a release pair, on each transport.
#
#   scripts/benchmarks/xfer_stream.sh [--pfs BIN] [--runs N] [--rate R] [--random-mb N] [--old F --new F] [--transports "xdp udp"]
#
# Snapshot: the default recipe plus OLD as a corpus bank (`pfs snapshot build --add OLD`).
# Files: NEW (default: nightly's libstd against stable's as OLD) and N MiB of random bytes.
# Per run it prints the sender's own marks from its metrics line (first_frame: from the start
# of `pfs send` to the first datagram handed to the frame path, a Hello; first_data: to the
# first data frame; total: to the receiver's confirmation), the wall time until `pfs send`
# and `pfs recv` exited (date +%s.%N around the commands), and the sender's wire bytes.
# Sessions run with keys (scripts/keys.sh); PFS_INSECURE=1 runs them in plaintext.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
runs=3
rate=1gbit
random_mb=32
transports="xdp udp"
old=$(ls "$(rustc --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so 2>/dev/null | head -1 || true)
new=$(ls "$(rustc +nightly --print sysroot 2>/dev/null)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so 2>/dev/null | head -1 || true)
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --random-mb) random_mb=$2; shift 2 ;;
        --old) old=$2; shift 2 ;;
        --new) new=$2; shift 2 ;;
        --transports) transports=$2; shift 2 ;;
        *) sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "xfer_stream needs root (namespaces, XDP, AF_XDP)" >&2; exit 1; }
[ -f "$old" ] && [ -f "$new" ] || { echo "need --old and --new (the libstd pair was not found)" >&2; exit 1; }

name=pfsst$$
name=${name:0:12}
work=$(mktemp -d /tmp/pfs-xfer-stream.XXXXXX)
cleanup() {
    bash scripts/netns.sh down "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
net=$(( $$ % 200 + 20 ))
bash scripts/netns.sh up "$name" --queues 2 --mtu 1500 --net "$net" >&2
A=${name}a
B=${name}b
ipB=10.201.$net.2
"$pfs" snapshot build --add "$old" --out "$work/snap" >&2
head -c $((random_mb << 20)) /dev/urandom >"$work/random.bin"
cp "$new" "$work/$(basename "$new")"
pfs_keys "$pfs" "$work/keys"
now() { date +%s.%N; }
echo "old $old"
echo "new $new"
for transport in $transports; do
    for f in "$work/random.bin" "$work/$(basename "$new")"; do
        for i in $(seq 1 "$runs"); do
            out="$work/out-$transport-$i"
            log="$work/recv.log"
            rm -rf "$out" "$work/m.send"
            (ip netns exec "$B" "$pfs" recv --transport "$transport" --iface "$B" --listen "$ipB" \
                --snapshot "$work/snap" "${RECV_KEYS[@]}" --out-dir "$out" --metrics "$work/m.recv" --timeout 60 >"$log" 2>&1
             now >"$log.end") &
            rpid=$!
            for _ in $(seq 1 300); do grep -q '^listening' "$log" && break; sleep 0.05; done
            t0=$(now)
            ip netns exec "$A" "$pfs" send --transport "$transport" --iface "$A" --dst "$ipB" \
                --snapshot "$work/snap" "${SEND_KEYS[@]}" --rate "$rate" --metrics "$work/m.send" "$f" >"$log.send" 2>&1 \
                || { cat "$log.send" >&2; exit 1; }
            t1=$(now)
            wait "$rpid"
            t2=$(cat "$log.end")
            cmp -s "$f" "$out/$(basename "$f")" || { echo "$transport run $i: received $(basename "$f") differs" >&2; exit 1; }
            python3 - "$t0" "$t1" "$t2" "$work/m.send" "$transport" "$(basename "$f")" "$i" <<'EOF'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:4])
m = json.loads(open(sys.argv[4]).read().strip().splitlines()[-1])
ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"
print(f"{sys.argv[5]:4} {sys.argv[6]:28} run {sys.argv[7]}: first frame {ms(m.get('first_frame'))}, "
      f"first data {ms(m.get('first_data'))}, total {ms(m.get('total'))}; "
      f"send exit {t1 - t0:.3f} s, recv exit {t2 - t0:.3f} s; "
      f"file {m['file_bytes']} B, stream {m['stream_bytes']} B, wire {m['wire_bytes']} B, "
      f"streamed files {m.get('streamed_files')}")
EOF
        done
    done
done
