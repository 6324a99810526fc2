//! The `pfs` binary from the integration tests: the command and a small snapshot.

use std::path::Path;
use std::process::Command;

/// The `pfs` binary this test build made.
pub fn pfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
}

/// Build a 1 MiB snapshot of recipe seed `seed` in `dir/name`; returns its path.
pub fn build_snapshot(dir: &Path, name: &str, seed: &str) -> String {
    let p = dir.join(name);
    let o = pfs()
        .args([
            "snapshot",
            "build",
            "--size-mb",
            "1",
            "--seed",
            seed,
            "--out",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.to_string_lossy().into_owned()
}
