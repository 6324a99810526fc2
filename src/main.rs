//! `pfs`: the PacketFS command. All human-facing output lives in `cli`.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
