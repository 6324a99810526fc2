#!/usr/bin/env bash
# Transfer benchmark (`just bench-xfer`): one run on a veth pair between two fresh
# namespaces, every figure measured here, printed as one table.
#
#   scripts/benchmarks/xfer_bench.sh [--random-mb N] [--covered-mb N] [--snap-mb N]
#                                    [--secs S] [--rate R] [--queues Q] [--cores N] [--metrics FILE] [--security-only]
#
# --cores N runs every process (pfs both sides, iperf3, the blast) on cores 0..N-1 (taskset),
# so one command measures a 2-core slice of a bigger machine or all of it; default: every core.
# For the raw AF_XDP path against the blast by queue count, see scripts/benchmarks/xdp_path.sh.
# Every pfs run uses keys (scripts/keys.sh); the raw AF_XDP and UDP rows are repeated with
# --insecure on both sides, and the goal lines compare them (channel cost, goal >= 90%).
# --security-only runs just those four rows, interleaved, twice.
# Unshaped: pfs over AF_XDP with a random file the snapshot does not cover (raw goodput),
# pfs over the kernel UDP driver (same file), iperf3 UDP (1472 B datagrams) and TCP, and the
# plain AF_XDP blast (examples/xsk_blast, 1514 B frames = pfs frames at MTU 1500).
# At a link budget R (default 1gbit): pfs --rate R with a file the snapshot covers, a
# release pair (basis: the stable toolchain's libstd-*.so, added to the snapshot as a
# corpus bank; target: the nightly's) and random data, next to iperf3 TCP shaped to R by an
# HTB qdisc on the sending veth (AF_XDP bypasses qdiscs; pfs paces itself).
# time = the session only (pfs's `elapsed`: first frame to the receiver's confirmation);
# goodput = bytes on the wire / time; session = file bytes / time; kpps = frames sent /
# time (pfs: the sender's frames; blast: frames received); end to end = from the start of
# `pfs send` (snapshot, planning, packing) to the receiver's confirmation (pfs's `total`),
# and the effective Gb/s the sender's summary prints for it.
set -euo pipefail
cd "$(dirname "$0")/../.."

random_mb=32
covered_mb=32
snap_mb=64
secs=5
rate=1gbit
queues=2
cores=""
metrics=""
security_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --random-mb) random_mb=$2; shift 2 ;;
        --covered-mb) covered_mb=$2; shift 2 ;;
        --snap-mb) snap_mb=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --metrics) metrics=$2; shift 2 ;;
        --security-only) security_only=1; shift ;;
        *) sed -n '5,6p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done

