#!/usr/bin/env bash
# A large snapshot end to end (issue 10, "Scale"): build a snapshot of SIZE_MB synthetic MiB
# plus directories of releases as corpus banks (the stable toolchain's lib/ and bin/, and
# /usr/lib/x86_64-linux-gnu: together over 4 GiB with the default size), build its default
# index, plan the nightly libstd against it at each level, rebuild it, and print for each step
# the wall time, the rate per snapshot byte and the peak RSS (GNU time), every figure measured
# in this run. After each build a timed `sync` writes back what it left in the page cache
# (neither build fsyncs its large file), printed beside it, so the index build starts clean.
#
#   scripts/benchmarks/big_snapshot.sh [--size-mb N] [--add DIR]... [--dir DIR] [--keep]
#
# Default 3072 MiB synthetic (the recipe's largest) in a
# temporary directory under target/ that is removed at the end unless --keep. PFS=BIN uses that
# pfs instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mb=3072
adds=()
dir=""
keep=no
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mb) size_mb=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --add) adds+=("$2"); shift 2 ;;
        --keep) keep=yes; shift ;;
        *) sed -n '9,10p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[[ "$size_mb" =~ ^[1-9][0-9]*$ ]] || { echo "--size-mb must be a positive integer" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "big_snapshot: /usr/bin/time missing (apt install time)" >&2; exit 1; }
pfs=${PFS:-}
if [ -z "$pfs" ]; then
    cargo build --release --quiet
    pfs=$PWD/target/release/pfs
fi
if [ -z "$dir" ]; then
    mkdir -p target
    dir=$(mktemp -d "$PWD/target/big-snapshot.XXXXXX")
fi
mkdir -p "$dir"
[ "$keep" = yes ] || trap 'rm -rf "$dir"' EXIT
libdir() { dirname "$(find "$(rustc +"$1" --print sysroot)/lib" -name 'libstd-*.so' | sort | head -1)"; }
old=$(libdir stable)
new=$(find "$(libdir nightly)" -maxdepth 1 -name 'libstd-*.so' | head -1)
[ -d "$old" ] && [ -f "$new" ] || { echo "need stable and nightly toolchains with libstd-*.so" >&2; exit 1; }
if [ ${#adds[@]} -eq 0 ]; then
    sysroot=$(rustc +stable --print sysroot)
    adds=("$sysroot/lib" "$sysroot/bin")
    [ -d /usr/lib/x86_64-linux-gnu ] && adds+=(/usr/lib/x86_64-linux-gnu)
fi
add_args=()
for a in "${adds[@]}"; do add_args+=(--add "$a"); done
need=$(( size_mb * 2 + 6144 ))
avail=$(df -Pm "$dir" | awk 'NR==2 {print $4}')
[ "$avail" -gt "$need" ] || { echo "big_snapshot: $dir has $avail MiB free, needs about $need MiB" >&2; exit 1; }

# step LABEL CMD...: wall seconds and peak RSS of CMD
step() {
    local label=$1; shift
    local t
    t=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$t" "$@" >"$dir/$label.out" 2>"$dir/$label.err" \
        || { cat "$dir/$label.err" >&2; exit 1; }
    read -r secs rss_kb <"$t"
    rm -f "$t"
    echo "$secs $rss_kb"
}
snap=$dir/snap
# wall seconds of `sync`: the writeback a step left behind (neither build fsyncs its big
# file); timed apart, so the index build does not start while the snapshot is written back
synced() { local t0 t1; t0=$(date +%s.%N); sync; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.1f}')"; }
sync
read -r b_s b_rss < <(step build "$pfs" snapshot build --size-mb "$size_mb" "${add_args[@]}" --no-index --out "$snap")
b_sync=$(synced)
bytes=$(stat -c %s "$snap/snapshot.bin")
read -r i_s i_rss < <(step index "$pfs" index build --force "$snap")
i_sync=$(synced)
idx_bytes=$(du -cb "$snap"/index/*.idx | tail -1 | cut -f1)
echo "# big snapshot $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo -), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
python3 - "$bytes" "$b_s" "$b_rss" "$i_s" "$i_rss" "$idx_bytes" "$b_sync" "$i_sync" <<'PY'
import sys
b, bs, brss, is_, irss, ib, bsync, isync = sys.argv[1:]
b, bs, is_, ib, bsync, isync = int(b), float(bs), float(is_), int(ib), float(bsync), float(isync)
print(f"snapshot: {b/1e9:.2f} GB ({b:,} B) built in {bs:.1f} s ({b/bs/1e6:.0f} MB/s), peak RSS {int(brss)/1e6:.2f} GB; then `sync` {bsync:.1f} s (its writeback; with it {b/(bs+bsync)/1e6:.0f} MB/s)")
print(f"index: {ib/1e9:.2f} GB ({ib/b:.2f} B per snapshot byte) built in {is_:.1f} s ({b/is_/1e6:.0f} MB/s of snapshot), peak RSS {int(irss)/1e6:.2f} GB; then `sync` {isync:.1f} s (its writeback; with it {b/(is_+isync)/1e6:.0f} MB/s)")
PY
for level in fast default max; do
    read -r p_s p_rss < <(step "plan-$level" "$pfs" plan --level "$level" --snapshot "$snap" "$new" --out "$dir/new.pbb")
    pbb=$(stat -c %s "$dir/new.pbb")
    read -r u_s u_rss < <(step "unplan-$level" "$pfs" unplan --snapshot "$snap" "$dir/new.pbb" --out "$dir/new.rebuilt")
    cmp -s "$new" "$dir/new.rebuilt" || { echo "plan-$level: rebuilt file differs" >&2; exit 1; }
    echo "plan --level $level of $(basename "$new") ($(stat -c %s "$new") B): $pbb B in $p_s s (whole process), peak RSS $(python3 -c "print(f'{$p_rss/1e6:.2f}')") GB; unplan $u_s s, bit-exact"
    rm -f "$dir/new.rebuilt"
done
