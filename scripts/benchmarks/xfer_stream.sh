#!/usr/bin/env bash
# Streaming send over a veth pair (root): when the first frames leave, and the wall time a
# user waits, for a random file and a release pair, on each transport.
#
#   scripts/benchmarks/xfer_stream.sh [--pfs BIN]... [--runs N] [--rate R] [--random-mb N] [--random-kb N] [--covered-mb N] [--no-libstd] [--old F --new F] [--transports "xdp udp"]
#
# --pfs twice (or more) compares builds in one sitting: they take turns run by run, and a
# table of medians per build closes the output.
# Snapshot: the default recipe plus OLD as a corpus bank (`pfs snapshot build --add OLD`).
# Files: NEW (default: nightly's libstd against stable's as OLD; --no-libstd leaves it out),
# N MiB of random bytes (--random-kb: N kB = N * 1000 B instead; 0: none) and, with
# --covered-mb, N MiB that the snapshot holds whole (cut from its banks).
# Per run it prints the sender's own marks from its metrics line (first_frame: from the start
# of `pfs send` to the first datagram handed to the frame path, a Hello; first_data: to the
# first data frame; total: to the receiver's confirmation), the wall time until `pfs send`
# and `pfs recv` exited (date +%s.%N around the commands), the sender's wire bytes, and the
# receiver's start-up: from spawning `ip netns exec ... pfs recv` to its `listening` line
# (scripts/benchmarks/listen_time.py; includes `ip netns exec` itself, a few ms).
# Sessions run with keys (scripts/keys.sh); PFS_INSECURE=1 runs them in plaintext.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs_bins=()
runs=3
rate=1gbit
random_mb=32
random_kb=""
covered_mb=0
libstd=yes
transports="xdp udp"
old=$(ls "$(rustc --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so 2>/dev/null | head -1 || true)
new=$(ls "$(rustc +nightly --print sysroot 2>/dev/null)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so 2>/dev/null | head -1 || true)
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs_bins+=("$(realpath "$2")"); shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --random-mb) random_mb=$2; shift 2 ;;
        --random-kb) random_kb=$2; shift 2 ;;
        --covered-mb) covered_mb=$2; shift 2 ;;
        --no-libstd) libstd=no; shift ;;
        --old) old=$2; shift 2 ;;
        --new) new=$2; shift 2 ;;
        --transports) transports=$2; shift 2 ;;
        *) sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ ${#pfs_bins[@]} -gt 0 ] || pfs_bins=("$PWD/target/release/pfs")
pfs=${pfs_bins[0]}
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
files=()
if [ -n "$random_kb" ]; then
    [ "$random_kb" = 0 ] || { head -c $((random_kb * 1000)) /dev/urandom >"$work/random-${random_kb}kB.bin"; files+=("$work/random-${random_kb}kB.bin"); }
elif [ "$random_mb" != 0 ]; then
    head -c $((random_mb << 20)) /dev/urandom >"$work/random.bin"
    files+=("$work/random.bin")
fi
if [ "$covered_mb" != 0 ]; then
    dd if="$work/snap/snapshot.bin" of="$work/covered-${covered_mb}MiB.bin" bs=1M skip=1 count="$covered_mb" status=none
    [ "$(stat -c %s "$work/covered-${covered_mb}MiB.bin")" = $((covered_mb << 20)) ] \
        || { echo "--covered-mb $covered_mb: the snapshot is smaller" >&2; exit 1; }
    files+=("$work/covered-${covered_mb}MiB.bin")
fi
pfs_keys "${pfs_bins[0]}" "$work/keys"
if [ "$libstd" = yes ]; then
    cp "$new" "$work/$(basename "$new")"
    files+=("$work/$(basename "$new")")
fi
now() { date +%s.%N; }
echo "old $old"
echo "new $new"
for i in "${!pfs_bins[@]}"; do echo "build B$((i + 1)): ${pfs_bins[$i]}"; done
rows=$work/rows.jsonl
: >"$rows"
for transport in $transports; do
    for f in "${files[@]}"; do
        for i in $(seq 1 "$runs"); do
            # the builds take turns, run by run (same inputs, same sitting)
            for bi in "${!pfs_bins[@]}"; do
                pfs=${pfs_bins[$bi]}
                build=B$((bi + 1))
                out="$work/out-$transport-$i"
                log="$work/recv.log"
                rm -rf "$out" "$work/m.send" "$log.listen"
                (python3 scripts/benchmarks/listen_time.py "$log" -- \
                    ip netns exec "$B" "$pfs" recv --once --transport "$transport" --iface "$B" --listen "$ipB" \
                    --snapshot "$work/snap" "${RECV_KEYS[@]}" --out-dir "$out" --metrics "$work/m.recv" --timeout 60
                 now >"$log.end") &
                rpid=$!
                for _ in $(seq 1 600); do [ -s "$log.listen" ] && break; sleep 0.01; done
                [ -s "$log.listen" ] || { cat "$log" >&2; exit 1; }
                t0=$(now)
                ip netns exec "$A" "$pfs" send --transport "$transport" --iface "$A" --dst "$ipB" \
                    --snapshot "$work/snap" "${SEND_KEYS[@]}" --rate "$rate" --metrics "$work/m.send" "$f" >"$log.send" 2>&1 \
                    || { cat "$log.send" >&2; exit 1; }
                t1=$(now)
                wait "$rpid"
                t2=$(cat "$log.end")
                cmp -s "$f" "$out/$(basename "$f")" || { echo "$build $transport run $i: received $(basename "$f") differs" >&2; exit 1; }
                python3 - "$t0" "$t1" "$t2" "$work/m.send" "$transport" "$(basename "$f")" "$i" "$(cat "$log.listen")" "$build" "$rows" <<'EOF'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:4])
listen = float(sys.argv[8])
build, rows = sys.argv[9], sys.argv[10]
m = json.loads(open(sys.argv[4]).read().strip().splitlines()[-1])
ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"
print(f"{build} {sys.argv[5]:4} {sys.argv[6]:28} run {sys.argv[7]}: first frame {ms(m.get('first_frame'))}, "
      f"first data {ms(m.get('first_data'))}, total {ms(m.get('total'))}; "
      f"send exit {t1 - t0:.3f} s, recv exit {t2 - t0:.3f} s; "
      f"file {m['file_bytes']} B, stream {m['stream_bytes']} B, wire {m['wire_bytes']} B, "
      f"streamed files {m.get('streamed_files')}; recv start to listening {listen * 1e3:.1f} ms")
with open(rows, "a") as r:
    r.write(json.dumps({"build": build, "transport": sys.argv[5], "file": sys.argv[6],
        "first_frame": m.get("first_frame"), "total": m.get("total"), "send_exit": t1 - t0,
        "recv_listen": listen}) + "\n")
EOF
            done
        done
    done
done
echo
echo "medians over $runs run(s), ms"
python3 - "$rows" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = []
for r in rows:
    k = (r["transport"], r["file"], r["build"])
    if k not in keys:
        keys.append(k)
def med(v):
    return f"{statistics.median(v) * 1e3:.1f}" if v else "-"
print("| transport | file | build | first frame | total (to the receiver's confirmation) | send exit | recv start to listening |")
print("|---|---|---|---:|---:|---:|---:|")
for k in keys:
    rs = [r for r in rows if (r["transport"], r["file"], r["build"]) == k]
    col = lambda n: med([r[n] for r in rs if r[n] is not None])
    print(f"| {k[0]} | {k[1]} | {k[2]} | {col('first_frame')} | {col('total')} | {col('send_exit')} | {col('recv_listen')} |")
EOF
