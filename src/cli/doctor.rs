//! `pfs doctor`: what this host is missing for the PacketFS data path, each check with the
//! command that fixes it.
//!
//! Output: one line per check, `STATUS  CHECK  DETAIL`, where STATUS is `ok`, `warn` or
//! `missing`, followed by an indented `fix: COMMAND` line when there is something to do.
//! The exit status is 1 when a required check is `missing`, 0 otherwise (`warn` only slows
//! things down or falls back). The checks themselves live in [`packetfs::host`]; this file
//! prints them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use packetfs::host::{self, Status};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Interface to check (native XDP attach, queues, channels, MTU). Without it the
    /// interface checks are skipped.
    #[arg(long)]
    iface: Option<String>,
    /// Snapshot directory to check (present, manifest, id). Without it the check is skipped.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Appliance config (config/pfs.toml): its `interface` and `snapshot` are checked unless
    /// --iface / --snapshot override them.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(mut a: DoctorArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.config {
        let file = packetfs::config::PfsConfig::load(path)?;
        let flags = packetfs::config::PfsConfig {
            interface: a.iface.take(),
            snapshot: a.snapshot.take(),
            ..Default::default()
        };
        let merged = file.overlay(flags);
        a.iface = merged.interface;
        a.snapshot = merged.snapshot;
    }
    let checks = host::all(a.iface.as_deref(), a.snapshot.as_deref());

    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(8);
    for c in &checks {
        println!(
            "{:<7}  {:<width$}  {}",
            c.status.label(),
            c.name,
            c.detail,
            width = width
        );
        if let Some(fix) = &c.fix {
            println!("{:<7}  {:<width$}  fix: {fix}", "", "", width = width);
        }
    }
    let n_missing = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .count();
    let n_warn = checks.iter().filter(|c| c.status == Status::Warn).count();
    println!(
        "doctor: {} checks, {} ok, {} warn, {} missing",
        checks.len(),
        checks.len() - n_missing - n_warn,
        n_warn,
        n_missing
    );
    Ok(if n_missing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
