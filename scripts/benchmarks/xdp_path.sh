#!/usr/bin/env bash
# The AF_XDP data path against its ceiling (issue 14): a raw transfer (random bytes the
# snapshot does not cover) over a veth pair between two fresh namespaces, next to the plain
# AF_XDP blast (examples/xsk_blast, 1514 B frames) on a pair with the same queue count, in
# frames per second, and their ratio. Every figure is measured in this run.
#
#   scripts/benchmarks/xdp_path.sh [--queues LIST] [--cores N] [--mb N] [--rounds R]
#                                  [--threads LIST] [--security LIST] [--pfs BIN[,BIN...]]
#                                  [--blast BIN] [--perf DIR] [--busy-poll]
#
# --queues 1,2        queue counts to run (each gets its own veth pair; default 1,2)
# --cores N           run both sides (and the blast) on cores 0..N-1 with taskset and give
#                     pfs `--cpus` from them (default: every core). Same command on 2 or 16 cores.
# --mb N              size of the random file (default 64)
# --rounds R          rounds; within a round every build, thread model and security mode
#                     runs once, interleaved, then the blast (default 3); medians printed
# --threads LIST      --xdp-threads values (default auto)
# --security LIST     keyed,insecure (default both)
# --pfs A,B           builds to compare (default target/release/pfs); labelled by basename
#                     of their directory
# --perf DIR          record cpu-clock call graphs of sender and receiver of the first pfs
#                     run into DIR (perf must be installed; XDP_PATH_PERF_HZ sets the
#                     sampling rate, default 997)
# --busy-poll         pass --busy-poll to both sides (builds that have it)
# kpps = the sender's data-path frames / the session's elapsed time (pfs's summary);
# CPU us/frame = user + system time of each pfs process (/usr/bin/time) / the sender's frames:
# the per-frame cost, less sensitive to other load on the machine than the rate;
# session us/frame = CPU time of each side's session thread (`session_cpu` of the summaries,
# builds that report it) / the sender's frames: with --xdp-threads workers, what the workers
# took off it;
# blast kpps = frames the blast's receivers counted / their time.
set -euo pipefail
cd "$(dirname "$0")/../.."

queues_list=1,2
cores=""
mb=64
rounds=3
threads_list=auto
security_list=keyed,insecure
pfs_list=""
blast=""
perf_dir=""
busy=()
while [ $# -gt 0 ]; do
    case "$1" in
        --queues) queues_list=$2; shift 2 ;;
        --cores) cores=$2; cores_given=1; shift 2 ;;
        --mb) mb=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --threads) threads_list=$2; shift 2 ;;
        --security) security_list=$2; shift 2 ;;
        --pfs) pfs_list=$2; shift 2 ;;
        --blast) blast=$2; shift 2 ;;
        --perf) perf_dir=$2; shift 2 ;;
        --busy-poll) busy=(--busy-poll); shift ;;
        *) sed -n '7,9p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "xdp_path needs root (namespaces, XDP, AF_XDP)" >&2; exit 1; }

if [ -z "$pfs_list" ] || [ -z "$blast" ]; then
    cargo build --release --bin pfs --example xsk_blast >&2
fi
[ -n "$pfs_list" ] || pfs_list=$PWD/target/release/pfs
[ -n "$blast" ] || blast=$PWD/target/release/examples/xsk_blast
IFS=, read -ra pfss <<<"$pfs_list"
IFS=, read -ra qs <<<"$queues_list"
IFS=, read -ra tms <<<"$threads_list"
IFS=, read -ra secs <<<"$security_list"

ncpu=$(nproc)
[ -n "$cores" ] || cores=$ncpu
[ "$cores" -ge 1 ] && [ "$cores" -le "$ncpu" ] || { echo "--cores must be 1..$ncpu" >&2; exit 2; }
cpus=$(seq -s, 0 $((cores - 1)))
pin=(taskset -c "$cpus")
# --cpus only when --cores was given: naming cores makes `--xdp-threads auto` pick workers
cpus_arg=()
[ "$cores" = "$ncpu" ] && [ -z "${cores_given:-}" ] || cpus_arg=(--cpus "$cpus")

