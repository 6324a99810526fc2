#!/usr/bin/env bash
# Many small files against one big file, in one run (issue 13's goal: 1,000 files of 4 KiB
# in one session at >= 50% of the throughput of one 4 MB file).
#
#   scripts/benchmarks/small_files.sh [--pfs BIN] [--files N] [--kib K] [--runs R] [--no-xdp]
#
# Sends one file of N x K KiB, then a directory of N files of K KiB each (random bytes, the
# same total), with keys on (scripts/keys.sh; PFS_INSECURE=1 for plaintext) and fsync on (the
# receiver's default), R times each, alternating: over UDP on loopback (no root needed), and
# over AF_XDP on a veth pair between two namespaces when run as root (--no-xdp skips it).
# Every received tree is compared with `diff -r`. Prints, per transport, the median of the
# runs for both rows (file bytes / the sender's session time, first frame to the receiver's
# confirmation; and file bytes / the time from starting pfs send to that confirmation) and
# the ratio small/big of each. Then the file system's own floor, measured in the same run on
# the same file system: creating, writing, fsyncing and renaming the N files in a fresh
# directory without pfs (python), as Gbit/s of file bytes: no receiver writes them faster.
# PFS_BENCH_TMP=DIR puts the work directory (and so the receivers' out-dirs) under DIR
# instead of /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

pfs=$PWD/target/release/pfs
files=1000
kib=4
runs=3
xdp=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --kib) kib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --no-xdp) xdp=0; shift ;;
        *) sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || xdp=0

work=$(mktemp -d "${PFS_BENCH_TMP:-/tmp}/pfs-small-files.XXXXXX")
name=pfssf$$
name=${name:0:12}
netup=0
cleanup() {
    [ "$netup" = 1 ] && bash scripts/netns.sh down "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$pfs" snapshot build --size-mb 16 --out "$work/snap" >/dev/null 2>&1
"$pfs" index build "$work/snap" >/dev/null 2>&1
mkdir -p "$work/in/big" "$work/in/small"
python3 - "$work/in" "$files" "$kib" <<'PY'
import os, sys
d, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, "small", f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(k * 1024))
with open(os.path.join(d, "big", "one.bin"), "wb") as f:
    f.write(os.urandom(n * k * 1024))
PY
pfs_keys "$pfs" "$work/keys"

# run TRANSPORT WHAT I: one session; appends the sender's metrics line to $work/m.TRANSPORT.WHAT
run() {
    local t=$1 what=$2 i=$3 out="$work/out.$1.$2.$3" log="$work/recv.$1.$2.$3.log"
    local src="$work/in/big/one.bin"
    [ "$what" = small ] && src="$work/in/small"
    mkdir -p "$out"
    local rx=() tx=() port=$((47200 + RANDOM % 500))
    if [ "$t" = udp ]; then
        rx=("$pfs" recv --once --transport udp --listen 127.0.0.1 --port "$port")
        tx=("$pfs" send --transport udp --dst "127.0.0.1:$port")
    else
        rx=(ip netns exec "$B" "$pfs" recv --once --transport xdp --iface "$B" --listen "$ipB")
        tx=(ip netns exec "$A" "$pfs" send --transport xdp --iface "$A" --dst "$ipB")
    fi
    "${rx[@]}" --snapshot "$work/snap" "${RECV_KEYS[@]}" --out-dir "$out" \
        --metrics "$work/m.recv" --timeout 60 >"$log" 2>&1 &
    local rpid=$!
    for _ in $(seq 1 300); do grep -qs '^listening' "$log" && break; sleep 0.05; done
    "${tx[@]}" --snapshot "$work/snap" "${SEND_KEYS[@]}" --metrics "$work/m.$t.$what" "$src" \
        >"$log.send" 2>&1 || { cat "$log.send" "$log" >&2; exit 1; }
    wait "$rpid" || { cat "$log" >&2; exit 1; }
    if [ "$what" = small ]; then
        diff -r "$work/in/small" "$out/small" >/dev/null || { echo "$t run $i: tree differs" >&2; exit 1; }
    else
        cmp -s "$src" "$out/one.bin" || { echo "$t run $i: file differs" >&2; exit 1; }
    fi
    # Outputs stay until the end: deleting 1,000 files just before the next run makes the
    # file system's inode allocation scan their recently freed inodes (ext4 without a
    # journal checks each one's deletion time), a cost of this script, not of a transfer.
}

report() {
    python3 - "$1" "$work/m.$1.big" "$work/m.$1.small" "$files" "$kib" <<'PY'
import json, statistics, sys
t, big, small, n, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rows(p):
    ls = [json.loads(l) for l in open(p) if l.strip()]
    return (statistics.median(l["session_gbps"] for l in ls),
            statistics.median(l["effective_gbps"] for l in ls), len(ls))
b, s = rows(big), rows(small)
mb = n * k * 1024 / 1e6
print(f"{t}: one file of {mb:.1f} MB      session {b[0]:.3f} Gbit/s, end to end {b[1]:.3f} Gbit/s (median of {b[2]})")
print(f"{t}: {n} files of {k} KiB    session {s[0]:.3f} Gbit/s, end to end {s[1]:.3f} Gbit/s (median of {s[2]})")
print(f"{t}: ratio small/big        session {s[0] / b[0]:.2f}, end to end {s[1] / b[1]:.2f}")
PY
}

floor() {
    python3 - "$work/floor.$1" "$files" "$kib" <<'PY'
import os, sys, time
d, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(d)
b = os.urandom(k * 1024)
t = time.perf_counter()
fds = []
for i in range(n):
    fd = os.open(f"{d}/.f{i}.tmp", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b)
    fds.append(fd)
for fd in fds:
    os.fsync(fd)
for i, fd in enumerate(fds):
    os.close(fd)
    os.rename(f"{d}/.f{i}.tmp", f"{d}/f{i}")
dfd = os.open(d, os.O_RDONLY)
os.fsync(dfd)
os.close(dfd)
s = time.perf_counter() - t
print(f"fs floor: {n} files of {k} KiB created, written, fsynced, renamed in {s:.3f} s "
      f"({n * k * 1024 * 8 / s / 1e9:.3f} Gbit/s) on {os.path.dirname(d)}")
PY
}

floor 1
for i in $(seq 1 "$runs"); do
    run udp big "$i"
    run udp small "$i"
done
report udp
floor 2
if [ "$xdp" = 1 ]; then
    net=$(( $$ % 200 + 20 ))
    bash scripts/netns.sh up "$name" --queues 2 --mtu 1500 --net "$net" >/dev/null
    netup=1
    A=${name}a
    B=${name}b
    ipB=10.201.$net.2
    for i in $(seq 1 "$runs"); do
        run xdp big "$i"
        run xdp small "$i"
    done
    report xdp
fi
