#!/usr/bin/env bash
# Fault injection on a veth pair (root): what a transfer leaves behind when things go wrong.
#
#   bash scripts/faults.sh [--kills N] [--size-mb M] [--transport xdp|udp] [--seed S] [--keep]
#
# 1. kills: N times (default 20), a transfer of an M MiB random file (default 64) paced at
#    400 Mbit/s, and SIGKILL to the sender or the receiver (random) at a random moment from
#    0 to 1.6 s after the start (before, during or after the session). Then, once both
#    processes are gone: no file under the final name unless it is bit-exact; no XDP program
#    on either interface; the same transfer rerun completes bit-exact; after it no temporary
#    file is left. The rerun's "file bytes sent" is printed (resume sends only what is missing).
# 2. ENOSPC: the receiver writes to an 8 MiB tmpfs and the file is 32 MiB: both sides end with
#    a message that names the problem, nothing is left under the final name nor as a temporary.
# 3. link down: the veth is set down 0.8 s into a 64 MiB transfer at 200 Mbit/s: both sides end
#    with a message that says what happened (timeout / no answer); link up; the rerun completes.
# 4. snapshot: the receiver's copy altered (one byte) and then truncated: refused at start-up by
#    name; the sender's untouched copy still works against a good receiver.
# Prints one line per case and a summary; exit 1 if any case was not clean.
# Uses namespaces pfsflta/pfsfltb (scripts/netns.sh); traffic stays inside them.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=20
size_mb=64
transport=xdp
seed=$$
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --kills) kills=${2:?}; shift 2 ;;
        --size-mb) size_mb=${2:?}; shift 2 ;;
        --transport) transport=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        *) sed -n '2,4p' "$0" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "faults.sh: needs root (network namespaces, AF_XDP, tmpfs)" >&2; exit 2; }
