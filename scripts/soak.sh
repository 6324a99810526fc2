#!/usr/bin/env bash
# Soak (root): one `pfs recv` service over AF_XDP on a veth pair with 2 queues, fed transfers
# of mixed sizes for MINUTES, with 5% of the receiver's frames dropped by the XDP impairment
# (--impair-drop-ppm 50000) and frames reordered between the two queues (scatter mode: the
# sender spreads frames over both queues and the receiver's per-queue sockets deliver them
# interleaved; the summary's "reordered" count shows how many arrived out of order).
#
#   bash scripts/soak.sh [--minutes 30] [--sample SECONDS] [--seed S] [--keep]
#
# Every received file is compared with its source (a mismatch is the failure that matters),
# then removed. The receiver's VmRSS and open descriptors are sampled every SECONDS (default
# 60), each once the service runs no session (between transfers); growth is measured from the
# first sample (after warm-up) to the last. Prints the
# samples and a summary line; exit 1 on any mismatch, failed session, receiver exit other than
# 0 after SIGTERM, or RSS / descriptor growth above 5%. CI runs it for 2 minutes (.ci/run).
# Uses namespaces pfssoaka/pfssoakb (scripts/netns.sh); traffic stays inside them.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
sample=60
seed=$$
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=${2:?}; shift 2 ;;
        --sample) sample=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        *) sed -n '8p' "$0" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "soak.sh: skipped: needs root (network namespaces, AF_XDP)" >&2
    exit 0
