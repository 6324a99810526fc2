#!/usr/bin/env bash
# ============================== DEMO ==============================
# DEMO material only: walks through PacketFS end to end on one machine. No production code
# path uses anything in demo/.
#
#   bash demo/run.sh [--transport xdp|udp] [--size-mb N] [--seed S]     (as root)
#
# 1. snapshot   build (or reuse) the default snapshot, print its id
# 2. data       a deterministic synthetic JSON file (demo/gen_synth_json.py) + /usr/bin/bash
# 3. plan       plan the JSON file against the snapshot: the metrics line
# 4. transfer   keys for both sides (scripts/keys.sh: pfs keygen, pfs key pub, the
#               authorized-senders file), then pfs recv in one namespace, pfs send from
#               another, over a veth pair (scripts/netns.sh; removed at the end); the
#               session is authenticated and encrypted (PFS_INSECURE=1: plaintext)
# 5. verify     every received file compared byte for byte
# 6. summary    sizes, raw spill, wire bytes and rates from the metrics log
# Environment: DEMO_SNAPSHOT (default out/snapshot), DEMO_WORK (default out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/keys.sh
transport=xdp size_mb=8 seed=42
while [ $# -gt 0 ]; do
    case "$1" in
        --transport) transport=${2:?}; shift 2 ;;
        --size-mb) size_mb=${2:?}; shift 2 ;;
        --seed) seed=${2:?}; shift 2 ;;
        *) sed -n '6p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
banner() { printf '\n=== DEMO === %s\n' "$*"; }
banner "PacketFS walk-through (demo material; transport $transport)"
[ "$(id -u)" -eq 0 ] || { echo "DEMO: run as root (it creates network namespaces)" >&2; exit 1; }

pfs="$PWD/target/release/pfs"
if [ ! -x "$pfs" ]; then
    banner "building pfs (release)"
    cargo build --release --locked -q
fi
snap=${DEMO_SNAPSHOT:-out/snapshot}
work=${DEMO_WORK:-out/demo}
metrics="$work/metrics.jsonl"
rm -rf "$work"
mkdir -p "$work/send" "$work/recv"

banner "1. snapshot"
if ! "$pfs" snapshot info "$snap" >/dev/null 2>&1; then
    "$pfs" snapshot build --out "$snap"
fi
"$pfs" snapshot info "$snap" | head -n 4

banner "2. data: synthetic JSON ($size_mb MiB, seed $seed) and /usr/bin/bash"
python3 demo/gen_synth_json.py --out "$work/send/synth.json" --size-mb "$size_mb" --seed "$seed"
cp /usr/bin/bash "$work/send/bash"

banner "3. plan: the metrics line"
"$pfs" plan "$work/send/synth.json" --snapshot "$snap" -o "$work/synth.pbb" --metrics "$metrics"

banner "4. keys, then an encrypted transfer over a veth pair between two new namespaces"
pfs_keys "$pfs" "$work/keys"
echo "DEMO: sender key ${SENDER_PUB:-none}, receiver key ${RECEIVER_PUB:-none} (in $work/keys)"
ns="pfsdemo$$"
ns=${ns:0:13}
cleanup() { bash scripts/netns.sh down "$ns" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
bash scripts/netns.sh up "$ns" --queues 2
dst=$(ip -n "${ns}b" -4 -o addr show dev "${ns}b" | awk '{print $4}' | cut -d/ -f1)
ip netns exec "${ns}b" "$pfs" recv --once --transport "$transport" --iface "${ns}b" \
    --snapshot "$snap" "${RECV_KEYS[@]}" --out-dir "$work/recv" --timeout 60 --metrics "$metrics" \
    > "$work/recv.log" 2>&1 &
rpid=$!
until grep -q "listening on" "$work/recv.log" 2>/dev/null; do
    kill -0 "$rpid" 2>/dev/null || { cat "$work/recv.log"; echo "DEMO: receiver exited" >&2; exit 1; }
    sleep 0.1
done
ip netns exec "${ns}a" "$pfs" send --transport "$transport" --iface "${ns}a" \
    --dst "$dst" --snapshot "$snap" "${SEND_KEYS[@]}" --metrics "$metrics" \
    "$work/send/synth.json" "$work/send/bash"
wait "$rpid" || { cat "$work/recv.log"; echo "DEMO: the receiver failed" >&2; exit 1; }
cat "$work/recv.log"

banner "5. verification"
for f in synth.json bash; do
    cmp "$work/send/$f" "$work/recv/$f"
    printf 'DEMO: %-10s bit-exact  sha256 %s\n' "$f" "$(sha256sum < "$work/recv/$f" | cut -c1-16)"
done

banner "6. summary"
python3 - "$metrics" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def gb(x): return f"{x / 1e6:.2f} MB"
for r in rows:
    k = r.get("kind", "plan")
    if k == "plan":
        print(f"plan      {gb(r['file_bytes'])} -> .pbb {gb(r['wire_bytes'])}, raw spill {100 * r['raw_ratio']:.1f}%, "
              f"{r['segments']} segments, {r.get('plan_ms', 0):.0f} ms")
    elif k in ("send", "recv"):
        print(f"{k:<9} {gb(r.get('file_bytes', 0))} of files, {gb(r.get('wire_bytes', 0))} on the wire, "
              f"effective {r.get('effective_gbps', 0):.3f} Gbit/s ({r.get('transport')})")
PY
banner "done: files in $work/recv, metrics in $metrics"
