#!/usr/bin/env bash
# Build the PacketFS XDP steering program (ebpf/steer) into ebpf/target/.../pfs-steer.
#
# Needs the nightly toolchain with rust-src and bpf-linker on PATH: scripts/setup.sh installs
# both. Cargo's own fingerprints make a second run with unchanged sources take about a second.
# Prints the object's path on success. The root build.rs embeds it into `pfs`.
# PFS_NIGHTLY names the nightly toolchain (default `nightly`; the Containerfile pins a dated one).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

nightly="${PFS_NIGHTLY:-nightly}"
if ! rustc +"$nightly" --version >/dev/null 2>&1; then
    echo "build-ebpf: no nightly toolchain: run scripts/setup.sh" >&2
    exit 1
fi
if ! bpf-linker --version >/dev/null 2>&1; then
    echo "build-ebpf: bpf-linker missing or broken: run scripts/setup.sh" >&2
    exit 1
fi

cd "$repo/ebpf"
# Variables a parent cargo (build.rs) sets would leak host settings into this build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTC RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER \
      CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_MAKEFLAGS MAKEFLAGS MFLAGS
# Newer aya-ebpf-macros need a newer rustc than the pinned nightly: let the resolver fall back.
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback
cargo +"$nightly" build --release --target bpfel-unknown-none -Z build-std=core \
    -p packetfs-steer --bin pfs-steer "$@"
obj="$repo/ebpf/target/bpfel-unknown-none/release/pfs-steer"
[ -f "$obj" ] || { echo "build-ebpf: $obj was not produced" >&2; exit 1; }
echo "$obj"
