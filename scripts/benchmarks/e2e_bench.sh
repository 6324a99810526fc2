#!/usr/bin/env bash
# End-to-end benchmark (`just bench-e2e`, root): wall time from starting the sender to the file
# renamed into place at the receiver, over a veth pair between two namespaces this script
# creates and removes, every figure measured in this run.
#
#   scripts/benchmarks/e2e_bench.sh [--rate R] [--random-mb N] [--covered-mb N] [--unheld-mb N] [--snap-mb N]
#                                   [--repeat K] [--queues Q] [--metrics FILE]
#                                   [--send-args "ARGS"]   (extra pfs send flags, e.g. "--level max")
#                                   [--pfs BIN]...   (the pfs binary; give it twice to compare two
#                                                     builds in one run; default: target/release/pfs,
#                                                     built first)
#
# Files: the libstd release pair (basis: the stable toolchain's libstd-*.so, a corpus bank of
# the snapshot; target: the nightly's), N MiB of random bytes, N MiB the snapshot holds
# whole (cut from its synthetic banks), and N MiB of an ELF it does not hold (the head of the
# nightly's librustc_driver-*.so; --unheld-mb N, 0 = no such rows; its `zstd -3` row
# compresses the file alone, there is no basis). Rows, K runs each (median, with min-max):
# - pfs send --rate R (pfs paces itself; AF_XDP bypasses qdiscs) to pfs recv;
# - the raw file over TCP (scripts/benchmarks/e2e.py: sendfile to a receiver that writes,
#   fsyncs and renames), the sending veth shaped to R by HTB;
# - `zstd -3 --long=30 --patch-from=OLD | TCP | zstd -d --patch-from=OLD` (release pair);
# - the covered file with neither side flushing (pfs recv --sync off, TCP receiver without
#   fsync), and `dd conv=fsync` of the covered file to local disk (the physical floor).
# Time: `file` = from spawning the sender to the receiver's output appearing under its final
# name (inotify), `exit` = to the sender's exit. The receiver is started (and listening)
# before the clock starts. Goal lines of issue 10 follow the table, met / NOT met with ratios.
# The pfs rows run with keys (scripts/keys.sh: authenticated, encrypted sessions);
# PFS_INSECURE=1 runs them in plaintext (--insecure), and the header says which.
# With several --pfs builds, each pfs row is run for each build in turn (same inputs, same
# snapshot, interleaved run by run), labelled [B1], [B2], ... and each build gets goal lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/keys.sh

rate=1gbit
random_mb=32
covered_mb=32
unheld_mb=32
snap_mb=64
repeat=3
queues=2
metrics=""
send_args=()
pfs_bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --random-mb) random_mb=$2; shift 2 ;;
        --covered-mb) covered_mb=$2; shift 2 ;;
        --unheld-mb) unheld_mb=$2; shift 2 ;;
        --snap-mb) snap_mb=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --metrics) metrics=$2; shift 2 ;;
        --send-args) read -r -a send_args <<<"$2"; shift 2 ;;
        --pfs) pfs_bins+=("$(realpath "$2")"); shift 2 ;;
        *) sed -n '6,11p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || { echo "--repeat must be a positive integer" >&2; exit 2; }
[[ "$unheld_mb" =~ ^[0-9]+$ ]] || { echo "--unheld-mb must be a whole number of MiB" >&2; exit 2; }

[ "$(id -u)" = 0 ] || { echo "bench-e2e needs root (namespaces, XDP, AF_XDP, tc)" >&2; exit 1; }
for t in zstd python3 tc ip dd; do
    command -v "$t" >/dev/null || { echo "bench-e2e: $t missing" >&2; exit 1; }
done
[ -z "$metrics" ] || mkdir -p "$(dirname "$metrics")"

