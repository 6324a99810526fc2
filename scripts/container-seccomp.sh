#!/usr/bin/env bash
# Write a seccomp profile for the PacketFS container: the host's podman default profile
# (/usr/share/containers/seccomp.json) with bpf(2) allowed under CAP_BPF and
# perf_event_open(2) under CAP_PERFMON.
#
#   scripts/container-seccomp.sh [OUT]        # default OUT: /etc/pfs/seccomp.json
#
# Why: the default profile of podman 4.3 (Debian 12) allows bpf and perf_event_open only
# with CAP_SYS_ADMIN, so a container holding exactly NET_ADMIN,NET_RAW,BPF,PERFMON,IPC_LOCK
# gets EPERM creating the XDP program's maps (`pfs doctor` reports it). This keeps every
# other rule of the default profile; it is used instead of `seccomp=unconfined`:
#   podman run --security-opt seccomp=/etc/pfs/seccomp.json ...
set -euo pipefail
out=${1:-/etc/pfs/seccomp.json}
src=${PFS_SECCOMP_BASE:-/usr/share/containers/seccomp.json}
[ -f "$src" ] || { echo "container-seccomp: $src missing (apt-get install -y podman)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "container-seccomp: python3 missing" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
python3 - "$src" "$out" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
prof = json.load(open(src))
grant = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
rules = []
for r in prof["syscalls"]:
    names = [n for n in r.get("names", []) if n not in grant]
    if names:
        r["names"] = names
        rules.append(r)
for name, cap in grant.items():
    for c in (cap, "CAP_SYS_ADMIN"):
        rules.append({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                      "comment": f"PacketFS: {name} with {c}",
                      "includes": {"caps": [c]}, "excludes": {}})
prof["syscalls"] = rules
json.dump(prof, open(out, "w"), indent=1)
PY
echo "$out"
