#!/usr/bin/env bash
# Run the multi-core SHM ring benchmark (`pfs bench shm`) with the source document's flags:
#
#   bash scripts/benchmarks/shm_run.sh --blob-mb 1024 --dpf 32 --ring-pow2 19 --align 64 \
#     --duration 5 --threads 2 --arith 0 --vstream 0 --ports 1 --queues 3 --mode scatter \
#     --seg-len 256 --pcpu 1 --pcpu-op xor --imm 255
#
# Every argument goes to `pfs bench shm` unchanged (see `pfs bench shm --help` for each flag);
# the exit status is pfs's (0 ok, 1 proof of work failed or error, 2 bad flags, 130 SIGINT).
#
# Environment:
#   PFS=path/to/pfs              use this binary instead of building target/release/pfs
#   PFS_SHM_RESERVE_HUGEPAGES=1  reserve enough 2 MiB hugetlb pages for --blob-mb first and
#                                give them back on exit (needs root; changes
#                                /proc/sys/vm/nr_hugepages only for the run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ -z "${PFS:-}" ]]; then
  # A no-op when the binary is up to date.
  cargo build --release --quiet --bin pfs
  PFS=target/release/pfs
fi

if [[ "${PFS_SHM_RESERVE_HUGEPAGES:-0}" == 1 ]]; then
  blob_mb=1024
  args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
      --blob-mb) blob_mb="${args[$((i + 1))]:-$blob_mb}" ;;
      --blob-mb=*) blob_mb="${args[$i]#--blob-mb=}" ;;
    esac
  done
  need=$(( (blob_mb + 1) / 2 ))
  old=$(cat /proc/sys/vm/nr_hugepages)
  free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
  if (( free < need )); then
    trap 'echo "$old" > /proc/sys/vm/nr_hugepages' EXIT
    echo $(( old + need - free )) > /proc/sys/vm/nr_hugepages
    echo "shm_run.sh: reserved hugetlb pages: nr_hugepages $old -> $(cat /proc/sys/vm/nr_hugepages) (restored on exit)" >&2
  fi
  # Not exec: the trap must run after pfs ends.
  "$PFS" bench shm "$@"
  exit $?
fi

exec "$PFS" bench shm "$@"
