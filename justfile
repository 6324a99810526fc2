# PacketFS tasks. `just` alone lists them; shared variables live in justfile.vars
# (override any on the command line: `just target=/usr/bin/ls dev-plan-file`).
import 'justfile.vars'

# List the recipes with one line each.
default:
    @just --list --unsorted

# Install what building and testing need (idempotent; apt, nightly rust-src, bpf-linker, bpffs).
setup:
    bash scripts/setup.sh

# Build the release binary.
build:
    cargo build --release

# Run the whole test suite (what CI runs).
test:
    bash scripts/test.sh

# Build the default snapshot into {{snapshot_dir}} (recipe {{recipe}}, {{size_mb}} MiB, seed {{seed}}).
dev-blob-build: build
    {{pfs}} snapshot build --recipe {{recipe}} --size-mb {{size_mb}} --seed {{seed}} --out {{snapshot_dir}} --no-index
    {{pfs}} snapshot info {{snapshot_dir}}

# Build (or refresh) the k-gram indexes of {{snapshot_dir}}.
dev-blob-index: build
    {{pfs}} index build {{snapshot_dir}}

# Plan {{target}} against {{snapshot_dir}}: metrics line and a JSON blueprint, no .pbb.
dev-plan-file: build
    {{pfs}} plan {{target}} --snapshot {{snapshot_dir}} --json {{pbb_out}}.json --metrics {{metrics}}

# Plan and pack {{target}} into {{pbb_out}}, then rebuild it and compare with the original.
dev-plan-pack: build
    {{pfs}} plan {{target}} --snapshot {{snapshot_dir}} -o {{pbb_out}} --metrics {{metrics}}
    {{pfs}} unplan {{pbb_out}} --snapshot {{snapshot_dir}} -o {{pbb_out}}.rebuilt
    cmp {{target}} {{pbb_out}}.rebuilt && echo "bit-exact: {{pbb_out}}.rebuilt == {{target}}"

# Planner benchmark: the pfs binary at each --level vs zstd -3/-9/-19 --patch-from, xdelta3 -9, HDiffPatch (libstd, cargo, numpy, bash, random); goal lines.
bench-plan:
    PFS_BENCH_SKIP_SLOW={{bench_skip_slow}} PFS_BENCH_PAIRS={{bench_pairs}} PFS_METRICS={{metrics}} cargo bench --bench plan

# The planner benchmark on {{ablation_pairs}} plus one row per feature of scripts/benchmarks/plan_ablation.toml (n/a where this build lacks the key).
bench-plan-ablation:
    PFS_BENCH_ABLATION=1 PFS_BENCH_REBUILD=0 PFS_BENCH_SKIP_SLOW={{bench_skip_slow}} PFS_BENCH_PAIRS={{ablation_pairs}} PFS_METRICS={{metrics}} cargo bench --bench plan

# Fuzz campaign: every target in fuzz/fuzz_targets for SECONDS each (seeds: fuzz/corpus; executions, coverage and crashes per target; rows kept in out/fuzz/campaigns.tsv).
fuzz SECONDS="60":
    bash scripts/fuzz.sh {{SECONDS}}

# .pbb v3 format on the libstd pair: levels, per-stream coder table, reference-prediction ablation, rebuild vs memcpy, random 32 MiB (PFS_CODEC_ONLY=levels,predict,rebuild,random).
bench-codec:
    cargo bench --bench codec

# SHM ring benchmark with the source's smoke flags (override via justfile.vars); extra ARGS go to pfs.
bench-shm *ARGS:
    bash scripts/benchmarks/shm_run.sh --blob-mb {{shm_blob_mb}} --dpf {{shm_dpf}} --ring-pow2 {{shm_ring_pow2}} --align {{shm_align}} --duration {{shm_duration}} --threads {{shm_threads}} --arith 0 --vstream 0 --ports 1 --queues {{shm_queues}} --mode {{shm_mode}} --seg-len {{shm_seg_len}} --pcpu 1 --pcpu-op {{shm_op}} --imm {{shm_imm}} --metrics {{metrics}} {{ARGS}}

# Quick SHM ring run while developing: 64 MiB blob, 1 s phases, no metrics line.
dev-shm-run *ARGS:
    bash scripts/benchmarks/shm_run.sh --blob-mb 64 --duration 1 --baseline-secs 0.5 --memcpy-secs 0.3 --no-metrics {{ARGS}}

# Transfer benchmark on a veth pair (root): pfs AF_XDP / UDP vs iperf3 UDP/TCP and the AF_XDP blast, then at {{xfer_rate}}: covered file, release pair, random vs HTB-shaped TCP.
bench-xfer *ARGS:
    bash scripts/benchmarks/xfer_bench.sh --random-mb {{xfer_random_mb}} --covered-mb {{xfer_covered_mb}} --snap-mb {{xfer_snap_mb}} --secs {{xfer_secs}} --rate {{xfer_rate}} --queues {{xfer_queues}} --metrics {{metrics}} {{ARGS}}

# The raw AF_XDP session against the AF_XDP blast by queue count (root; issue 14): main's or any other build with --pfs A,B, --queues LIST, --cores N, --rounds R, --perf DIR (docs/profile.md).
bench-xdp-path *ARGS:
    bash scripts/benchmarks/xdp_path.sh {{ARGS}}

# End-to-end benchmark (root): pfs send vs raw TCP vs zstd --patch-from | TCP at {{e2e_rate}} on a veth pair, covered / no-flush / dd rows, goal lines; extra ARGS go to the script.
bench-e2e *ARGS:
    bash scripts/benchmarks/e2e_bench.sh --rate {{e2e_rate}} --random-mb {{e2e_random_mb}} --covered-mb {{e2e_covered_mb}} --snap-mb {{e2e_snap_mb}} --repeat {{e2e_repeat}} --metrics {{metrics}} {{ARGS}}

# DEMO: snapshot, plan metrics, veth transfer, verification, summary ({{demo_size_mb}} MiB synthetic JSON, seed {{demo_seed}}; root).
demo: build
    bash demo/run.sh --transport {{transport}} --size-mb {{demo_size_mb}} --seed {{demo_seed}}

# What this host is missing for the data path (iface={{iface}}, snapshot {{snapshot_dir}}); non-zero when something required is.
doctor: build
    {{pfs}} doctor {{ if iface == "" { "" } else { "--iface " + iface } }} --snapshot {{snapshot_dir}}

# Build the container image {{container_tag}} (offline={{offline}}: from the host's pfs, no registry).
container-build:
    bash scripts/container-build.sh {{ if offline == "1" { "--offline" } else { "" } }} --tag {{container_tag}}

# Container test: offline image, doctor + pfs recv in capability-limited containers in a test namespace (root, podman).
container-test:
    cargo test --release --locked --test container -- --nocapture
