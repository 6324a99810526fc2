#!/usr/bin/env bash
# Receiver memory over many sessions (issue 13's goal: RSS after 1,000 sequential sessions
# within 5% of its RSS after the first 10). One `pfs recv` service over loopback UDP (no
# root), N sequential `pfs send` sessions of one small random file each; the receiver's
# VmRSS (/proc/PID/status) is sampled after sessions 10, 100, 500 and N.
#
#   scripts/benchmarks/service_rss.sh [--pfs BIN] [--sessions N] [--file-kb K]
#
# Sessions run with keys (scripts/keys.sh); PFS_INSECURE=1 runs them in plaintext. The
# receiver runs with --sync off (the disk flush is not what is measured).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
sessions=1000
file_kb=4
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --file-kb) file_kb=$2; shift 2 ;;
        *) sed -n '6p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$sessions" -ge 10 ] || { echo "--sessions must be at least 10" >&2; exit 2; }
work=$(mktemp -d /tmp/pfs-service-rss.XXXXXX)
rpid=
cleanup() {
    [ -n "$rpid" ] && kill "$rpid" 2>/dev/null && wait "$rpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
"$pfs" snapshot build --size-mb 8 --out "$work/snap" >&2
pfs_keys "$pfs" "$work/keys"
mkdir -p "$work/src"
"$pfs" recv --transport udp --listen 127.0.0.1 --port 0 --snapshot "$work/snap" "${RECV_KEYS[@]}" \
    --out-dir "$work/out" --metrics "$work/m.recv" --sync off >"$work/recv.out" 2>"$work/recv.log" &
rpid=$!
port=
for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening on udp 127.0.0.1:\([0-9]*\).*/\1/p' "$work/recv.log")
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { cat "$work/recv.log" >&2; echo "the receiver did not start" >&2; exit 1; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$rpid/status"; }
declare -A at
t0=$(date +%s.%N)
for i in $(seq 1 "$sessions"); do
    head -c $((file_kb * 1024)) /dev/urandom >"$work/src/f$i"
    "$pfs" send --transport udp --dst "127.0.0.1:$port" --snapshot "$work/snap" "${SEND_KEYS[@]}" \
        --metrics "$work/m.send" "$work/src/f$i" >/dev/null 2>"$work/send.err" \
        || { cat "$work/send.err" >&2; echo "session $i failed" >&2; exit 1; }
    cmp -s "$work/src/f$i" "$work/out/f$i" || { echo "f$i differs" >&2; exit 1; }
    rm -f "$work/src/f$i"
    case $i in 10|100|500|"$sessions") at[$i]=$(rss); echo "after $i sessions: VmRSS ${at[$i]} kB" ;; esac
done
t1=$(date +%s.%N)
kill -TERM "$rpid"
wait "$rpid" && echo "receiver exited 0 after SIGTERM" || echo "receiver exit status $?"
rpid=
served=$(grep -c '^session .*: ok,' "$work/recv.out" || true)
python3 - "${at[10]}" "${at[$sessions]}" "$sessions" "$served" "$t0" "$t1" <<'PY'
import sys
a, b, n, served, t0, t1 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
print(f"{served} session(s) reported ok by the receiver; {n} sessions in {t1 - t0:.1f} s")
print(f"VmRSS after 10: {a} kB, after {n}: {b} kB: {100.0 * (b - a) / a:+.2f}% (goal: within 5%)")
PY
