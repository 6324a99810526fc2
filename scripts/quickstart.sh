#!/usr/bin/env bash
# The README's first command: from a fresh Debian 12 machine (as root), install what is needed,
# build pfs, build the default snapshot, and transfer files over a veth pair between two
# network namespaces created here (and removed at the end), checking every file bit-exact.
#
#   bash scripts/quickstart.sh [--transport xdp|udp]
#
# Files sent: /usr/bin/bash (an ELF binary), 8 MB of random bytes (nothing in the snapshot
# matches them) and a 4 MiB slice of the snapshot itself (fully covered). Each side prints its
# summary; metrics lines go to logs/patterns/metrics.jsonl.
#
# The transfer is authenticated and encrypted: scripts/keys.sh makes a sender and a receiver
# identity under out/quickstart/keys (docs/security.md). PFS_INSECURE=1 runs it in plaintext.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/keys.sh
transport=${PFS_TRANSPORT:-xdp}
while [ $# -gt 0 ]; do
    case "$1" in
        --transport) transport=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--transport xdp|udp]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "quickstart: run as root (it creates network namespaces)" >&2; exit 1; }

bash scripts/setup.sh
echo "quickstart: building pfs (release)"
cargo build --release --locked -q
pfs="$PWD/target/release/pfs"

snap=out/snapshot
if ! "$pfs" snapshot info "$snap" >/dev/null 2>&1; then
    echo "quickstart: building the default snapshot in $snap"
    "$pfs" snapshot build --out "$snap"
fi
"$pfs" index build "$snap" >/dev/null

work=out/quickstart
rm -rf "$work"
mkdir -p "$work/send" "$work/recv"
cp /usr/bin/bash "$work/send/bash"
head -c 8000000 /dev/urandom > "$work/send/random.bin"
dd if="$snap/snapshot.bin" of="$work/send/covered.bin" bs=1M skip=20 count=4 status=none
pfs_keys "$pfs" "$work/keys"
echo "quickstart: keys in $work/keys (sender ${SENDER_PUB:-none}, receiver ${RECEIVER_PUB:-none})"

ns="pfsqs$$"
cleanup() { bash scripts/netns.sh down "$ns" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
bash scripts/netns.sh up "$ns" --queues 2 >/dev/null
dst=$(ip netns exec "${ns}b" ip -4 -o addr show dev "${ns}b" | awk '{print $4}' | cut -d/ -f1)
echo "quickstart: veth pair ${ns}a <-> ${ns}b, receiver at $dst, transport $transport"

ip netns exec "${ns}b" "$pfs" recv --once --transport "$transport" --iface "${ns}b" --snapshot "$snap" \
    "${RECV_KEYS[@]}" --out-dir "$work/recv" --timeout 60 > "$work/recv.log" 2>&1 &
rpid=$!
sleep 1
ip netns exec "${ns}a" "$pfs" send --transport "$transport" --iface "${ns}a" --snapshot "$snap" \
    "${SEND_KEYS[@]}" --dst "$dst" "$work/send/bash" "$work/send/random.bin" "$work/send/covered.bin"
wait "$rpid" || { cat "$work/recv.log"; echo "quickstart: the receiver failed" >&2; exit 1; }
cat "$work/recv.log"
for f in bash random.bin covered.bin; do
    cmp "$work/send/$f" "$work/recv/$f"
done
echo "quickstart: all 3 files arrived bit-exact in $work/recv"
