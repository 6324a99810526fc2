//! The one rule for privileged tests (namespaces, XDP, AF_XDP, containers): each calls
//! [`skip`] first with what it needs beyond root and `ip`; when something is missing it
//! prints `skipping TEST: WHY` (the test thread's name) and the test returns early.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// What a privileged test needs besides root and iproute2.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// The eBPF object built into this `pfs` (scripts/setup.sh, then a rebuild).
    Xdp,
    /// A command on PATH (answers `--version` or `-V`), and how to install it.
    Tool(&'static str, &'static str),
    /// A file that must exist, and how to get it.
    File(&'static str, &'static str),
}

/// Why the calling test cannot run here, if it cannot.
pub fn reason(needs: &[Need]) -> Option<String> {
    if let Some(r) = super::netns::skip_reason() {
        return Some(r);
    }
    for n in needs {
        match *n {
            Need::Xdp if !packetfs::steer::object_available() => {
                return Some("no eBPF object in this build (run scripts/setup.sh, rebuild)".into())
            }
            Need::Tool(tool, install) => {
                let runs = |flag: &str| Command::new(tool).arg(flag).output().is_ok();
                if !runs("--version") && !runs("-V") {
                    return Some(format!("{tool} missing ({install})"));
                }
            }
            Need::File(path, install) if !Path::new(path).exists() => {
                return Some(format!("{path} missing ({install})"));
            }
            _ => {}
        }
    }
    None
}

/// True (after printing why) when the calling test must skip.
pub fn skip(needs: &[Need]) -> bool {
    match reason(needs) {
        Some(r) => {
            let t = std::thread::current();
            eprintln!("skipping {}: {r}", t.name().unwrap_or("test"));
            true
        }
        None => false,
    }
}