if [ ${#pfs_bins[@]} -eq 0 ]; then
    cargo build --release --bin pfs >&2
    pfs_bins=("$PWD/target/release/pfs")
fi
for b in "${pfs_bins[@]}"; do
    [ -x "$b" ] || { echo "--pfs $b: not an executable" >&2; exit 2; }
done
# The first build makes the snapshot and answers the --help probe; tags name the builds.
pfs=${pfs_bins[0]}
tags=()
if [ ${#pfs_bins[@]} -eq 1 ]; then
    tags=("")
else
    for i in "${!pfs_bins[@]}"; do tags+=(" [B$((i + 1))]"); done
fi
e2e=$PWD/scripts/benchmarks/e2e.py
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit+dirty"
send_help=$("$pfs" send --help 2>/dev/null || true)
if python3 - "$send_help" <<'EOF'
import sys, re
h = sys.argv[1]
m = re.search(r"^ +--level <LEVEL>(.*?)(\n      --|\n  -|\Z)", h, re.S | re.M)
sys.exit(0 if m and all(w in m.group(1) for w in ("fast", "default", "max")) else 1)
EOF
then send_levels="yes (pfs send's own default preset is used)"; else send_levels="no"; fi

name=pfse2e$$
name=${name:0:12}
work=$(mktemp -d /tmp/pfs-e2e-bench.XXXXXX)
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

# Inputs: snapshot with the stable libstd as a corpus bank; the nightly's is the target.
libstd() { find "$(rustc +"$1" --print sysroot)/lib" -name 'libstd-*.so' | sort | head -1; }
old=$(libstd stable)
new=$(libstd nightly)
[ -n "$old" ] && [ -n "$new" ] || { echo "need stable and nightly toolchains with libstd-*.so" >&2; exit 1; }
echo "building a ${snap_mb} MiB snapshot + corpus bank $(basename "$old") ..." >&2
"$pfs" snapshot build --size-mb "$snap_mb" --add "$old" --out "$work/snap" >&2
mkdir -p "$work/in"
head -c $((random_mb << 20)) /dev/urandom >"$work/in/random.bin"
dd if="$work/snap/snapshot.bin" of="$work/in/covered.bin" bs=1M skip=1 count="$covered_mb" status=none
cp "$new" "$work/in/libstd-new.so"
unheld_src=""
if [ "$unheld_mb" -gt 0 ]; then
    unheld_src=$(find "$(rustc +nightly --print sysroot)/lib" -maxdepth 1 -name 'librustc_driver-*.so' | sort | head -1)
    if [ -z "$unheld_src" ] || [ "$(stat -c %s "$unheld_src")" -lt $((unheld_mb << 20)) ]; then
        echo "no nightly librustc_driver-*.so of ${unheld_mb} MiB or more: no rows for a file the snapshot does not hold" >&2
        unheld_mb=0
    else
        head -c $((unheld_mb << 20)) "$unheld_src" >"$work/in/unheld.bin"
    fi
fi
zstd9=$(zstd -9 --long=30 -T0 -q -c --patch-from="$old" "$work/in/libstd-new.so" | wc -c)
pfs_keys "$pfs" "$work/keys"
if [ "${PFS_INSECURE:-0}" = 1 ]; then security="plaintext (--insecure)"; else security="keys (sender and receiver identities, authorized-senders file)"; fi

results=$work/results.txt
: >"$results"
port=7311

# record LABEL FILE_S EXIT_S WIRE FILE_BYTES [SUMMARY_EFFECTIVE_GBPS]
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$results"; }
# last JSON line of FILE, field KEY ('' when absent)
lastkey() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); v=d.get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }
jget() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

# wait until LOG holds PATTERN (the receiver is ready), at most 30 s
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; return 1; }

# pfs_once LABEL FILE SYNC (with the build in $pfs)
pfs_once() {
    local label=$1 file=$2 sync=$3
    local out="$work/out-$RANDOM$RANDOM" m="$work/m-$RANDOM.jsonl" log="$work/recv-$RANDOM.log"
    mkdir -p "$out"
    ip netns exec "$B" "$pfs" recv --once --transport xdp --iface "$B" --listen "$ipB" --snapshot "$work/snap" \
        "${RECV_KEYS[@]}" --out-dir "$out" --sync "$sync" --metrics "$m.recv" --timeout 60 >"$log" 2>&1 &
    local rpid=$!
    pids+=("$rpid")
    wait_for "$log" '^listening'
    local t
    t=$(python3 "$e2e" time --watch "$out/$(basename "$file")" -- \
        ip netns exec "$A" "$pfs" send --transport xdp --iface "$A" --dst "$ipB" --snapshot "$work/snap" \
        "${SEND_KEYS[@]}" --rate "$rate" --metrics "$m" ${send_args[@]+"${send_args[@]}"} "$file" 2>"$log.send") || { cat "$log.send" "$log" >&2; exit 1; }
    wait "$rpid" || { cat "$log" >&2; exit 1; }
    cmp -s "$file" "$out/$(basename "$file")" || { echo "$label: received file differs" >&2; exit 1; }
    local wire
    wire=$(lastkey "$m" wire_bytes)
    record "$label" "$(jget "$t" file_s)" "$(jget "$t" exit_s)" "$wire" "$(stat -c %s "$file")" "$(lastkey "$m" effective_gbps)"
    rm -rf "$out"
}

# tcp_once LABEL FILE raw|zstd|zstd-alone SYNC(on|off) (zstd: -3 --patch-from the old libstd;
# zstd-alone: -3 of the file alone)
tcp_once() {
    local label=$1 file=$2 mode=$3 sync=$4
    local out="$work/out-$RANDOM$RANDOM" log="$work/tcp-$RANDOM.log"
    mkdir -p "$out"
    local final="$out/$(basename "$file")"
    local rargs=(--listen "$ipB" --port "$port" --out "$final")
    [ "$sync" = on ] || rargs+=(--no-sync)
    case "$mode" in
        zstd) rargs+=(--zstd-patch-from "$old") ;;
        zstd-alone) rargs+=(--zstd) ;;
    esac
    ip netns exec "$B" python3 "$e2e" tcp-recv "${rargs[@]}" >"$log" 2>&1 &
    local rpid=$!
    pids+=("$rpid")
    wait_for "$log" '^listening'
    local t
    if [ "$mode" = raw ]; then
        t=$(python3 "$e2e" time --watch "$final" -- \
            ip netns exec "$A" python3 "$e2e" tcp-send --dst "$ipB" --port "$port" "$file") \
            || { cat "$log" >&2; exit 1; }
    elif [ "$mode" = zstd ]; then
        t=$(python3 "$e2e" time --watch "$final" -- \
            ip netns exec "$A" sh -c "zstd -3 --long=30 -T0 -q -c --patch-from='$old' '$file' | python3 '$e2e' tcp-send --dst '$ipB' --port '$port' -") \
            || { cat "$log" >&2; exit 1; }
    else
        t=$(python3 "$e2e" time --watch "$final" -- \
            ip netns exec "$A" sh -c "zstd -3 -T0 -q -c '$file' | python3 '$e2e' tcp-send --dst '$ipB' --port '$port' -") \
            || { cat "$log" >&2; exit 1; }
    fi
    wait "$rpid" || { cat "$log" >&2; exit 1; }
    cmp -s "$file" "$final" || { echo "$label: received file differs" >&2; exit 1; }
    local wire
    wire=$(lastkey "$log" wire_bytes)
    record "$label" "$(jget "$t" file_s)" "$(jget "$t" exit_s)" "$wire" "$(stat -c %s "$file")"
    rm -rf "$out"
}

