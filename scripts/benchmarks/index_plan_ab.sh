#!/usr/bin/env bash
# Index build and fast planning, whole processes, one or more pfs builds side by side with
# zstd -3 --patch-from (issue 10: "--level fast: time <= zstd -3", "indexes build at >= 200 MB/s
# of snapshot"), on local inputs only (no downloads):
#
#   scripts/benchmarks/index_plan_ab.sh [--repeat K] [--pairs libstd,cargo,bash,random] --pfs BIN [--pfs BIN]...
#
# Pairs: libstd of the Rust 1.95 toolchain -> the nightly's, bin/cargo stable -> nightly (both
# need those rustup toolchains; skipped with a line otherwise), /usr/bin/bash against the
# synthetic recipe only, 32 MiB of seeded random bytes (synthetic recipe only). Each pair gets a
# snapshot (default recipe + the basis as a corpus bank) built once with the first build. Rows,
# K runs each, the builds interleaved run by run, median (min-max) seconds:
# - `pfs index build` of that snapshot (its index directory removed first: a first build);
# - `pfs plan --level fast` of the target, to a .pbb (snapshot and index load included);
# - `zstd -3 --long=30 -T0 --patch-from=BASIS` (the target alone where there is no basis);
# - random only: `cp` of the target to a new file (the floor for a .pbb as large as the file).
# Output bytes are printed with each plan row; every .pbb is rebuilt with `pfs unplan` and
# compared with the target once per build, untimed.
set -euo pipefail
cd "$(dirname "$0")/../.."

repeat=5
pairs=libstd,cargo,bash,random
bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) repeat=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --pfs) bins+=("$(realpath "$2")"); shift 2 ;;
        *) sed -n '6,6p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || { echo "--repeat must be a positive integer" >&2; exit 2; }
[ ${#bins[@]} -gt 0 ] || { echo "give at least one --pfs BIN" >&2; exit 2; }
command -v zstd >/dev/null || { echo "index_plan_ab: zstd missing (apt install zstd)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pfs-ab.XXXXXX")
trap 'rm -rf "$work"' EXIT
tc=~/.rustup/toolchains
lib() { ls "$tc"/$1-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/lib/libstd-*.so 2>/dev/null | head -1; }
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; return 1; }; e=$(date +%s%N); echo "scale=4; ($e - $s) / 1000000000" | bc; }
stats() { python3 -c 'import sys,statistics as s; v=sorted(float(x) for x in sys.argv[1:]); print(f"{s.median(v):.3f} s ({v[0]:.3f}-{v[-1]:.3f})")' "$@"; }

echo "# index_plan_ab $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo -), $(nproc) cores, $repeat runs each"
for i in "${!bins[@]}"; do echo "# B$((i + 1)) = ${bins[$i]}"; done
first=${bins[0]}
IFS=, read -r -a want <<<"$pairs"
for pair in "${want[@]}"; do
    basis="" target=""
    case "$pair" in
        libstd) basis=$(lib 1.95.0); target=$(lib nightly) ;;
        cargo) basis=$tc/stable-x86_64-unknown-linux-gnu/bin/cargo; target=$tc/nightly-x86_64-unknown-linux-gnu/bin/cargo ;;
        bash) target=/usr/bin/bash ;;
        random) target=$work/random.bin
                python3 -c 'import random,sys; r=random.Random(7); sys.stdout.buffer.write(r.randbytes(32<<20))' >"$target" ;;
        *) echo "unknown pair $pair" >&2; exit 2 ;;
    esac
    if [ -n "$basis" ] && { [ ! -f "$basis" ] || [ ! -f "$target" ]; }; then
        echo "## $pair: skipped (needs the rustup toolchains 1.95.0/stable and nightly)"; continue
    fi
    snap=$work/snap-$pair
    add=(); [ -n "$basis" ] && add=(--add "$basis")
    "$first" snapshot build --out "$snap" "${add[@]}" --no-index >/dev/null
    snap_bytes=$(stat -c %s "$snap/snapshot.bin")
    echo "## $pair: target $(stat -c %s "$target") B, snapshot $snap_bytes B"
    declare -A idx=() pl=() out=()
    z=() cp_t=()
    for r in $(seq "$repeat"); do
        for i in "${!bins[@]}"; do
            b=${bins[$i]}
            rm -rf "$snap/index"
            idx[$i]+=" $(secs "$b" index build "$snap")"
            pl[$i]+=" $(secs "$b" plan --snapshot "$snap" --level fast -o "$work/$pair-$i.pbb" "$target")"
            out[$i]=$(stat -c %s "$work/$pair-$i.pbb")
        done
        if [ -n "$basis" ]; then
            z+=("$(secs zstd -q -f -3 --long=30 -T0 --patch-from="$basis" "$target" -o "$work/z.zst")")
        else
            z+=("$(secs zstd -q -f -3 --long=30 -T0 "$target" -o "$work/z.zst")")
        fi
        # the floor for a .pbb about the file's size: copying the file to a new file
        [ "$pair" = random ] && cp_t+=("$(secs cp "$target" "$work/copy.bin")")
    done
    for i in "${!bins[@]}"; do
        "${bins[$i]}" unplan --snapshot "$snap" -o "$work/rt" "$work/$pair-$i.pbb" >/dev/null
        cmp -s "$work/rt" "$target" || { echo "B$((i + 1)): $pair rebuilt differs from the target" >&2; exit 1; }
        # shellcheck disable=SC2086
        med=$(python3 -c 'import sys,statistics as s; print(s.median(float(x) for x in sys.argv[1:]))' ${idx[$i]})
        # shellcheck disable=SC2086
        echo "B$((i + 1)) pfs index build: $(stats ${idx[$i]}), $(echo "scale=0; $snap_bytes / $med / 1000000" | bc) MB/s of snapshot (median)"
        # shellcheck disable=SC2086
        echo "B$((i + 1)) pfs plan --level fast: $(stats ${pl[$i]}), ${out[$i]} B (rebuilt bit-exact)"
    done
    echo "zstd -3 --long=30 ${basis:+--patch-from}: $(stats "${z[@]}"), $(stat -c %s "$work/z.zst") B"
    [ ${#cp_t[@]} -gt 0 ] && echo "cp (the file to a new file, the floor for a stored .pbb): $(stats "${cp_t[@]}")"
    unset idx pl out
done
