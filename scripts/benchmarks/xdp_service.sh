#!/usr/bin/env bash
# The AF_XDP receiver as a service against one `pfs recv --once` process per session (root).
#
#   scripts/benchmarks/xdp_service.sh [--pfs BIN] [--sessions N] [--file-mb M] [--rounds R]
#                                     [--xdp-threads session|workers]
#
# On a bridged segment of namespaces (scripts/netns.sh star: a receiver host and two sender
# hosts, each with its own veth, 2 queues), with keys (scripts/keys.sh; PFS_INSECURE=1 runs
# plaintext) and --sync off on the receiver (the disk flush is not what is measured):
#   once:    N sessions of an M MB random file, each into a fresh `pfs recv --once
#            --transport xdp` started after the previous one exited (each attaches the XDP
#            program, binds its queues, maps the snapshot); wall time from the first
#            receiver's start to the last transfer's end;
#   service: the same N sessions into one `pfs recv --transport xdp` service; wall time from
#            its start (attach, bind, snapshot) to the last transfer's end, and the N
#            transfers alone (the listening line is polled every 5 ms: a start is seen up
#            to 5 ms late, in both variants);
#   2 sequential vs 2 concurrent: two sessions from the two sender hosts into the service,
#            one after the other vs at once (wall time of the pair).
# The variants alternate, R rounds; every received file is compared with its source.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
sessions=10
file_mb=4
rounds=3
threads=session
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --file-mb) file_mb=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --xdp-threads) threads=$2; shift 2 ;;
        *) sed -n '4,5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "xdp_service.sh: needs root (namespaces, XDP, AF_XDP)" >&2; exit 1; }
name=pfsxs$$
name=${name:0:12}
net=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 250 ))
R=${name}r
dst=10.202.$net.1
work=$(mktemp -d /tmp/pfs-xdp-service.XXXXXX)
rpid=
cleanup() {
    [ -n "$rpid" ] && kill "$rpid" 2>/dev/null && wait "$rpid" 2>/dev/null || true
    scripts/netns.sh star-down "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
scripts/netns.sh star "$name" --senders 2 --queues 2 >&2
"$pfs" snapshot build --size-mb 8 --out "$work/snap" >/dev/null 2>&1
pfs_keys "$pfs" "$work/keys" 2>/dev/null
head -c $((file_mb * 1000000)) /dev/urandom >"$work/f0"
head -c $((file_mb * 1000000)) /dev/urandom >"$work/f1"
now() { date +%s.%N; }

# Start a receiver in the receiver host: recv_start OUT [ARGS...]; waits until it listens.
recv_start() {
    local out=$1
    shift
    rm -rf "$out"
    ip netns exec "$R" "$pfs" recv --transport xdp --iface "$R" --listen "$dst" \
        --snapshot "$work/snap" "${RECV_KEYS[@]}" --out-dir "$out" --metrics "$work/m.recv" \
        --sync off --xdp-threads "$threads" "$@" >"$work/recv.out" 2>"$work/recv.log" &
    rpid=$!
    for _ in $(seq 1 2000); do
        grep -q '^listening on xdp' "$work/recv.log" && return 0
        kill -0 "$rpid" 2>/dev/null || break
        sleep 0.005
    done
    cat "$work/recv.log" >&2
    echo "the receiver did not start" >&2
    exit 1
}
# send HOST FILE OUT: one AF_XDP session from sender host HOST; checks the file arrived.
send() {
    ip netns exec "${name}s$1" "$pfs" send --transport xdp --iface "${name}s$1" --dst "$dst" \
        --snapshot "$work/snap" "${SEND_KEYS[@]}" --metrics "$work/m.send" "$2" \
        >/dev/null 2>"$work/send$1.err" || { cat "$work/send$1.err" >&2; echo "send failed" >&2; exit 1; }
}
check() { cmp -s "$1" "$2/$(basename "$1")" || { echo "$2/$(basename "$1") differs" >&2; exit 1; }; }
stop_service() {
    kill -TERM "$rpid"
    wait "$rpid" || { echo "the service exited $?" >&2; exit 1; }
    rpid=
}

results=$work/results
: >"$results"
for round in $(seq 1 "$rounds"); do
    # N receivers, one per session.
    t0=$(now)
    for i in $(seq 1 "$sessions"); do
        recv_start "$work/out" --once
        send 0 "$work/f0"
        wait "$rpid" || { cat "$work/recv.log" >&2; exit 1; }
        rpid=
        check "$work/f0" "$work/out"
    done
    t1=$(now)
    echo "once $round $(echo "$t1 - $t0" | bc -l)" >>"$results"

    # One service, N sessions.
    t0=$(now)
    recv_start "$work/svc"
    t1=$(now)
    for i in $(seq 1 "$sessions"); do
        rm -f "$work/svc/f0"
        send 0 "$work/f0"
        check "$work/f0" "$work/svc"
    done
    t2=$(now)
    echo "service $round $(echo "$t2 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l)" >>"$results"

    # Two sessions into the running service: one after the other, then at once.
    rm -f "$work/svc/f0" "$work/svc/f1"
    t0=$(now)
    send 0 "$work/f0"
    send 1 "$work/f1"
    t1=$(now)
    check "$work/f0" "$work/svc"; check "$work/f1" "$work/svc"
    rm -f "$work/svc/f0" "$work/svc/f1"
    t2=$(now)
    send 0 "$work/f0" &
    a=$!
    send 1 "$work/f1" &
    b=$!
    wait "$a" && wait "$b" || { echo "a concurrent send failed" >&2; exit 1; }
    t3=$(now)
    check "$work/f0" "$work/svc"; check "$work/f1" "$work/svc"
    echo "pair $round $(echo "$t1 - $t0" | bc -l) $(echo "$t3 - $t2" | bc -l)" >>"$results"
    stop_service
    served=$(grep -c '^session .*: ok,' "$work/recv.out" || true)
    [ "$served" -eq $((sessions + 4)) ] || { echo "the service reported $served ok sessions" >&2; exit 1; }
done
python3 - "$results" "$sessions" "$file_mb" "$threads" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
n, mb, threads = int(sys.argv[2]), sys.argv[3], sys.argv[4]
once = [float(r[2]) for r in rows if r[0] == "once"]
svc = [float(r[2]) for r in rows if r[0] == "service"]
svc_x = [float(r[3]) for r in rows if r[0] == "service"]
seq = [float(r[2]) for r in rows if r[0] == "pair"]
con = [float(r[3]) for r in rows if r[0] == "pair"]
f = lambda xs: ", ".join(f"{x:.3f}" for x in xs)
print(f"{n} sessions of a {mb} MB file over AF_XDP (veth, 2 queues, --xdp-threads {threads} on the receiver), {len(once)} rounds:")
print(f"  {n} x pfs recv --once (one process each):  {f(once)} s (median {st.median(once):.3f})")
print(f"  one pfs recv service, start + {n} sessions: {f(svc)} s (median {st.median(svc):.3f})")
print(f"  one pfs recv service, the {n} sessions:     {f(svc_x)} s (median {st.median(svc_x):.3f})")
print(f"  service / once (median): {st.median(svc) / st.median(once):.3f}")
print(f"2 sessions from 2 sender hosts into the service:")
print(f"  one after the other: {f(seq)} s (median {st.median(seq):.3f})")
print(f"  at once:             {f(con)} s (median {st.median(con):.3f})")
print(f"  concurrent / sequential (median): {st.median(con) / st.median(seq):.3f}")
PY