dd_once() {
    local t
    rm -f "$work/dd.out"
    t=$(python3 "$e2e" time -- dd if="$work/in/covered.bin" of="$work/dd.out" bs=1M conv=fsync status=none)
    record "dd conv=fsync, covered ${covered_mb} MiB (local disk)" "" "$(jget "$t" exit_s)" "" "$(stat -c %s "$work/in/covered.bin")"
    rm -f "$work/dd.out"
}

R=libstd-new.so
P_LIB="pfs send, libstd pair"
P_RND="pfs send, random ${random_mb} MiB"
P_COV="pfs send, covered ${covered_mb} MiB"
P_COVN="pfs send, covered ${covered_mb} MiB, recv --sync off"
T_LIB="raw TCP, libstd nightly"
Z_LIB="zstd -3 --patch-from | TCP | zstd -d, libstd pair"
T_RND="raw TCP, random ${random_mb} MiB"
T_COV="raw TCP, covered ${covered_mb} MiB"
T_COVN="raw TCP, covered ${covered_mb} MiB, receiver without fsync"
DD="dd conv=fsync, covered ${covered_mb} MiB (local disk)"
P_UNH="pfs send, ELF not in the snapshot ${unheld_mb} MiB"
T_UNH="raw TCP, ELF not in the snapshot ${unheld_mb} MiB"
Z_UNH="zstd -3 | TCP | zstd -d, ELF not in the snapshot ${unheld_mb} MiB"