work=$(mktemp -d /tmp/pfs-xdp-path.XXXXXX)
names=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "${names[@]}"; do bash scripts/netns.sh down "$n" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

p0=${pfss[0]}
"$p0" snapshot build --size-mb 8 --out "$work/snap" >/dev/null 2>&1
head -c $((mb << 20)) /dev/urandom >"$work/random.bin"
source scripts/keys.sh
pfs_keys "$p0" "$work/keys"

for q in "${qs[@]}"; do
    n=pfsxp$$q$q
    n=${n:0:12}
    names+=("$n")
    bash scripts/netns.sh up "$n" --queues "$q" --mtu 1500 >&2
done

json() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print($2)" "$1"; }
# results: one line per run "queues|label|kpps" in $work/results
: >"$work/results"

# the pfs process under /usr/bin/time (which forks it)
child_of() {
    local c=""
    for _ in $(seq 1 100); do c=$(pgrep -P "$1" | head -1) && [ -n "$c" ] && break; sleep 0.01; done
    echo "${c:-$1}"
}

# one pfs transfer; prints nothing, appends to results
pfs_run() {
    local pfs=$1 q=$2 tm=$3 sec=$4 label=$5 prof=$6
    local n=pfsxp$$q$q
    n=${n:0:12}
    local A=${n}a B=${n}b ipB
    ipB=$(ip -n "$B" -4 -o addr show dev "$B" | awk '{print $4}' | cut -d/ -f1)
    local out="$work/out-$RANDOM" m="$work/m-$RANDOM.jsonl" log="$work/recv-$RANDOM.log"
    local sk=("${SEND_KEYS[@]}") rk=("${RECV_KEYS[@]}")
    if [ "$sec" = insecure ]; then sk=(--insecure); rk=(--insecure); fi
    ip netns exec "$B" "${pin[@]}" /usr/bin/time -f "%U %S" -o "$log.rtime" "$pfs" recv --once --transport xdp --iface "$B" --listen "$ipB" \
        --snapshot "$work/snap" --out-dir "$out" --timeout 60 --xdp-threads "$tm" "${cpus_arg[@]}" --metrics "$m.recv" \
        "${busy[@]}" "${rk[@]}" >"$log" 2>&1 &
    local rpid=$!
    pids+=("$rpid")
    for _ in $(seq 1 300); do grep -q '^listening' "$log" && break; sleep 0.1; done
    local perf_pids=()
    if [ "$prof" = 1 ]; then
        mkdir -p "$perf_dir"
        perf record -e cpu-clock -F "${XDP_PATH_PERF_HZ:-997}" --call-graph dwarf,8192 -p "$(child_of "$rpid")" -o "$perf_dir/recv.data" >/dev/null 2>&1 &
        perf_pids+=($!)
    fi
    ip netns exec "$A" "${pin[@]}" /usr/bin/time -f "%U %S" -o "$log.time" "$pfs" send --transport xdp --iface "$A" --dst "$ipB" \
        --snapshot "$work/snap" --metrics "$m" --xdp-threads "$tm" "${cpus_arg[@]}" "${busy[@]}" "${sk[@]}" \
        "$work/random.bin" >"$log.send" 2>&1 &
    local spid=$!
    if [ "$prof" = 1 ]; then
        perf record -e cpu-clock -F "${XDP_PATH_PERF_HZ:-997}" --call-graph dwarf,8192 -p "$(child_of "$spid")" -o "$perf_dir/send.data" >/dev/null 2>&1 &
        perf_pids+=($!)
    fi
    wait "$spid" || { cat "$log.send" "$log" >&2; exit 1; }
    wait "$rpid" || { cat "$log" >&2; exit 1; }
    [ -z "${XDP_PATH_KEEP:-}" ] || cp "$log.send" "$log" "$m" "$m.recv" "$log.time" "$log.rtime" "$XDP_PATH_KEEP/" 2>/dev/null || true
    for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    cmp -s "$work/random.bin" "$out/random.bin" || { echo "$label: received file differs" >&2; exit 1; }
    rm -rf "$out"
    local kpps cpu
    kpps=$(json "$m" "'%.1f' % (d['frames'] / d['elapsed'] / 1e3)")
    # CPU microseconds per frame of each process, start-up included (user + system)
    cpu=$(python3 -c "
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])
t = lambda f: sum(map(float, open(f).read().split()[-2:]))
r = json.loads(open(sys.argv[4]).read().splitlines()[-1])
s = lambda x: '%.2f' % (x['session_cpu'] / d['frames'] * 1e6) if 'session_cpu' in x else '-'
print('%.1f|%.1f|%s|%s' % (t(sys.argv[2]) / d['frames'] * 1e6, t(sys.argv[3]) / d['frames'] * 1e6, s(d), s(r)))" "$m" "$log.time" "$log.rtime" "$m.recv")
    echo "$q|$label|$kpps|$cpu" >>"$work/results"
    echo "  q=$q $label: $kpps kpps, CPU us/frame send|recv, session thread send|recv $cpu" >&2
}

