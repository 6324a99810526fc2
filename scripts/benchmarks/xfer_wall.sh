#!/usr/bin/env bash
# Wall time of a transfer as a user sees it (root, veth): from starting `pfs send` to each
# command's exit, for a file the snapshot covers, next to the summaries' own figures.
#
#   scripts/benchmarks/xfer_wall.sh [--pfs BIN] [--runs N] [--covered-mb N] [--snap-mb N] [--rate R] [--transport T]
#
# Prints one line per run: send exit and recv exit, both measured from the moment `pfs send`
# was started (date +%s.%N around the commands), and the sender's summary line.
# PFS_WALL_STRACE=PREFIX runs the sender under `strace -f -tt -o PREFIX.N`.
# Sessions run with keys (scripts/keys.sh); PFS_INSECURE=1 runs them in plaintext.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
runs=3
covered_mb=32
snap_mb=64
rate=1gbit
transport=xdp
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --covered-mb) covered_mb=$2; shift 2 ;;
        --snap-mb) snap_mb=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --transport) transport=$2; shift 2 ;;
        *) sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "xfer_wall needs root (namespaces, XDP, AF_XDP)" >&2; exit 1; }

name=pfswt$$
name=${name:0:12}
work=$(mktemp -d /tmp/pfs-xfer-wall.XXXXXX)
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
"$pfs" snapshot build --size-mb "$snap_mb" --out "$work/snap" >&2
"$pfs" index build "$work/snap" >&2
dd if="$work/snap/snapshot.bin" of="$work/covered.bin" bs=1M skip=1 count="$covered_mb" status=none
pfs_keys "$pfs" "$work/keys"
now() { date +%s.%N; }
for i in $(seq 1 "$runs"); do
    out="$work/out$i"
    log="$work/recv$i.log"
    (ip netns exec "$B" "$pfs" recv --once --transport "$transport" --iface "$B" --listen "$ipB" \
        --snapshot "$work/snap" "${RECV_KEYS[@]}" --out-dir "$out" --metrics "$work/m.recv" --timeout 60 >"$log" 2>&1
     now >"$log.end") &
    rpid=$!
    for _ in $(seq 1 300); do grep -q '^listening' "$log" && break; sleep 0.05; done
    t0=$(now)
    ip netns exec "$A" ${PFS_WALL_STRACE:+strace -f -tt -o "$PFS_WALL_STRACE.$i"} "$pfs" send --transport "$transport" --iface "$A" --dst "$ipB" \
        --snapshot "$work/snap" "${SEND_KEYS[@]}" --rate "$rate" --metrics "$work/m.send" "$work/covered.bin" >"$log.send" 2>&1
    t1=$(now)
    wait "$rpid"
    t2=$(cat "$log.end")
    python3 -c "import filecmp,sys; sys.exit(0 if filecmp.cmp(sys.argv[1], sys.argv[2], shallow=False) else 1)" \
        "$work/covered.bin" "$out/covered.bin" || { echo "run $i: received file differs" >&2; exit 1; }
    python3 -c "import sys; t0,t1,t2=map(float,sys.argv[1:4]); print(f'run {sys.argv[4]}: send exit {t1-t0:.3f} s, recv exit {t2-t0:.3f} s after starting pfs send')" "$t0" "$t1" "$t2" "$i"
    grep -E "^sent|session only|${PFS_WALL_GREP:-^sent}" "$log.send" | sed "s/^/    /"
done