echo "pfs runs at --rate $rate (x$repeat, ${#pfs_bins[@]} build(s)) ..." >&2
for _ in $(seq 1 "$repeat"); do
    for i in "${!pfs_bins[@]}"; do
        pfs=${pfs_bins[$i]}
        tag=${tags[$i]}
        pfs_once "$P_LIB$tag" "$work/in/$R" on
        pfs_once "$P_RND$tag" "$work/in/random.bin" on
        pfs_once "$P_COV$tag" "$work/in/covered.bin" on
        pfs_once "$P_COVN$tag" "$work/in/covered.bin" off
        [ "$unheld_mb" -eq 0 ] || pfs_once "$P_UNH$tag" "$work/in/unheld.bin" on
    done
    dd_once
done
pfs=${pfs_bins[0]}
echo "TCP runs, HTB $rate on $A (x$repeat) ..." >&2
ip netns exec "$A" tc qdisc add dev "$A" root handle 1: htb default 10 r2q 1000
ip netns exec "$A" tc class add dev "$A" parent 1: classid 1:10 htb rate "$rate"
for _ in $(seq 1 "$repeat"); do
    tcp_once "$T_LIB" "$work/in/$R" raw on
    tcp_once "$Z_LIB" "$work/in/$R" zstd on
    tcp_once "$T_RND" "$work/in/random.bin" raw on
    tcp_once "$T_COV" "$work/in/covered.bin" raw on
    tcp_once "$T_COVN" "$work/in/covered.bin" raw off
    if [ "$unheld_mb" -gt 0 ]; then
        tcp_once "$T_UNH" "$work/in/unheld.bin" raw on
        tcp_once "$Z_UNH" "$work/in/unheld.bin" zstd-alone on
    fi
done
ip netns exec "$A" tc qdisc del dev "$A" root

