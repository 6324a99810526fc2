#!/usr/bin/env bash
# Install what PacketFS needs on a fresh Debian 12 machine (run as root).
# (libpcap-dev: the libxdp configure script that xsk-rs runs through libxdp-sys requires it.)
# (podman, runc: tests/container.rs and scripts/container-*.sh; python3: demo/ and the seccomp profile.)
#
# Idempotent: every step first checks whether its work is already done, so a second run
# takes a few seconds. Each step prints one line. Works without a terminal (CI=true, no stdin).
# The recipe follows ../shared/PLATFORM.md (nightly + rust-src, bpf-linker built against
# the nightly's own LLVM, bpffs mounted).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf 'setup: %-14s %s\n' "$1" "$2"; }

# 1. Debian packages -----------------------------------------------------------------------
apt_pkgs=(clang m4 libelf-dev pkg-config zlib1g-dev zstd xdelta3 rsync xz-utils iperf3 bpftool
          xdp-tools ethtool iproute2 libpcap-dev podman runc python3 tcpdump)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    step apt "all ${#apt_pkgs[@]} packages present"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: apt: missing ${missing[*]} and not root: run this script as root" >&2
        exit 1
    fi
    apt-get update -qq >/dev/null
    # iperf3 asks whether to start a daemon: answer no without a terminal.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
    step apt "installed ${missing[*]}"
fi

# 2. Nightly toolchain ---------------------------------------------------------------------
if rustc +nightly --version >/dev/null 2>&1; then
    step nightly "present ($(rustc +nightly --version | cut -d' ' -f2-))"
else
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1
    step nightly "installed ($(rustc +nightly --version | cut -d' ' -f2-))"
fi
sysroot="$(rustc +nightly --print sysroot)"

# 3. rust-src for -Z build-std=core ---------------------------------------------------------
find_shared() {
    local c common
    common="$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
    for c in "${PFS_SHARED:-}" "$repo/../shared" "$repo/../../shared" \
             ${common:+"$(dirname "$common")/../shared"} /work/shared; do
        [ -n "$c" ] && [ -d "$c/toolchain" ] && { (cd "$c" && pwd); return 0; }
    done
    return 1
}
if [ -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
    step rust-src "present"
elif rustup component add rust-src --toolchain nightly >/dev/null 2>&1 \
        && [ -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
    step rust-src "installed with rustup"
else
    shared="$(find_shared || true)"
    tarball="$(ls "$shared"/toolchain/rust-src-*nightly*.tar.xz 2>/dev/null | tail -n 1 || true)"
    if [ -z "$tarball" ]; then
        echo "setup: rust-src: rustup failed and no shared/toolchain/rust-src-*.tar.xz found" >&2
        exit 1
    fi
    tar -xJf "$tarball" -C "$sysroot"
    step rust-src "unpacked $(basename "$tarball")"
fi

# 4. bpf-linker, built against the nightly's LLVM ----------------------------------------------
llvm_so="$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n 1 || true)"
P=/opt/rustllvm
if bpf-linker --version >/dev/null 2>&1; then
    step bpf-linker "present ($(bpf-linker --version 2>&1 | head -n 1))"
elif command -v bpf-linker >/dev/null 2>&1 && [ -n "$llvm_so" ] \
        && mkdir -p "$P/lib" && ln -sf "$llvm_so" "$P/lib/$(basename "$llvm_so")" \
        && bpf-linker --version >/dev/null 2>&1; then
    step bpf-linker "present, relinked $(basename "$llvm_so") into $P/lib"
else
    [ -n "$llvm_so" ] || { echo "setup: bpf-linker: no libLLVM.so.* in $sysroot/lib" >&2; exit 1; }
    major="$(basename "$llvm_so" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"
    mkdir -p "$P/lib"
    # The linker finds libLLVM.so at build time; the binary's rpath ($P/lib) must then
    # resolve the soname (libLLVM.so.22.1-rust-...) at run time: link both names.
    ln -sf "$llvm_so" "$P/lib/libLLVM.so"
    ln -sf "$llvm_so" "$P/lib/$(basename "$llvm_so")"
    LLVM_PREFIX=$P cargo install --quiet --locked bpf-linker --no-default-features \
        --features "llvm-$major" </dev/null >/dev/null 2>&1 \
        || LLVM_PREFIX=$P cargo install --quiet bpf-linker --no-default-features \
            --features "llvm-$major" </dev/null
    bpf-linker --version >/dev/null 2>&1 \
        || { echo "setup: bpf-linker: installed but does not run: $(bpf-linker --version 2>&1)" >&2; exit 1; }
    step bpf-linker "installed ($(bpf-linker --version 2>&1 | head -n 1), LLVM $major)"
fi

# 5. just --------------------------------------------------------------------------------------
if just --version >/dev/null 2>&1; then
    step just "present ($(just --version))"
else
    cargo install --quiet --locked just </dev/null >/dev/null 2>&1 \
        || cargo install --quiet just </dev/null
    step just "installed ($(just --version))"
fi

# 6. bpffs -------------------------------------------------------------------------------------
if mount | grep -q ' /sys/fs/bpf type bpf'; then
    step bpffs "mounted"
elif [ "$(id -u)" -eq 0 ]; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
    step bpffs "mounted on /sys/fs/bpf"
else
    step bpffs "not mounted (needs root: mount -t bpf bpf /sys/fs/bpf)"
fi