blast_run() {
    local q=$1
    "${pin[@]}" "$blast" --frames $((q * 400000)) --size 1514 --queues "$q" --json >"$work/blast.json" 2>/dev/null
    local k
    k=$(python3 -c "
import json,sys
l=[l for l in open(sys.argv[1]).read().splitlines() if l.startswith('{')][-1]
print('%.1f' % (json.loads(l)['rx_mpps']*1e3))" "$work/blast.json")
    echo "$q|blast|$k|-|-|-|-" >>"$work/results"
    echo "  q=$q blast: $k kpps" >&2
}

first=1
for r in $(seq 1 "$rounds"); do
    echo "round $r ..." >&2
    for q in "${qs[@]}"; do
        for sec in "${secs[@]}"; do
            for tm in "${tms[@]}"; do
                for pfs in "${pfss[@]}"; do
                    build=$(basename "$(dirname "$pfs")")
                    prof=0
                    if [ -n "$perf_dir" ] && [ "$first" = 1 ]; then prof=1; fi
                    first=0
                    pfs_run "$pfs" "$q" "$tm" "$sec" "pfs $build, $sec, --xdp-threads $tm" "$prof"
                done
            done
        done
        blast_run "$q"
    done
done

echo
echo "veth pairs, MTU 1500, raw ${mb} MiB, cores 0..$((cores - 1)) of $ncpu; $rounds round(s), medians; $(date -u +%FT%TZ)"
python3 - "$work/results" <<'EOF'
import sys, statistics
from collections import defaultdict
runs = defaultdict(list)
order = []
cpu = defaultdict(list)
sess = defaultdict(list)
for line in open(sys.argv[1]):
    q, label, k, cs, cr, ss, sr = line.rstrip("\n").split("|")
    key = (int(q), label)
    if key not in runs:
        order.append(key)
    runs[key].append(float(k))
    if cs != "-":
        cpu[key].append((float(cs), float(cr)))
    if ss != "-" and sr != "-":
        sess[key].append((float(ss), float(sr)))
print("| queues | what | kpps (median) | runs | of blast | CPU us/frame sender, receiver (medians) | session thread us/frame sender, receiver (medians) |")
print("|---|---|---|---|---|---|---|")
for q, label in sorted(order, key=lambda k: (k[0], k[1] != "blast", k[1])):
    v = runs[(q, label)]
    med = statistics.median(v)
    b = statistics.median(runs[(q, "blast")]) if (q, "blast") in runs else 0
    ratio = "-" if label == "blast" or b == 0 else "%.2f" % (med / b)
    c = cpu.get((q, label))
    cs = "-" if not c else "%.1f, %.1f" % (statistics.median(x[0] for x in c), statistics.median(x[1] for x in c))
    e = sess.get((q, label))
    ss = "-" if not e else "%.2f, %.2f" % (statistics.median(x[0] for x in e), statistics.median(x[1] for x in e))
    print(f"| {q} | {label} | {med:.1f} | {' '.join('%.0f' % x for x in v)} | {ratio} | {cs} | {ss} |")
EOF
