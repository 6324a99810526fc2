#!/usr/bin/env bash
# Two network namespaces joined by a veth pair, for PacketFS runs and benchmarks on one host.
#
#   scripts/netns.sh up   NAME [--queues N] [--mtu M] [--net X]
#   scripts/netns.sh down NAME
#   scripts/netns.sh star NAME [--senders K] [--queues N] [--mtu M] [--net X]
#   scripts/netns.sh star-down NAME [--senders K]
#
# `up` creates namespaces ${NAME}a and ${NAME}b, a veth pair whose end in ${NAME}a is called
# ${NAME}a (10.201.X.1/30) and whose end in ${NAME}b is called ${NAME}b (10.201.X.2/30), both
# with N rx and N tx queues (symmetric, as AF_XDP on veth needs), MTU M, links and lo up, and
# bpffs mounted. X defaults to a number derived from NAME. `down` removes both namespaces
# (and with them the veth pair); both are idempotent. Traffic stays inside the namespaces.
# `star` (twin of tests/common/netns.rs NetnsStar) puts one receiver host ${NAME}r
# (10.202.X.1/24) and K sender hosts ${NAME}s0.. (10.202.X.10+i/24) on one bridged segment:
# each host namespace holds its own veth end named like it (so each can attach its own XDP
# program: several AF_XDP senders at once), the bridge ${NAME}br and the peers live in
# ${NAME}w. `star-down` removes them (K defaults to 2).
# NAME: letters, digits, '-' or '_', at most 14 characters (interface names hold 15; `star`: 12).
set -euo pipefail

usage() {
    sed -n '4,7p' "$0" | sed 's/^# *//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2
shift 2
queues=1
mtu=1500
net=""
senders=2
while [ $# -gt 0 ]; do
    case "$1" in
        --senders) senders=${2:?}; shift 2 ;;
        --queues) queues=${2:?}; shift 2 ;;
        --mtu) mtu=${2:?}; shift 2 ;;
        --net) net=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done
[[ "$name" =~ ^[A-Za-z0-9_-]{1,14}$ ]] || { echo "netns.sh: bad NAME '$name'" >&2; exit 2; }
[[ "$queues" =~ ^[0-9]+$ ]] && [ "$queues" -ge 1 ] && [ "$queues" -le 64 ] \
    || { echo "netns.sh: --queues must be 1..64" >&2; exit 2; }
[[ "$mtu" =~ ^[0-9]+$ ]] && [ "$mtu" -ge 68 ] || { echo "netns.sh: bad --mtu" >&2; exit 2; }
if [ -z "$net" ]; then
    net=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 250 ))
fi
[[ "$net" =~ ^[0-9]+$ ]] && [ "$net" -le 255 ] || { echo "netns.sh: --net must be 0..255" >&2; exit 2; }

a="${name}a"
b="${name}b"

ns_exists() { ip netns list 2>/dev/null | grep -qw -- "^$1"; }

down() {
    local ns
    for ns in "$a" "$b"; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
        fi
    done
}

case "$cmd" in
    up)
        [ "$(id -u)" -eq 0 ] || { echo "netns.sh: needs root" >&2; exit 1; }
        mount | grep -q ' /sys/fs/bpf type bpf' || mount -t bpf bpf /sys/fs/bpf
        if ns_exists "$a" && ns_exists "$b" && ip -n "$a" link show "$a" >/dev/null 2>&1; then
            have=$(ip -n "$a" -d link show "$a" | grep -o 'numrxqueues [0-9]*' | cut -d' ' -f2)
            if [ "$have" = "$queues" ]; then
                ip -n "$a" link set "$a" mtu "$mtu"
                ip -n "$b" link set "$b" mtu "$mtu"
                echo "netns.sh: $a/$b already up ($queues queues, mtu $mtu)"
                exit 0
            fi
        fi
        down
        trap 'down' ERR
        ip netns add "$a"
        ip netns add "$b"
        ip link add "$a" netns "$a" numrxqueues "$queues" numtxqueues "$queues" type veth \
            peer name "$b" netns "$b" numrxqueues "$queues" numtxqueues "$queues"
        for side in a b; do
            ns="${name}${side}"
            ip -n "$ns" link set lo up
            ip -n "$ns" link set "$ns" mtu "$mtu"
        done
        ip -n "$a" addr add "10.201.$net.1/30" dev "$a"
        ip -n "$b" addr add "10.201.$net.2/30" dev "$b"
        ip -n "$a" link set "$a" up
        ip -n "$b" link set "$b" up
        trap - ERR
        echo "netns.sh: $a ($a 10.201.$net.1) <-> $b ($b 10.201.$net.2), $queues queues, mtu $mtu"
        ;;
    down)
        down
        echo "netns.sh: $a/$b removed"
        ;;
    star|star-down)
        [[ "$senders" =~ ^[0-9]+$ ]] && [ "$senders" -ge 1 ] && [ "$senders" -le 9 ] \
            || { echo "netns.sh: --senders must be 1..9" >&2; exit 2; }
        hosts=("${name}r")
        for i in $(seq 0 $((senders - 1))); do hosts+=("${name}s$i"); done
        star_down() {
            local ns
            for ns in "${name}w" "${hosts[@]}"; do
                if ns_exists "$ns"; then ip netns del "$ns"; fi
            done
        }
        if [ "$cmd" = star-down ]; then
            star_down
            echo "netns.sh: ${name}r, ${name}s*, ${name}w removed"
            exit 0
        fi
        [ "$(id -u)" -eq 0 ] || { echo "netns.sh: needs root" >&2; exit 1; }
        [ ${#name} -le 12 ] || { echo "netns.sh: star NAME: at most 12 characters" >&2; exit 2; }
        mount | grep -q ' /sys/fs/bpf type bpf' || mount -t bpf bpf /sys/fs/bpf
        star_down
        trap 'star_down' ERR
        w="${name}w"
        ip netns add "$w"
        ip -n "$w" link set lo up
        ip -n "$w" link add "${name}br" type bridge
        ip -n "$w" link set "${name}br" up
        for ns in "${hosts[@]}"; do
            suffix=${ns#"$name"}
            if [ "$suffix" = r ]; then host=1; port="${name}pr"; else host=$((10 + ${suffix#s})); port="${name}p${suffix#s}"; fi
            ip netns add "$ns"
            ip -n "$ns" link set lo up
            ip link add "$ns" netns "$ns" numrxqueues "$queues" numtxqueues "$queues" type veth \
                peer name "$port" netns "$w" numrxqueues "$queues" numtxqueues "$queues"
            ip -n "$w" link set "$port" mtu "$mtu" master "${name}br" up
            ip -n "$ns" link set "$ns" mtu "$mtu"
            ip -n "$ns" addr add "10.202.$net.$host/24" dev "$ns"
            ip -n "$ns" link set "$ns" up
            echo "netns.sh: $ns 10.202.$net.$host"
        done
        trap - ERR
        echo "netns.sh: star $name: ${#hosts[@]} hosts on bridge ${name}br, $queues queues, mtu $mtu"
        ;;
    *) usage ;;
esac
