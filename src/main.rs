//! `pfs`: the PacketFS command. All human-facing output lives in `cli`.
mod cli;

fn main() -> std::process::ExitCode {
    // Behave like other Unix tools when the reader of our output goes away (`pfs ... | head`):
    // end quietly on SIGPIPE instead of panicking in println! on EPIPE.
    // Safety: called first thing, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and installs no handler code.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
