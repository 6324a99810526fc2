//! The `pfs` command line: the only place that prints for humans.

mod bench;
mod codec;
mod doctor;
mod keys;
mod serve;
mod settings;
mod xfer;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// PacketFS: move files as blueprints into a snapshot both hosts hold.
///
/// A snapshot is a large deterministic blob built from a seed (synthetic banks) and from real
/// files both hosts have (corpus banks). `pfs plan` turns a file into a blueprint (.pbb) of
/// segments into the snapshot plus compressed raw spill; `pfs unplan` rebuilds the file from
/// the blueprint and the same snapshot, bit-exact.
///
/// Typical flow:
///   pfs snapshot build --out snap            # 64 MiB default recipe, indexes included
///   pfs plan /usr/bin/bash --snapshot snap -o bash.pbb
///   pfs unplan bash.pbb --snapshot snap -o bash.copy
///   pfs keygen --out pfs.key                                # each host; prints its public key
///   pfs recv --iface eth1 --snapshot snap --out-dir in \
///       --identity pfs.key --authorized-senders senders    # host B (AF_XDP as root)
///   pfs send --iface eth1 --dst 10.0.0.2 --snapshot snap \
///       --identity pfs.key --receiver-key B_PUB FILE...    # host A
///   pfs doctor --iface eth1 --snapshot snap                 # what a host is missing
#[derive(Parser, Debug)]
#[command(
    name = "pfs",
    version,
    about,
    verbatim_doc_comment,
    propagate_version = true
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). PFS_LOG overrides (EnvFilter syntax).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build, inspect and verify POB snapshots.
    #[command(subcommand)]
    Snapshot(codec::SnapshotCmd),
    /// Build the k-gram indexes of a snapshot.
    #[command(subcommand)]
    Index(codec::IndexCmd),
    /// Plan a file into a blueprint (.pbb) against a snapshot.
    Plan(codec::PlanArgs),
    /// Rebuild a file from a blueprint (.pbb) and the snapshot, bit-exact.
    Unplan(codec::UnplanArgs),
    /// Send files to a receiver: each is planned against the snapshot (or sent as a .pbb) and
    /// its segments and spill travel in frames; prints a summary at the end.
    Send(xfer::SendArgs),
    /// Receive files: rebuild each from the frames and the local snapshot, check its BLAKE3,
    /// rename it into --out-dir; prints a summary at the end.
    Recv(xfer::RecvArgs),
    /// Benchmarks (figures printed and appended to the metrics log).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Check what the data path needs on this host (kernel, AF_XDP, bpffs, capabilities,
    /// XDP on --iface, queues, MTU, hugepages, --snapshot); prints ok/warn/missing with the
    /// command that fixes each; exits non-zero when something required is missing.
    Doctor(doctor::DoctorArgs),
    /// Make a new identity: a static X25519 private key written to --out (mode 0600, never
    /// over an existing file); its public key is printed as one base64 line on stdout, and
    /// the lines to put in the peer's files on stderr. --psk writes a pre-shared key instead.
    Keygen(keys::KeygenArgs),
    /// Work with key files: `pfs key pub KEYFILE` prints the public key again.
    #[command(subcommand)]
    Key(keys::KeyCmd),
}

pub fn main() -> ExitCode {
    // The start of the command: `pfs send`'s end-to-end figure counts from here.
    let origin = std::time::Instant::now();
    let cli = <Cli as clap::Parser>::parse();
    init_tracing(cli.verbose);
    match run(cli, origin) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(v: u8) {
    let level = match v {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli, origin: std::time::Instant) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Snapshot(c) => codec::snapshot(c),
        Cmd::Index(c) => codec::index(c),
        Cmd::Plan(a) => codec::plan(a),
        Cmd::Unplan(a) => codec::unplan(a),
        Cmd::Send(a) => xfer::send(a, origin),
        Cmd::Recv(a) => xfer::recv(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Keygen(a) => keys::keygen(a),
        Cmd::Key(c) => keys::key(c),
    }
}

/// Open a snapshot for a command that rebuilds or plans against it, and check that its bytes
/// are still the ones its id names (`Snapshot::check_integrity`: free when unchanged since the
/// last check, one hash on every core when the file was copied or touched since).
fn open_snapshot(
    dir: &std::path::Path,
    huge: packetfs::pob::HugePolicy,
) -> anyhow::Result<packetfs::pob::Snapshot> {
    let snap = packetfs::pob::Snapshot::open(dir, huge)?;
    if let packetfs::pob::Integrity::Verified { bytes, seconds } = snap.check_integrity()? {
        eprintln!(
            "snapshot {}: content checked ({} in {seconds:.2} s; snapshot.bin changed since its last check)",
            &snap.manifest.snapshot_id[..16],
            packetfs::util::human_bytes(bytes)
        );
    }
    Ok(snap)
}
