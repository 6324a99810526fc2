#!/usr/bin/env bash
# The test command (README, CI): install what the tests need, then run every test.
# Privileged tests (veth, XDP, containers) run when this runs as root and skip with a printed
# reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/setup.sh ]; then
  bash scripts/setup.sh
fi
export CARGO_TERM_COLOR=never
cargo build --release --locked
cargo test --release --locked --no-fail-fast -- --test-threads=2 2>&1 | tee target/test.log