echo
echo "# bench-e2e $(date -u +%FT%TZ), commit $commit, $(nproc) cores, veth pair (${queues} queues, MTU 1500), --rate $rate, $repeat runs per row"
echo "pfs sessions: $security"
echo "pfs send --level presets: $send_levels; extra pfs send flags: ${send_args[*]:-none}; zstd -9 --long=30 --patch-from of the libstd pair: $zstd9 B"
if [ ${#pfs_bins[@]} -gt 1 ]; then
    for i in "${!pfs_bins[@]}"; do echo "build${tags[$i]}: ${pfs_bins[$i]}"; done
fi
tags_joined=$(printf '%s\t' "${tags[@]}")
python3 - "$results" "$metrics" "$commit" "$zstd9" "$P_LIB" "$P_RND" "$P_COV" "$P_COVN" "$T_LIB" "$Z_LIB" "$T_RND" "$T_COV" "$T_COVN" "$DD" "$tags_joined" "$P_UNH" "$T_UNH" "$Z_UNH" <<'EOF'
import json, statistics, sys, time
res, metrics, commit, zstd9 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
P_LIB0, P_RND0, P_COV0, P_COVN0, T_LIB, Z_LIB, T_RND, T_COV, T_COVN, DD = sys.argv[5:15]
tags = sys.argv[15].split("\t")[:-1] or [""]
P_UNH0, T_UNH, Z_UNH = sys.argv[16:19]
rows = {}
order = []
for line in open(res):
    label, fs, es, wire, fb, summ = line.rstrip("\n").split("\t")
    if label not in rows:
        rows[label] = {"file": [], "exit": [], "wire": [], "bytes": int(fb), "summary": []}
        order.append(label)
    r = rows[label]
    if fs: r["file"].append(float(fs))
    if es: r["exit"].append(float(es))
    if wire: r["wire"].append(int(wire))
    if summ: r["summary"].append(float(summ))
med = lambda v: statistics.median(v) if v else None
def span(v):
    return f"{med(v):.3f} s ({min(v):.3f}-{max(v):.3f})" if v else "-"
print()
print("| what | file bytes | wire bytes (payload) | end to end: file renamed (median, min-max) | sender exit (median) | effective Gbit/s (file / end to end) | pfs summary's effective Gbit/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
for label in order:
    r = rows[label]
    end = r["file"] or r["exit"]
    eff = r["bytes"] * 8 / med(end) / 1e9 if end else None
    wire = f"{med(r['wire']):,.0f}" if r["wire"] else "-"
    lab = label.replace("|", "\\|")
    print(f"| {lab} | {r['bytes']:,} | {wire} | {span(end)} | {('%.3f s' % med(r['exit'])) if r['exit'] and r['file'] else '-'} | {('%.3f' % eff) if eff else '-'} | {('%.3f' % med(r['summary'])) if r['summary'] else '-'} |")
    if metrics:
        with open(metrics, "a") as f:
            f.write(json.dumps({"kind": "bench-e2e", "run": run, "commit": commit, "row": label,
                "file_bytes": r["bytes"], "wire_bytes": med(r["wire"]), "file_s": r["file"],
                "exit_s": r["exit"], "summary_effective_gbps": r["summary"]}) + "\n")
def t(label):
    r = rows.get(label)
    if not r: return None
    return med(r["file"] or r["exit"])
print()
def goal(name, ok, line):
    print(f"goal {name}: {'met' if ok else 'NOT met'}; {line}")
    if metrics:
        with open(metrics, "a") as f:
            f.write(json.dumps({"kind": "bench-e2e-goal", "run": run, "commit": commit, "goal": name, "met": ok, "line": line}) + "\n")
for tag in tags:
    P_LIB, P_RND, P_COV, P_COVN = (p + tag for p in (P_LIB0, P_RND0, P_COV0, P_COVN0))
    if tag:
        print(f"build{tag}:")
    a, b = t(P_RND), t(T_RND)
    goal("random <= 1.1 x raw TCP", a <= 1.1 * b, f"pfs {a:.3f} s vs raw TCP {b:.3f} s = {a/b:.2f}x (limit 1.10x)")
    a, b = t(P_LIB), t(Z_LIB)
    w = med(rows[P_LIB]["wire"])
    goal("libstd <= zstd -3 | TCP time, wire < zstd -9", a <= b and w < zstd9,
         f"time pfs {a:.3f} s vs zstd|TCP {b:.3f} s = {a/b:.2f}x; wire pfs {w:,} B vs zstd -9 {zstd9:,} B = {w/zstd9:.2f}x")
    a, b = t(P_COV), t(DD)
    goal("covered within 1.5 x dd conv=fsync", a <= 1.5 * b, f"pfs {a:.3f} s vs dd conv=fsync {b:.3f} s = {a/b:.2f}x (limit 1.50x)")
    a, b = t(P_COVN), t(T_COVN)
    goal(">= 10 x faster than raw TCP without flush (covered)", b >= 10 * a,
         f"raw TCP (no fsync) {b:.3f} s / pfs (--sync off) {a:.3f} s = {b/a:.1f}x (goal >= 10x)")
    a, b = t(P_COV), t(T_COV)
    print(f"(with flush: raw TCP {b:.3f} s / pfs {a:.3f} s = {b/a:.1f}x)")
    a, b, z = t(P_UNH0 + tag), t(T_UNH), t(Z_UNH)
    if a and b and z:
        w, zw = med(rows[P_UNH0 + tag]["wire"]), med(rows[Z_UNH]["wire"])
        print(f"(not in the snapshot, no goal: pfs {a:.3f} s vs raw TCP {b:.3f} s = {a/b:.2f}x, vs zstd -3 | TCP {z:.3f} s = {a/z:.2f}x; wire pfs {w:,} B, zstd -3 {zw:,} B)")
    # issue 10 item 7: the summary's headline should count from the start of pfs send to the end
    for label in (P_LIB, P_RND, P_COV):
        r = rows[label]
        if r["summary"] and (r["file"] or r["exit"]):
            meas = r["bytes"] * 8 / med(r["exit"] or r["file"]) / 1e9
            print(f"headline [{label}]: pfs summary says {med(r['summary']):.3f} Gbit/s effective; file bytes / time to the sender's exit {meas:.3f} Gbit/s ({med(r['summary'])/meas:.2f}x)")
EOF
