//! The `pfs` binary from the integration tests: the command and a small snapshot.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// The `pfs` binary this test build made.
pub fn pfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
}

/// Build a 1 MiB snapshot of recipe seed `seed` in `dir/name`; returns its path.
pub fn build_snapshot(dir: &Path, name: &str, seed: &str) -> String {
    build_snapshot_adding(dir, name, seed, &[])
}

/// [`build_snapshot`] with the files `add` as corpus banks (`--add`).
#[allow(dead_code)]
pub fn build_snapshot_adding(dir: &Path, name: &str, seed: &str, add: &[&Path]) -> String {
    let p = dir.join(name);
    let mut c = pfs();
    c.args(["snapshot", "build", "--size-mb", "1", "--seed", seed]);
    for a in add {
        c.arg("--add").arg(a);
    }
    let o = c.arg("--out").arg(&p).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.to_string_lossy().into_owned()
}

/// `pfs recv --once` over UDP on 127.0.0.1 with a port the kernel picks, `--timeout SECS` and
/// the snapshot at `snap`: the caller adds keys, the output directory and the rest.
pub fn udp_recv(snap: &str, timeout: &str) -> Command {
    let mut c = pfs();
    c.args([
        "recv",
        "--once",
        "--transport",
        "udp",
        "--listen",
        "127.0.0.1",
    ])
    .args(["--port", "0", "--timeout", timeout, "--snapshot", snap]);
    c
}

/// Spawn a `pfs recv` the caller prepared (UDP on 127.0.0.1, port 0) with piped output and
/// wait for its "listening on udp 127.0.0.1:PORT" line. Returns the child, the port, its
/// stderr after that line and what it printed before it; panics with that text if the
/// receiver exits first.
pub fn spawn_listening(mut cmd: Command) -> (Child, u16, BufReader<ChildStderr>, String) {
    let mut c = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let st = c.wait().unwrap();
            panic!("receiver exited ({st}) before listening: {seen}");
        }
        if let Some(rest) = line.split("listening on udp 127.0.0.1:").nth(1) {
            let port = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (c, port, err, seen);
        }
        seen.push_str(&line);
    }
}
