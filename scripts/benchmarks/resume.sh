#!/usr/bin/env bash
# Resume (issue 13 goal: a rerun re-sends no more than the missing bytes + 1%), over loopback
# UDP, no root needed.
#
#   scripts/benchmarks/resume.sh [--pfs BIN] [--mb N] [--at PERCENT] [--rate R] [--runs N]
#
# Per run: N MiB (default 256) of random bytes; a `pfs recv` service; `pfs send --rate R`
# (default 1gbit) killed with SIGKILL once the receiver's journal vouches for PERCENT
# (default 50) of the file (journals are written every 32 MiB of durable prefix and when a
# session breaks); the receiver's session breaks at its idle timeout (10 s) and records its
# durable prefix; then the same `pfs send` again. Printed: the bytes missing at the break
# (file size - the journal's durable prefix), the file bytes the rerun sent (its stream
# bytes: blocks, resume record, end record), their ratio, the excess over the missing bytes
# as a share of the file, the rerun's wire bytes, and whether the result is bit-exact.
# Sessions run with keys (scripts/keys.sh); PFS_INSECURE=1 runs them in plaintext.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
mb=256
at=50
rate=1gbit
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$(realpath "$2"); shift 2 ;;
        --mb) mb=$2; shift 2 ;;
        --at) at=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$pfs" ] || cargo build --release

work=$(mktemp -d /tmp/pfs-resume.XXXXXX)
recv_pid=""
cleanup() {
    [ -n "$recv_pid" ] && kill "$recv_pid" 2>/dev/null && wait "$recv_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

pfs_keys "$pfs" "$work/keys"
"$pfs" snapshot build --size-mb 1 --seed 7 --out "$work/snap" >/dev/null
size=$((mb << 20))
want=$((size * at / 100))
echo "file: $mb MiB random; sender killed once the receiver holds >= $at% durably; rate $rate"

# The durable prefix a journal records (bytes 16..24, little-endian), or 0.
prefix_of() {
    [ -f "$1" ] || { echo 0; return; }
    python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); print(int.from_bytes(b[16:24],"little") if len(b)>=24 else 0)' "$1"
}

for run in $(seq 1 "$runs"); do
    rm -rf "$work/out" "$work/recv.log" "$work/send.jsonl"
    mkdir -p "$work/out"
    head -c "$size" /dev/urandom > "$work/big.bin"
    "$pfs" recv --transport udp --listen 127.0.0.1 --port 0 --snapshot "$work/snap" \
        "${RECV_KEYS[@]}" --out-dir "$work/out" --metrics "$work/recv.jsonl" > "$work/recv.out" 2> "$work/recv.log" &
    recv_pid=$!
    port=""
    for _ in $(seq 1 600); do
        port=$(sed -n 's/.*listening on udp 127.0.0.1:\([0-9]*\).*/\1/p' "$work/recv.log" | head -1)
        [ -n "$port" ] && break
        sleep 0.05
    done
    [ -n "$port" ] || { cat "$work/recv.log"; exit 1; }
    "$pfs" send --transport udp --snapshot "$work/snap" "${SEND_KEYS[@]}" --dst "127.0.0.1:$port" \
        --rate "$rate" --metrics "$work/send0.jsonl" "$work/big.bin" >/dev/null 2>&1 &
    send_pid=$!
    while :; do
        jn=$(ls -a "$work/out" | grep 'pfs-jrnl-' | grep -v 'pfs-tmp' | head -1 || true)
        if [ -n "$jn" ] && [ "$(prefix_of "$work/out/$jn")" -ge "$want" ]; then
            kill -KILL "$send_pid"
            break
        fi
        if ! kill -0 "$send_pid" 2>/dev/null; then
            echo "the sender finished before the receiver held $at%: lower --rate" >&2
            exit 1
        fi
        sleep 0.005
    done
    wait "$send_pid" 2>/dev/null || true
    # The receiver's session breaks at its idle timeout; its journal then says what it holds.
    for _ in $(seq 1 600); do
        grep -q "no answer from the peer" "$work/recv.log" && break
        sleep 0.05
    done
    held=$(prefix_of "$work/out/$jn")
    missing=$((size - held))
    "$pfs" send --transport udp --snapshot "$work/snap" "${SEND_KEYS[@]}" --dst "127.0.0.1:$port" \
        --metrics "$work/send.jsonl" "$work/big.bin" >/dev/null
    read -r sent wire resumed < <(python3 -c '
import json, sys
m = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(m["stream_bytes"], m["wire_bytes"], m["stats"]["resumed_bytes"])' "$work/send.jsonl")
    exact=no
    cmp -s "$work/big.bin" "$work/out/big.bin" && exact=yes
    python3 - "$run" "$size" "$held" "$missing" "$sent" "$wire" "$resumed" "$exact" <<'EOF'
import sys
run, size, held, missing, sent, wire, resumed = map(int, sys.argv[1:8])
exact = sys.argv[8]
print(f"run {run}: held at the break {held} B ({held/size:.1%}); missing {missing} B; "
      f"rerun sent {sent} file/stream B (resumed after {resumed} B), wire {wire} B; "
      f"sent/missing {sent/missing:.4f}; excess {(sent-missing)/size:+.3%} of the file "
      f"(goal: <= +1%); bit-exact: {exact}")
EOF
    kill "$recv_pid"; wait "$recv_pid" 2>/dev/null || true; recv_pid=""
done
