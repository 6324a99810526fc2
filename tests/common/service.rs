//! A running `pfs recv` service over loopback UDP for the CLI tests: started with its
//! Prometheus endpoint, its stderr lines read on a thread.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::cli::pfs;

/// A running `pfs recv` service: its port, its metrics address, its stderr lines.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub metrics: SocketAddr,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Service {
    pub fn start(
        snap: &str,
        out: &Path,
        keys: &[String],
        extra: &[&str],
        notify: Option<&Path>,
    ) -> Service {
        let mut cmd = pfs();
        cmd.args([
            "recv",
            "--transport",
            "udp",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--snapshot", snap])
        .args(keys)
        .args(extra)
        .arg("--out-dir")
        .arg(out)
        .arg("--metrics")
        .arg(out.with_extension("jsonl"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut s = Service {
            child,
            port: 0,
            metrics: "127.0.0.1:1".parse().unwrap(),
            lines,
            seen: Vec::new(),
        };
        let m = s.wait_line("metrics on http://");
        s.metrics = m
            .split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        let l = s.wait_line("listening on udp 127.0.0.1:");
        s.port = l
            .split("127.0.0.1:")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        s
    }

    /// The next stderr line containing `pat` (60 s at most).
    pub fn wait_line(&mut self, pat: &str) -> String {
        wait_line(&self.lines, &mut self.seen, pat)
    }
}

impl Service {
    pub fn scrape(&self) -> BTreeMap<String, f64> {
        let (code, body) = packetfs::prom::get(self.metrics, "/metrics").unwrap();
        assert_eq!(code, 200);
        packetfs::prom::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    /// Scrape until `f` holds (30 s at most).
    pub fn scrape_until(
        &self,
        what: &str,
        f: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.scrape();
            if f(&m) {
                return m;
            }
            assert!(Instant::now() < end, "metrics never showed {what}: {m:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the receiver exited"
        );
    }

    /// SIGTERM, then its exit status and stdout.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal(nix::sys::signal::SIGTERM);
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let st = self.child.wait().unwrap();
        (st, out)
    }
}

/// The next line from `lines` containing `pat` (60 s at most: a readiness wait); every line
/// read is kept in `seen` for the failure message.
pub fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, pat: &str) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(pat) {
                    return l;
                }
            }
            Err(_) => panic!("no line with {pat:?}; stderr so far:\n{}", seen.join("\n")),
        }
    }
}
