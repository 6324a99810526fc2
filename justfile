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