[ -z "$metrics" ] || mkdir -p "$(dirname "$metrics")"
[ "$(id -u)" = 0 ] || { echo "bench-xfer needs root (namespaces, XDP, AF_XDP)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "iperf3 missing: apt-get install -y iperf3" >&2; exit 1; }

cargo build --release --bin pfs --example xsk_blast >&2
pfs=$PWD/target/release/pfs
blast=$PWD/target/release/examples/xsk_blast

name=pfsbx$$
name=${name:0:12}
work=$(mktemp -d /tmp/pfs-xfer-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    bash scripts/netns.sh down "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

bash scripts/netns.sh up "$name" --queues "$queues" --mtu 1500 >&2
A=${name}a
B=${name}b
ipB=$(ip -n "$B" -4 -o addr show dev "$B" | awk '{print $4}' | cut -d/ -f1)
pin=()
if [ -n "$cores" ]; then
    [ "$cores" -ge 1 ] && [ "$cores" -le "$(nproc)" ] || { echo "--cores must be 1..$(nproc)" >&2; exit 2; }
    pin=(taskset -c "$(seq -s, 0 $((cores - 1)))")
fi
inA() { ip netns exec "$A" "${pin[@]}" "$@"; }
inB() { ip netns exec "$B" "${pin[@]}" "$@"; }

# Inputs: snapshot with the stable libstd as a corpus bank; the nightly's is the target.
libstd() { find "$(rustc +"$1" --print sysroot)/lib/rustlib" -name 'libstd-*.so' | head -1; }
old=$(libstd stable)
new=$(libstd nightly)
[ -n "$old" ] && [ -n "$new" ] || { echo "need stable and nightly toolchains with libstd-*.so" >&2; exit 1; }
echo "building a ${snap_mb} MiB snapshot + corpus bank $(basename "$old") ..." >&2
"$pfs" snapshot build --size-mb "$snap_mb" --add "$old" --out "$work/snap" >&2
head -c $((random_mb << 20)) /dev/urandom >"$work/random.bin"
dd if="$work/snap/snapshot.bin" of="$work/covered.bin" bs=1M skip=1 count="$covered_mb" status=none
cp "$new" "$work/$(basename "$new")"
release="$work/$(basename "$new")"

# Keys for every pfs run (scripts/keys.sh); `insecure=1` makes a run plaintext (the
# --insecure rows beside the keyed ones: the cost of the channel, measured in the same run).
source scripts/keys.sh
pfs_keys "$pfs" "$work/keys"
KEYED_SEND=("${SEND_KEYS[@]}")
KEYED_RECV=("${RECV_KEYS[@]}")
insecure=0

json() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print($2)" "$1"; }

rows=()
recv_extra=()
row() { rows+=("$(printf '| %-52s | %10s | %10s | %10s | %12s | %12s | %8s | %10s | %12s |' "$@")"); }
# Figures the goal lines at the end are computed from (set by the runs that measure them).
declare -A fig

# pfs TRANSPORT LABEL FILE [send args...]: one transfer, one table row.
pfs_run() {
    local transport=$1 label=$2 file=$3
    shift 3
    local out="$work/out-$RANDOM" m="$work/m-$RANDOM.jsonl" log="$work/recv-$RANDOM.log"
    local skeys=("${KEYED_SEND[@]}") rkeys=("${KEYED_RECV[@]}")
    if [ "$insecure" = 1 ]; then skeys=(--insecure); rkeys=(--insecure); fi
    inB "$pfs" recv --once --transport "$transport" --iface "$B" --listen "$ipB" --snapshot "$work/snap" \
        --out-dir "$out" --metrics "$m.recv" --timeout 60 "${rkeys[@]}" "${recv_extra[@]}" >"$log" 2>&1 &
    local rpid=$!
    pids+=("$rpid")
    for _ in $(seq 1 300); do grep -q '^listening' "$log" && break; sleep 0.1; done
    # Planning happens before the timed transfer (the summary's time is the session's).
    inA "$pfs" send --transport "$transport" --iface "$A" --dst "$ipB" --snapshot "$work/snap" \
        --metrics "$m" "${skeys[@]}" "$@" "$file" >"$log.send" 2>&1 || { cat "$log.send" "$log" >&2; exit 1; }
    wait "$rpid" || { cat "$log" >&2; exit 1; }
    cmp -s "$file" "$out/$(basename "$file")" || { echo "$label: received file differs" >&2; exit 1; }
    local mode
    mode=$(json "$m" "'packed' if d.get('packed_files') else 'direct'")
    fig[$label.file]=$(json "$m" "d['file_bytes']")
    fig[$label.wire]=$(json "$m" "d['wire_bytes']")
    # The session's figure (named session_gbps since the summaries print end to end first).
    fig[$label.eff]=$(json "$m" "d.get('session_gbps', d['effective_gbps'])")
    fig[$label.time]=$(json "$m" "d['elapsed']")
    fig[$label.pack]=$(json "$m" "d.get('pack_time', 0)")
    fig[$label.gp]=$(json "$m" "d['goodput_gbps']")
    fig[$label.kpps]=$(json "$m" "'%.1f' % (d['frames'] / d['elapsed'] / 1e3) if d['elapsed'] > 0 else 0")
    row "$label [$mode]" "$(json "$m" "'%.1f MB' % (d['file_bytes']/1e6)")" \
        "$(json "$m" "'%.1f MB' % (d['wire_bytes']/1e6)")" \
        "$(json "$m" "'%.3f s' % d['elapsed']")" \
        "$(json "$m" "'%.3f' % d['goodput_gbps']")" \
        "$(json "$m" "'%.3f' % d.get('session_gbps', d['effective_gbps'])")" \
        "$(json "$m" "'%.0f' % (d['frames'] / d['elapsed'] / 1e3) if d['elapsed'] > 0 else '-'")" \
        "$(json "$m" "'%.3f s' % d['total'] if 'total' in d else '-'")" \
        "$(json "$m" "'%.3f' % d['effective_gbps'] if 'total' in d else '-'")"
    [ -z "$metrics" ] || { tail -1 "$m" >>"$metrics"; }
}

# iperf3 LABEL [client args...]: receiver-side bits per second.
iperf_run() {
    local label=$1
    shift
    inB iperf3 -s -1 -B "$ipB" >/dev/null 2>&1 &
    local spid=$!
    pids+=("$spid")
    sleep 0.5
    inA iperf3 -c "$ipB" -t "$secs" -J "$@" >"$work/iperf.json"
    wait "$spid" || true
    local g
    g=$(python3 - "$work/iperf.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["end"]
s = d.get("sum_received") or d.get("sum")
bps = s["bits_per_second"]
if "lost_percent" in s and "sum_received" not in d:
    bps *= 1 - s["lost_percent"] / 100
print("%.3f" % (bps / 1e9))
EOF
)
    row "$label" "-" "-" "${secs} s" "$g" "$g" "-" "-" "-"
    fig[$label.gbps]=$g
}

# The channel's cost: keyed against --insecure, on the session's file bytes per second (the
# goodput; the wire column also counts retransmissions) and on the wire rate.
sec_goal() {
    python3 - "${fig[$1.eff]}" "${fig[$1, --insecure.eff]}" "${fig[$2.eff]}" "${fig[$2, --insecure.eff]}" \
        "${fig[$1.gp]}" "${fig[$1, --insecure.gp]}" "${fig[$2.gp]}" "${fig[$2, --insecure.gp]}" <<'EOF'
import sys
x, xi, u, ui, xg, xgi, ug, ugi = map(float, sys.argv[1:])
for name, k, i, kg, ig in (("AF_XDP", x, xi, xg, xgi), ("UDP", u, ui, ug, ugi)):
    r = k / i if i > 0 else 0
    print(f"encryption cost over {name}: keyed {k:.3f} Gb/s of file bytes vs --insecure {i:.3f} = {r:.2f} (wire rate {kg:.3f} vs {ig:.3f}); goal >= 0.90: {'met' if r >= 0.9 else 'NOT met'}")
EOF
}

if [ "$security_only" = 1 ]; then
    # Keyed and --insecure rows interleaved, twice: the channel's cost with less drift.
    for round in 1 2; do
        raw="pfs AF_XDP, random ${random_mb} MiB (raw), round $round"
        rawu="pfs UDP driver, random ${random_mb} MiB (raw), round $round"
        pfs_run xdp "$raw" "$work/random.bin"
        insecure=1; pfs_run xdp "$raw, --insecure" "$work/random.bin"; insecure=0
        pfs_run udp "$rawu" "$work/random.bin"
        insecure=1; pfs_run udp "$rawu, --insecure" "$work/random.bin"; insecure=0
    done
    echo
    echo "veth pair, ${queues} queue(s), MTU 1500, ${cores:-$(nproc)} of $(nproc) cores; $(date -u +%FT%TZ)"
    printf '%s\n' "${rows[@]}"
    for round in 1 2; do
        sec_goal "pfs AF_XDP, random ${random_mb} MiB (raw), round $round" "pfs UDP driver, random ${random_mb} MiB (raw), round $round"
    done
    exit 0
fi

echo "unshaped runs ..." >&2
pfs_run xdp "pfs AF_XDP, random ${random_mb} MiB (raw)" "$work/random.bin"
# the other thread model than --xdp-threads auto picks on this machine, measured in the same run
recv_extra=(--xdp-threads workers)
pfs_run xdp "pfs AF_XDP, random ${random_mb} MiB (raw), --xdp-threads workers" "$work/random.bin" --xdp-threads workers
recv_extra=(--xdp-threads session)
pfs_run xdp "pfs AF_XDP, random ${random_mb} MiB (raw), --xdp-threads session" "$work/random.bin" --xdp-threads session
recv_extra=()
pfs_run udp "pfs UDP driver, random ${random_mb} MiB (raw)" "$work/random.bin"
# The same two transfers in plaintext: the channel's cost (goal: keyed >= 90% of these).
insecure=1
pfs_run xdp "pfs AF_XDP, random ${random_mb} MiB (raw), --insecure" "$work/random.bin"
pfs_run udp "pfs UDP driver, random ${random_mb} MiB (raw), --insecure" "$work/random.bin"
insecure=0
iperf_run "iperf3 UDP, 1472 B datagrams" -u -b 0 -l 1472
iperf_run "iperf3 TCP"
blast_frames=$((queues * 400000))
"${pin[@]}" "$blast" --frames "$blast_frames" --size 1514 --queues "$queues" --json >"$work/blast.json"
bg=$(python3 - "$work/blast.json" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")][-1]
d = json.loads(line)
print("%.3f %.0f" % (d["rx_gbps"], d["rx_mpps"] * 1e3))
EOF
)
row "AF_XDP blast, 1514 B frames, ${queues} queue(s)" "-" "-" "-" "${bg% *}" "-" "${bg#* }" "-" "-"

echo "runs at --rate $rate ..." >&2
pfs_run xdp "pfs AF_XDP @${rate}, covered ${covered_mb} MiB" "$work/covered.bin" --rate "$rate"
# iperf3 writes nothing to disk; this row shows what the receiver's msync + fsync costs
recv_extra=(--sync off)
pfs_run xdp "pfs AF_XDP @${rate}, covered ${covered_mb} MiB, recv --sync off" "$work/covered.bin" --rate "$rate"
pfs_run xdp "pfs AF_XDP @${rate}, release pair, recv --sync off" "$release" --rate "$rate"
recv_extra=()
pfs_run xdp "pfs AF_XDP @${rate}, release pair (libstd)" "$release" --rate "$rate"
pfs_run xdp "pfs AF_XDP @${rate}, release pair, --pack never" "$release" --rate "$rate" --pack never
pfs_run xdp "pfs AF_XDP @${rate}, random ${random_mb} MiB" "$work/random.bin" --rate "$rate"
inA tc qdisc add dev "$A" root handle 1: htb default 10 r2q 1000
inA tc class add dev "$A" parent 1: classid 1:10 htb rate "$rate"
iperf_run "iperf3 TCP, HTB ${rate}"
inA tc qdisc del dev "$A" root

echo
echo "veth pair, ${queues} queue(s), MTU 1500, ${cores:-$(nproc)} of $(nproc) cores; $(date -u +%FT%TZ)"
printf '| %-52s | %10s | %10s | %10s | %12s | %12s | %8s | %10s | %12s |\n' what "file bytes" "wire" time "goodput Gb/s" "session Gb/s" "kpps" "end to end" "effective Gb/s"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..14})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..14})"
printf '%s\n' "${rows[@]}"
# Issue-3 goals, from the figures above: a release pair's effective throughput against
# 0.8 x (file / wire) x TCP goodput at the same budget; the covered file against 10 x TCP.
tcp=${fig[iperf3 TCP, HTB ${rate}.gbps]}
rp="pfs AF_XDP @${rate}, release pair (libstd)"
cv="pfs AF_XDP @${rate}, covered ${covered_mb} MiB"
cvs="$cv, recv --sync off"
rps="pfs AF_XDP @${rate}, release pair, recv --sync off"
raw="pfs AF_XDP, random ${random_mb} MiB (raw)"
rawu="pfs UDP driver, random ${random_mb} MiB (raw)"
sec_goal "$raw" "$rawu"
python3 - "${fig[$raw.gp]}" "${fig[$raw.kpps]}" "${fig[iperf3 UDP, 1472 B datagrams.gbps]}" <<'EOF'
import sys
gp, kpps, udp = map(float, sys.argv[1:])
print(f"raw AF_XDP goodput {gp:.3f} Gb/s vs kernel UDP (iperf3) {udp:.3f}: {'met' if gp >= udp else 'NOT met'} ({gp/udp:.2f}x); packet rate {kpps:.0f} kpps vs goal 2 x 510 = 1020 kpps: {'met' if kpps >= 1020 else 'NOT met'}")
EOF
python3 - "$tcp" "${fig[$rp.file]}" "${fig[$rp.wire]}" "${fig[$rp.eff]}" "${fig[$cv.eff]}" "${fig[$cv.time]}" "${fig[$rp.time]}" "${fig[$rp.pack]}" "${fig[$cvs.eff]}" "${fig[$rps.eff]}" "${fig[$rps.wire]}" <<'EOF'
import sys
tcp, f, w, eff, ceff, ctime, rtime, rpack, ceff_ns, eff_ns, w_ns = map(float, sys.argv[1:])
goal = 0.8 * f / w * tcp
print(f"release pair: session {eff:.3f} Gb/s; goal 0.8 x file/wire ({f/1e6:.2f} MB / {w/1e6:.2f} MB) x TCP {tcp:.3f} = {goal:.3f} Gb/s: {'met' if eff >= goal else 'NOT met'} ({eff/goal:.2f} of it)")
print(f"release pair: session {rtime*1e3:.1f} ms; packing before it {rpack*1e3:.1f} ms (like planning, not in the session time); with packing counted: {f*8/(rtime+rpack)/1e9:.3f} Gb/s")
print(f"covered file: session {ceff:.3f} Gb/s in {ctime*1e3:.1f} ms = {ceff/tcp:.2f} x TCP; goal 10 x TCP = {10*tcp:.3f} Gb/s: {'met' if ceff >= 10*tcp else 'NOT met'}")
print(f"without the receiver's msync + fsync (iperf3 writes no disk): covered {ceff_ns:.3f} Gb/s = {ceff_ns/tcp:.2f} x TCP; release pair {eff_ns:.3f} Gb/s = {eff_ns/(0.8*f/w_ns*tcp):.2f} of its goal")
EOF
