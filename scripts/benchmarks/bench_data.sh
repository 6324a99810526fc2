#!/usr/bin/env bash
# Inputs the planner benchmark (`just bench-plan`) fetches once and caches; every step is
# idempotent (a second run only checks what is there).
#
#   scripts/benchmarks/bench_data.sh numpy DIR   # numpy 2.1.2 and 2.1.3 _multiarray_umath .so
#   scripts/benchmarks/bench_data.sh venv DIR    # Python venv with PyPI `hdiffpatch`
#
# numpy: downloads the manylinux x86_64 cp311 wheels of numpy 2.1.2 and 2.1.3 from PyPI with
# `pip download` into DIR/wheels and unzips
# numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so into DIR/numpy-VERSION/;
# prints the two .so paths (old, then new), one per line.
# venv: creates DIR (python3 -m venv) and installs hdiffpatch; prints the venv's python.
# Exit status 3 with a one-line reason on stderr when PyPI (or python3 -m venv) is not
# available, so the caller prints a skip instead of a figure.
set -euo pipefail

usage() { sed -n '5,6p' "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
so=numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so

case "$cmd" in
numpy)
    mkdir -p "$dir/wheels"
    for v in 2.1.2 2.1.3; do
        out="$dir/numpy-$v/$(basename "$so")"
        if [ ! -s "$out" ]; then
            whl=$(ls "$dir/wheels"/numpy-"$v"-cp311-cp311-manylinux*x86_64.whl 2>/dev/null | head -1 || true)
            if [ -z "$whl" ]; then
                pip=(python3 -m pip)
                "${pip[@]}" --version >/dev/null 2>&1 || { echo "numpy: python3 -m pip not available" >&2; exit 3; }
                if ! "${pip[@]}" download "numpy==$v" --no-deps --only-binary=:all: --python-version 3.11 \
                    --implementation cp --abi cp311 --platform manylinux_2_17_x86_64 \
                    -d "$dir/wheels" -q >&2; then
                    echo "numpy: pip download numpy==$v failed (PyPI unreachable?)" >&2
                    exit 3
                fi
                whl=$(ls "$dir/wheels"/numpy-"$v"-cp311-cp311-manylinux*x86_64.whl 2>/dev/null | head -1 || true)
                [ -n "$whl" ] || { echo "numpy: no cp311 manylinux x86_64 wheel for $v" >&2; exit 3; }
            fi
            mkdir -p "$dir/numpy-$v"
            python3 - "$whl" "$so" "$out" <<'PY'
import os, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    data = z.read(member)
tmp = out + ".part"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, out)
PY
        fi
        echo "$out"
    done
    ;;
venv)
    py="$dir/bin/python"
    if [ -x "$py" ] && "$py" -c 'import hdiffpatch' 2>/dev/null; then
        echo "$py"
        exit 0
    fi
    if [ ! -x "$py" ]; then
        python3 -m venv "$dir" >&2 || { echo "hdiffpatch: python3 -m venv $dir failed" >&2; exit 3; }
    fi
    if ! "$py" -m pip install -q hdiffpatch >&2; then
        echo "hdiffpatch: pip install hdiffpatch failed (PyPI unreachable?)" >&2
        exit 3
    fi
    "$py" -c 'import hdiffpatch' || { echo "hdiffpatch: installed but does not import" >&2; exit 3; }
    echo "$py"
    ;;
*) usage ;;
esac