RANDOM=$seed
PFS=${PFS:-target/release/pfs}
[ -x "$PFS" ] || cargo build --release --bin pfs
PFS=$(realpath "$PFS")
NS=pfsflt
A=${NS}a
B=${NS}b
work=$(mktemp -d /tmp/pfs-faults.XXXXXX)
cleanup() {
    pkill -9 -f "$work" 2>/dev/null || true
    mountpoint -q "$work/small" && umount "$work/small"
    bash scripts/netns.sh down "$NS" >/dev/null 2>&1 || true
    [ "$keep" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
bash scripts/netns.sh up "$NS" --queues 2 >/dev/null
BIP=$(ip -n "$B" -4 -o addr show dev "$B" | awk '{print $4}' | cut -d/ -f1)
# shellcheck source=scripts/keys.sh
source scripts/keys.sh
pfs_keys "$PFS" "$work/keys" >/dev/null
"$PFS" snapshot build --size-mb 16 --seed 1 --out "$work/snap" >/dev/null 2>&1
cp -r "$work/snap" "$work/rsnap"
head -c $((size_mb << 20)) /dev/urandom >"$work/big"
head -c $((32 << 20)) /dev/urandom >"$work/b32"
mkdir -p "$work/out"

xdp_args() { # side
    if [ "$transport" = xdp ]; then echo "--transport xdp --iface $1"; else echo "--transport udp"; fi
}
# start_recv OUTDIR SNAP LOG: the receiver in namespace B, once it listens; sets RPID
start_recv() {
    # shellcheck disable=SC2046
    ip netns exec "$B" "$PFS" recv --once $(xdp_args "$B") --listen "$BIP" --snapshot "$2" \
        --out-dir "$1" --timeout 20 --metrics "$work/recv.jsonl" "${RECV_KEYS[@]}" >"$3" 2>&1 &
    RPID=$!
    for _ in $(seq 200); do
        grep -q "listening on" "$3" 2>/dev/null && return 0
        kill -0 "$RPID" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}
# start_send FILE RATE LOG: the sender in namespace A; sets SPID
start_send() {
    # shellcheck disable=SC2046
    ip netns exec "$A" "$PFS" send $(xdp_args "$A") --dst "$BIP" --snapshot "$work/snap" \
        --rate "$2" --metrics "$work/send.jsonl" "${SEND_KEYS[@]}" "$1" >"$3" 2>&1 &
    SPID=$!
}
# wait_pid PID SECONDS: wait for it (kill -9 after SECONDS); sets RC to its exit status or
# "hung" (not in a $(...) subshell: only this shell can wait for its children)
wait_pid() {
    local t=0
    while kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" | cut -c1)" != Z ]; do
        if [ "$t" -ge $(($2 * 10)) ]; then kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; RC=hung; return; fi
        sleep 0.1
        t=$((t + 1))
    done
    RC=0
    wait "$1" 2>/dev/null || RC=$?
}
attached() { # any XDP program left on either end?
    ip -n "$A" -d link show dev "$A" | grep -q " xdp" && return 0
    ip -n "$B" -d link show dev "$B" | grep -q " xdp" && return 0
    return 1
}
temps() { find "$1" -name '.*.pfs-tmp-*' -o -name '.*.pfs-part-*' -o -name '.*.pfs-jrnl-*' 2>/dev/null | wc -l; }
sent_bytes() { # file bytes the last sender put on the wire, from its metrics line
    tail -1 "$work/send.jsonl" 2>/dev/null | python3 -c 'import json,sys
try:
    m=json.loads(sys.stdin.read()); print(m.get("wire_bytes", m.get("bytes_sent","?")))
except Exception: print("?")'
}
bad=0
note() { printf '%-10s %-4s %s\n' "$1" "$2" "$3"; [ "$2" = ok ] || bad=$((bad + 1)); }

echo "faults: $transport, $size_mb MiB file, $kills kills, seed $seed, work $work"
clean_kills=0
for i in $(seq "$kills"); do
    rm -rf "$work/out" && mkdir -p "$work/out"
    victim=$([ $((RANDOM % 2)) = 0 ] && echo send || echo recv)
    delay_ms=$((RANDOM % 1600))
    start_recv "$work/out" "$work/rsnap" "$work/r.log" || { note "kill $i" FAIL "receiver did not start: $(tail -2 "$work/r.log")"; continue; }
    start_send "$work/big" 400mbit "$work/s.log"
    sleep "$(printf '0.%03d' "$delay_ms")"
    if [ "$victim" = send ]; then kill -9 "$SPID" 2>/dev/null || true; else kill -9 "$RPID" 2>/dev/null || true; fi
    wait_pid "$SPID" 40; src=$RC
    wait_pid "$RPID" 40; rrc=$RC
    why=""
    if [ -e "$work/out/big" ] && ! cmp -s "$work/big" "$work/out/big"; then why+=" partial-final-file"; fi
    if attached; then why+=" xdp-left-attached"; fi
    [ "$src" = hung ] && why+=" sender-hung"
    [ "$rrc" = hung ] && why+=" receiver-hung"
    left=$(temps "$work/out")
    # the rerun: same command, no fault
    start_recv "$work/out" "$work/rsnap" "$work/r2.log" || why+=" rerun-receiver-did-not-start"
    start_send "$work/big" 2gbit "$work/s2.log"
    wait_pid "$SPID" 60; src2=$RC
    wait_pid "$RPID" 60; rrc2=$RC
    if [ "$src2" != 0 ] || [ "$rrc2" != 0 ] || ! cmp -s "$work/big" "$work/out/big"; then
        why+=" rerun-failed(send=$src2,recv=$rrc2: $(grep -i 'error\|abort' "$work/s2.log" "$work/r2.log" | head -1))"
    fi
    [ "$(temps "$work/out")" = 0 ] || why+=" temporary-left-after-rerun"
    attached && why+=" xdp-left-after-rerun"
    msg="kill $victim at ${delay_ms} ms: send rc=$src recv rc=$rrc, temporaries left $left, rerun wire bytes $(sent_bytes)"
    if [ -z "$why" ]; then clean_kills=$((clean_kills + 1)); note "kill $i" ok "$msg"; else note "kill $i" FAIL "$msg:$why"; fi
done
echo "kills: $clean_kills of $kills clean"

# ENOSPC
mkdir -p "$work/small"
mount -t tmpfs -o size=8m tmpfs "$work/small"
start_recv "$work/small" "$work/rsnap" "$work/r.log"
start_send "$work/b32" 1gbit "$work/s.log"
wait_pid "$SPID" 60; src=$RC; wait_pid "$RPID" 60; rrc=$RC
rmsg=$(grep -i -m1 "space\|ENOSPC\|too large\|does not fit" "$work/r.log" || true)
smsg=$(grep -i -m1 "space\|ENOSPC\|too large\|does not fit\|refused\|abort" "$work/s.log" || true)
left=$(find "$work/small" -type f | wc -l)
if [ "$src" != 0 ] && [ "$src" != hung ] && [ "$rrc" != hung ] && [ -n "$rmsg" ] && [ -n "$smsg" ] && [ "$left" = 0 ]; then
    note ENOSPC ok "send rc=$src: ${smsg:0:110} | recv rc=$rrc: ${rmsg:0:110}"
else
    note ENOSPC FAIL "send rc=$src recv rc=$rrc files left $left | $(tail -1 "$work/s.log") | $(tail -1 "$work/r.log")"
fi
umount "$work/small"

# link down mid-transfer
rm -rf "$work/out" && mkdir -p "$work/out"
start_recv "$work/out" "$work/rsnap" "$work/r.log"
start_send "$work/big" 200mbit "$work/s.log"
sleep 0.8
ip -n "$A" link set dev "$A" down
t0=$(date +%s.%N)
wait_pid "$SPID" 90; src=$RC; wait_pid "$RPID" 90; rrc=$RC
took=$(python3 -c "import time; print(f'{time.time()-$t0:.1f}')")
ip -n "$A" link set dev "$A" up
sleep 0.5
smsg=$(grep -i -m1 "timeout\|timed out\|no answer\|silent\|unreachable\|down" "$work/s.log" || true)
rmsg=$(grep -i -m1 "timeout\|timed out\|no answer\|silent\|aborted" "$work/r.log" || true)
start_recv "$work/out" "$work/rsnap" "$work/r2.log"
start_send "$work/big" 2gbit "$work/s2.log"
wait_pid "$SPID" 60; src2=$RC; wait_pid "$RPID" 60; rrc2=$RC
if [ "$src" != 0 ] && [ "$src" != hung ] && [ "$rrc" != hung ] && [ -n "$smsg" ] && [ -n "$rmsg" ] \
    && [ "$src2" = 0 ] && cmp -s "$work/big" "$work/out/big" && ! attached; then
    note link-down ok "both ended ${took} s after the cut: send: ${smsg:0:90} | recv: ${rmsg:0:90}; rerun wire bytes $(sent_bytes)"
else
    note link-down FAIL "send rc=$src recv rc=$rrc after ${took} s | $(tail -1 "$work/s.log") | $(tail -1 "$work/r.log") | rerun send=$src2 recv=$rrc2"
fi

# snapshot altered, then truncated, on the receiver's side
python3 - "$work/rsnap/snapshot.bin" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(12345); b = f.read(1); f.seek(12345); f.write(bytes([b[0] ^ 0xff]))
EOF
rm -rf "$work/out" && mkdir -p "$work/out"
if start_recv "$work/out" "$work/rsnap" "$work/r.log"; then
    kill -9 "$RPID"; note snap-alter FAIL "the receiver started on an altered snapshot"
else
    m=$(grep -m1 "changed after it was built" "$work/r.log" || true)
    if [ -n "$m" ]; then note snap-alter ok "${m:0:150}"; else note snap-alter FAIL "$(tail -1 "$work/r.log")"; fi
fi
truncate -s 1M "$work/rsnap/snapshot.bin"
if start_recv "$work/out" "$work/rsnap" "$work/r.log"; then
    kill -9 "$RPID"; note snap-trunc FAIL "the receiver started on a truncated snapshot"
else
    m=$(grep -m1 "manifest says" "$work/r.log" || true)
    if [ -n "$m" ]; then note snap-trunc ok "${m:0:150}"; else note snap-trunc FAIL "$(tail -1 "$work/r.log")"; fi
fi
echo "faults: $bad case(s) not clean"
[ "$bad" = 0 ]
