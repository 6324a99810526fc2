#!/usr/bin/env bash
# Make a container base image without any registry: a rootfs holding a host-built `pfs` and
# exactly the libraries `ldd` lists for it, imported with `podman import`.
#
#   scripts/container-rootfs.sh [--pfs PATH] [--tag IMAGE]
#
# The image (default localhost/pfs-base:local) serves both as RUNTIME_IMAGE and as
# PREBUILT_IMAGE of the Containerfile, so an offline machine builds the runtime stage with
#   podman build --pull=never --target runtime --build-arg RUNTIME_IMAGE=IMAGE \
#       --build-arg PREBUILT_IMAGE=IMAGE --build-arg PFS_BIN_STAGE=prebuilt -t packetfs .
# (scripts/container-build.sh does both steps). Prints the image name on stdout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pfs="$repo/target/release/pfs"
tag="localhost/pfs-base:local"
while [ $# -gt 0 ]; do
    case "$1" in
        --pfs) pfs=${2:?}; shift 2 ;;
        --tag) tag=${2:?}; shift 2 ;;
        *) sed -n '5p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
done
[ -x "$pfs" ] || { echo "container-rootfs: $pfs missing: cargo build --release" >&2; exit 1; }
command -v podman >/dev/null || { echo "container-rootfs: podman missing: apt-get install -y podman runc" >&2; exit 1; }

root="$(mktemp -d /tmp/pfs-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$pfs" "$root/usr/local/bin/pfs"
# Every absolute path ldd prints (libraries and the dynamic loader), copied as regular files.
ldd "$pfs" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
mkdir -p "$root"/{tmp,var/lib/pfs,etc,proc,sys,dev,run}
chmod 1777 "$root/tmp"
echo "root:x:0:0:root:/root:/usr/local/bin/pfs" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . \
    | podman import --quiet --change 'ENTRYPOINT ["/usr/local/bin/pfs"]' - "$tag" >/dev/null
echo "$tag"
