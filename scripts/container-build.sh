#!/usr/bin/env bash
# Build the PacketFS container image.
#
#   scripts/container-build.sh [--offline] [--tag IMAGE]     # default IMAGE localhost/packetfs
#
# Default: `podman build` of the whole Containerfile on its public base images (the builder
# stage compiles pfs and the XDP program). --offline: no registry at all; the host's release
# build of pfs and the libraries it links become a local base (scripts/container-rootfs.sh)
# used as RUNTIME_IMAGE and PREBUILT_IMAGE. Also writes the seccomp profile the run line uses
# (scripts/container-seccomp.sh, /etc/pfs/seccomp.json) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
offline=0
tag=localhost/packetfs
while [ $# -gt 0 ]; do
    case "$1" in
        --offline) offline=1; shift ;;
        --tag) tag=${2:?}; shift 2 ;;
        *) sed -n '4p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
run_opts=(--runtime /usr/sbin/runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
[ -x /usr/sbin/runc ] || run_opts=()
if [ "$offline" = 1 ]; then
    cargo build --release --locked -q
    base=$(bash scripts/container-rootfs.sh --tag "$tag-base:local")
    podman build --pull=never "${run_opts[@]}" -f Containerfile --target runtime \
        --build-arg "RUNTIME_IMAGE=$base" --build-arg "PREBUILT_IMAGE=$base" \
        --build-arg PFS_BIN_STAGE=prebuilt -t "$tag" .
else
    podman build "${run_opts[@]}" -f Containerfile --target runtime -t "$tag" .
fi
if [ "$(id -u)" -eq 0 ]; then
    bash scripts/container-seccomp.sh /etc/pfs/seccomp.json >/dev/null
    echo "container-build: seccomp profile /etc/pfs/seccomp.json"
fi
echo "container-build: image $tag"
