# PacketFS tasks. `just` alone lists them; shared variables live in justfile.vars.
import 'justfile.vars'

# List the recipes with one line each.
default:
    @just --list --unsorted

# Build the release binary.
build:
    cargo build --release

# Run the whole test suite (what CI runs).
test:
    bash scripts/test.sh

# SHM ring benchmark with the source's smoke flags (override via justfile.vars); extra ARGS go to pfs.
bench-shm *ARGS:
    bash scripts/benchmarks/shm_run.sh --blob-mb {{shm_blob_mb}} --dpf {{shm_dpf}} --ring-pow2 {{shm_ring_pow2}} --align {{shm_align}} --duration {{shm_duration}} --threads {{shm_threads}} --arith 0 --vstream 0 --ports 1 --queues {{shm_queues}} --mode {{shm_mode}} --seg-len {{shm_seg_len}} --pcpu 1 --pcpu-op {{shm_op}} --imm {{shm_imm}} --metrics {{metrics}} {{ARGS}}

# Quick SHM ring run while developing: 64 MiB blob, 1 s phases, no metrics line.
dev-shm-run *ARGS:
    bash scripts/benchmarks/shm_run.sh --blob-mb 64 --duration 1 --baseline-secs 0.5 --memcpy-secs 0.3 --no-metrics {{ARGS}}
