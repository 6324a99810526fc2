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

# Planner benchmark: toolchain release pairs vs zstd --patch-from, xdelta3, xz; bash vs synthetic; rebuild speed.
bench-plan:
    PFS_METRICS={{metrics}} cargo bench --bench plan
