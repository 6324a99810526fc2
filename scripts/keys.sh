#!/usr/bin/env bash
# Keys for the scripts that run both sides of a transfer on one machine (quick start, demo,
# benchmarks, container test): source this file, then
#
#   pfs_keys PFS DIR [SENDER_OPTION...]
#
# makes, once (idempotent: existing keys are kept, the lists rewritten from them), in DIR
# (mode 0700):
#   sender.key, receiver.key     identities (`pfs keygen --out`, mode 0600)
#   authorized_senders           `SENDER_PUB sender [SENDER_OPTION...]` (e.g. dir=alice)
#   known_receivers              `* RECEIVER_PUB`
# and sets the arrays the scripts pass to pfs:
#   SEND_KEYS=(--identity DIR/sender.key --receiver-key RECEIVER_PUB)
#   RECV_KEYS=(--identity DIR/receiver.key --authorized-senders DIR/authorized_senders)
# plus SENDER_PUB and RECEIVER_PUB. With PFS_INSECURE=1 both arrays are (--insecure) instead:
# plaintext, for comparison runs only (docs/security.md).
# On two real hosts each host makes its own key and only public keys travel: see
# docs/two-hosts.md and docs/security.md.

pfs_keys() {
    local pfs=${1:?pfs_keys PFS DIR [SENDER_OPTION...]} dir=${2:?pfs_keys PFS DIR [SENDER_OPTION...]}
    shift 2
    if [ "${PFS_INSECURE:-0}" = 1 ]; then
        SEND_KEYS=(--insecure)
        RECV_KEYS=(--insecure)
        echo "keys: PFS_INSECURE=1: plaintext, unauthenticated frames" >&2
        return 0
    fi
    mkdir -p "$dir"
    chmod 700 "$dir"
    local side
    for side in sender receiver; do
        if [ ! -e "$dir/$side.key" ]; then
            local err
            err=$("$pfs" keygen --out "$dir/$side.key" 2>&1 >/dev/null) \
                || { echo "$err" >&2; return 1; }
        fi
    done
    SENDER_PUB=$("$pfs" key pub "$dir/sender.key") || return 1
    RECEIVER_PUB=$("$pfs" key pub "$dir/receiver.key") || return 1
    local opts=""
    [ $# -gt 0 ] && opts=" $*"
    printf '# made by scripts/keys.sh: PUBKEY NAME [dir=SUB] [max-file=SIZE] [max-session=SIZE]\n%s sender%s\n' \
        "$SENDER_PUB" "$opts" > "$dir/authorized_senders"
    printf '# made by scripts/keys.sh: ADDRESS PUBKEY (ADDRESS: IP, IP:PORT or *)\n* %s\n' \
        "$RECEIVER_PUB" > "$dir/known_receivers"
    SEND_KEYS=(--identity "$dir/sender.key" --receiver-key "$RECEIVER_PUB")
    RECV_KEYS=(--identity "$dir/receiver.key" --authorized-senders "$dir/authorized_senders")
    export SENDER_PUB RECEIVER_PUB
}