fi
RANDOM=$seed
PFS=${PFS:-target/release/pfs}
[ -x "$PFS" ] || cargo build --release --bin pfs
PFS=$(realpath "$PFS")
NS=pfssoak
A=${NS}a
B=${NS}b
work=$(mktemp -d /tmp/pfs-soak.XXXXXX)
RPID=""
cleanup() {
    [ -n "$RPID" ] && kill -9 "$RPID" 2>/dev/null || true
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
mkdir -p "$work/pool" "$work/out" "$work/send"
# the pool: empty, tiny, small, medium and large random files, and snapshot slices (covered)
: >"$work/pool/empty"
head -c 1 /dev/urandom >"$work/pool/one"
for kb in 4 100 1024 8192 32768; do head -c $((kb << 10)) /dev/urandom >"$work/pool/r$kb"; done
dd if="$work/snap/snapshot.bin" of="$work/pool/covered8m" bs=1M skip=3 count=8 status=none
python3 - "$work/pool/near2m" "$work/snap/snapshot.bin" <<'EOF'
import sys, random
b = bytearray(open(sys.argv[2], "rb").read()[5 << 20:7 << 20])
r = random.Random(1)
for _ in range(2000):
    b[r.randrange(len(b))] = r.randrange(256)
open(sys.argv[1], "wb").write(b)
EOF
pool=("$work"/pool/*)

ip netns exec "$B" "$PFS" recv --transport xdp --iface "$B" --listen "$BIP" \
    --snapshot "$work/snap" --out-dir "$work/out" --impair-drop-ppm 50000 \
    --metrics "$work/recv.jsonl" --metrics-listen 127.0.0.1:9464 "${RECV_KEYS[@]}" \
    >"$work/recv.log" 2>&1 &
RPID=$!
for _ in $(seq 300); do grep -q "listening on" "$work/recv.log" && break; sleep 0.05; done
grep -q "listening on" "$work/recv.log" || { echo "soak: the receiver did not start:"; cat "$work/recv.log"; exit 1; }

# the service's counters (Prometheus text, scraped inside the receiver's namespace)
metric() {
    ip netns exec "$B" python3 -c 'import sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith(sys.argv[1])))' "$1" 2>/dev/null || echo "?"
}
# Wait (up to 10 s) until the service runs no session: the samples compare idle
# receivers (a sample inside a session would count that session's buffers and mapped
# output pages, which go when it ends).
idle() {
    local a
    for _ in $(seq 200); do
        a=$(metric pfs_sessions_active)
        [ "$a" = "0.0" ] || [ "$a" = "0" ] && return 0
        sleep 0.05
    done
    echo "  (the service still ran a session after 10 s: sampled anyway)"
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$RPID/status"; }
fds() { find "/proc/$RPID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
echo "soak: $minutes min, AF_XDP service on a veth pair (2 queues, scatter), 5% drop at the receiver, seed $seed"
printf '%8s %10s %10s %6s %12s %10s\n' elapsed sessions files fds "VmRSS kB" mismatches
end=$(($(date +%s) + minutes * 60))
next=$(($(date +%s) + sample))
sessions=0 files=0 bytes=0 mismatches=0 failed=0 it=0
samples_rss=() samples_fd=()
t0=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
    it=$((it + 1))
    rm -rf "$work/send" && mkdir -p "$work/send"
    n=$((1 + RANDOM % 4))
    names=()
    for k in $(seq "$n"); do
        src=${pool[$((RANDOM % ${#pool[@]}))]}
        name="$it-$k-$(basename "$src")"
        ln "$src" "$work/send/$name"
        names+=("$name")
    done
    if ip netns exec "$A" "$PFS" send --transport xdp --iface "$A" --dst "$BIP" \
        --snapshot "$work/snap" --metrics /dev/null "${SEND_KEYS[@]}" \
        "${names[@]/#/$work/send/}" >"$work/send.log" 2>&1; then
        sessions=$((sessions + 1))
    else
        failed=$((failed + 1))
        echo "  session $it failed: $(tail -1 "$work/send.log")"
    fi
    for name in "${names[@]}"; do
        if [ -e "$work/out/$name" ]; then
            files=$((files + 1))
            bytes=$((bytes + $(stat -c %s "$work/out/$name")))
            cmp -s "$work/send/$name" "$work/out/$name" || { mismatches=$((mismatches + 1)); echo "  MISMATCH: $name"; }
            rm -f "$work/out/$name"
        fi
    done
    if [ "$(date +%s)" -ge "$next" ]; then
        next=$((next + sample))
        idle
        r=$(rss) f=$(fds)
        samples_rss+=("$r") samples_fd+=("$f")
        # where the resident memory is (anonymous, file-backed maps, shared), for a growth
        # to be told apart: a heap high-water mark, a map left mapped, a leak
        grep -E '^(Rss|Anonymous|AnonHugePages|Shared|Private)' "/proc/$RPID/smaps_rollup" 2>/dev/null \
            | tr -s ' ' | tr '\n' ';' >"$work/smaps.${#samples_rss[@]}" || true
        # the mappings with the most resident memory, to find which one grew
        awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$0} /^Rss:/{if ($2 > 512) print $2 " kB " m}' "/proc/$RPID/smaps" 2>/dev/null \
            | sort -rn | head -8 >"$work/maps.${#samples_rss[@]}" || true
        printf '%7ss %10s %10s %6s %12s %10s\n' $(($(date +%s) - t0)) "$sessions" "$files" "$f" "$r" "$mismatches"
    fi
done
reordered=$(metric pfs_reordered_frames_total)
steered=$(metric 'pfs_xdp_steer_frames_total{action="steered"')
dropped=$(metric 'pfs_xdp_steer_frames_total{action="impaired_drop"')
kill -TERM "$RPID"
rrc=0
wait "$RPID" || rrc=$?
RPID=""
first_r=${samples_rss[0]:-0} last_r=${samples_rss[-1]:-0}
first_f=${samples_fd[0]:-0} last_f=${samples_fd[-1]:-0}
growth() { python3 -c "a,b=$1,$2; print(f'{(b-a)/a*100:+.1f}%' if a else 'n/a')"; }
over() { python3 -c "a,b=$1,$2; print(1 if a and (b-a)/a > 0.05 else 0)"; }
echo "soak: $sessions sessions ok, $failed failed, $files files ($(numfmt --to=iec "$bytes")B) compared, $mismatches mismatches; receiver exit $rrc after SIGTERM; VmRSS $first_r -> $last_r kB ($(growth "$first_r" "$last_r")), fds $first_f -> $last_f ($(growth "$first_f" "$last_f")); frames reordered ${reordered%.0}, dropped by the impairment ${dropped%.0} of $(python3 -c "print(int($steered + $dropped))" 2>/dev/null || echo ?)"
if [ "$(over "$first_r" "$last_r")" = 1 ]; then
    echo "soak: VmRSS grew; the receiver's smaps_rollup at the first and the last sample:"
    echo "  first: $(cat "$work/smaps.1" 2>/dev/null)"
    echo "  last:  $(cat "$work/smaps.${#samples_rss[@]}" 2>/dev/null)"
    echo "  largest resident mappings, first sample:"; sed 's/^/    /' "$work/maps.1" 2>/dev/null || true
    echo "  and last sample:"; sed 's/^/    /' "$work/maps.${#samples_rss[@]}" 2>/dev/null || true
fi
[ "$mismatches" = 0 ] && [ "$failed" = 0 ] && [ "$rrc" = 0 ] \
    && [ "$(over "$first_r" "$last_r")" = 0 ] && [ "$(over "$first_f" "$last_f")" = 0 ]
