//! The appliance configuration file (`config/pfs.toml`), read by `pfs send --config` and
//! `pfs recv --config`.
//!
//! Keys are the long command-line flags in kebab-case (`out-dir`, `max-file-size`, ...);
//! every key is optional, and a flag given on the command line overrides the file's value
//! ([`PfsConfig::overlay`]). Unknown keys are errors that name the key, so a typo never
//! silently falls back to a default. Values are checked by [`PfsConfig::validate`].
//!
//! The option types are the drivers' own ([`crate::driver::options`], [`PackPolicy`],
//! [`HugePolicy`], [`XdpMode`]): one spelling for the flag, the key and the code. The
//! command line parses into a partial `PfsConfig` of the flags given, laid over the file's
//! ([`PfsConfig::overlay`]), laid over [`PfsConfig::defaults`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::driver::options::{Spread, Threads, Transport};
pub use crate::pob::HugePolicy;
pub use crate::proto::PackPolicy;
pub use crate::steer::XdpMode;

/// Everything `pfs.toml` may say. `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PfsConfig {
    /// `auto`, `xdp` or `udp`.
    pub transport: Option<Transport>,
    /// Network interface (AF_XDP transport).
    pub interface: Option<String>,
    /// `ports`, `queues` or `scatter`.
    pub mode: Option<Spread>,
    /// Queues to bind (`queues` mode).
    pub queues: Option<Vec<u32>>,
    /// First UDP port of the PacketFS range.
    pub port: Option<u16>,
    /// Number of ports in the range (`ports` mode).
    pub ports: Option<u16>,
    /// Snapshot directory.
    pub snapshot: Option<PathBuf>,
    /// Directory for received files (receiver).
    pub out_dir: Option<PathBuf>,
    /// Address to listen on (receiver, UDP transport).
    pub listen: Option<String>,
    /// Receiver address IP[:PORT] (sender).
    pub dst: Option<String>,
    /// Receiver MAC (sender, AF_XDP transport).
    pub dst_mac: Option<String>,
    /// IP MTU.
    pub mtu: Option<usize>,
    /// Largest file accepted, in bytes (receiver).
    pub max_file_size: Option<u64>,
    /// Receiver: replace files that already exist under a received name.
    pub overwrite: Option<bool>,
    /// Receiver: keep the setuid, setgid and sticky bits of received entries.
    pub keep_setid: Option<bool>,
    /// Sender: send what links inside a directory point at instead of the links.
    pub follow_symlinks: Option<bool>,
    /// Resume and skip-unchanged (both sides; default on): the sender continues after what
    /// the receiver holds; the receiver keeps broken sessions' files with a journal and
    /// offers them (`--no-resume` on either side turns it off).
    pub resume: Option<bool>,
    /// Link budget for the sender's pacing, e.g. `1gbit`, `500mbit`, `100MB`.
    pub rate: Option<String>,
    /// Receiver: give up after this many seconds without a sender (0 = never).
    pub timeout: Option<u64>,
    /// Metrics log (JSON lines).
    pub metrics: Option<PathBuf>,
    /// Snapshot memory: `auto`, `on` or `off`.
    pub hugepages: Option<HugePolicy>,
    /// XDP attach mode: `native`, `skb` or `auto`.
    pub xdp_mode: Option<XdpMode>,
    /// Core to pin the AF_XDP session thread to.
    pub cpu: Option<usize>,
    /// AF_XDP: one pinned worker per queue (`workers`) or the session thread alone.
    pub xdp_threads: Option<Threads>,
    /// Cores for the AF_XDP workers, round-robin.
    pub cpus: Option<Vec<usize>>,
    /// AF_XDP: poll the sockets instead of sleeping on them (busy poll; a core per polling
    /// thread, for hosts with cores to spare).
    pub busy_poll: Option<bool>,
    /// Sender (AF_XDP): the receiver's answers on kernel UDP (`kernel`: no XDP program on
    /// the sending interface), through the program (`xdp`), or `auto`.
    pub xdp_answers: Option<crate::driver::options::Answers>,
    /// Sender: packed transfer `auto`, `always` or `never`.
    pub pack: Option<PackPolicy>,
    /// Sender: planner preset for files planned on the fly: `fast`, `default` or `max`.
    pub level: Option<crate::blueprint::Level>,
    /// Sender: files of at most this many bytes are planned whole before they go (as
    /// `pfs plan` makes a `.pbb`), the others window by window while the session runs; 0:
    /// every file window by window.
    pub plan_whole: Option<u64>,
    /// Sender: predict the references of x86-64 ELF files that move between releases
    /// (window by window, with the segments sent so far).
    pub predict: Option<bool>,
    /// Receiver: msync + fsync each file before renaming it into place.
    pub sync: Option<bool>,
    /// Receiver: each file's BLAKE3 on a hashing thread per session: `auto` (with two cores
    /// or more and a session of 1 MiB or more), `on` or `off` (inline).
    pub hash_thread: Option<crate::proto::HashThread>,
    /// This host's key file (`pfs keygen --out FILE`; mode 0600).
    pub identity: Option<PathBuf>,
    /// Sender: the receiver's public key (base64).
    pub receiver_key: Option<String>,
    /// Sender: a file of `IP|IP:PORT|* PUBKEY` lines naming receivers' keys.
    pub known_receivers: Option<PathBuf>,
    /// Receiver: the senders it answers (`PUBKEY NAME [dir=SUB] [max-file=SIZE]
    /// [max-session=SIZE]` lines).
    pub authorized_senders: Option<PathBuf>,
    /// A pre-shared key file (both sides), mixed into the handshake.
    pub psk_file: Option<PathBuf>,
    /// Plaintext, unauthenticated frames (both sides must say so).
    pub insecure: Option<bool>,
    /// Receiver: serve one session and exit (off: run as a service until stopped).
    pub once: Option<bool>,
    /// Receiver service: most sessions at once (opening frames beyond are dropped, counted).
    pub max_sessions: Option<usize>,
    /// Receiver: most bytes one session may hold in reassembly buffers (packed streams,
    /// streamed windows); the service's bound is `max-sessions` times this.
    pub session_memory: Option<u64>,
    /// Receiver service: seconds running sessions get to finish after SIGTERM/SIGINT.
    pub grace: Option<u64>,
    /// Receiver service: serve Prometheus metrics at `IP:PORT` (GET /metrics).
    pub metrics_listen: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax errors and unknown keys (the message names the key and the line).
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: {key}: {msg}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        msg: String,
    },
}

/// The largest MTU accepted (jumbo frames; the UMEM frame bounds what AF_XDP carries).
pub const MAX_MTU: usize = 9216;
/// The smallest IPv4 MTU.
pub const MIN_MTU: usize = 576;
/// The default per-session reassembly bound (`session-memory`): the receiver's
/// `max_packed_total`.
pub const DEFAULT_SESSION_MEMORY: u64 = 1 << 30;
/// The smallest `session-memory` accepted (a streamed file's window holds up to two of the
/// largest blocks, 64 MiB by default: below that, large streamed files are refused).
pub const MIN_SESSION_MEMORY: u64 = 1 << 20;

impl PfsConfig {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<PfsConfig, ConfigError> {
        let cfg: PfsConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<PfsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks values that TOML types alone do not.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, msg: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            msg,
        };
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(bad("mtu", format!("{m} is not in {MIN_MTU}..={MAX_MTU}")));
            }
        }
        if let Some(0) = self.ports {
            return Err(bad("ports", "must be at least 1".into()));
        }
        if let (Some(p), Some(n)) = (self.port, self.ports) {
            if p as u32 + n as u32 - 1 > u16::MAX as u32 {
                return Err(bad("ports", format!("port {p} + {n} ports passes 65535")));
            }
        }
        if let Some(q) = &self.queues {
            let max = packetfs_common::MAX_QUEUES;
            if let Some(bad_q) = q.iter().find(|&&q| q >= max) {
                return Err(bad("queues", format!("queue {bad_q} >= {max}")));
            }
            let mut s = q.clone();
            s.sort_unstable();
            s.dedup();
            if s.len() != q.len() {
                return Err(bad("queues", "a queue is listed twice".into()));
            }
        }
        if self.mode == Some(Spread::Queues) && self.queues.as_ref().is_none_or(|q| q.is_empty()) {
            return Err(bad("queues", "mode = \"queues\" needs a queue list".into()));
        }
        if let Some(r) = &self.rate {
            if crate::proto::pacing::parse_rate(r).is_none() {
                return Err(bad(
                    "rate",
                    format!("{r:?}: expected e.g. \"1gbit\", \"500mbit\", \"100MB\""),
                ));
            }
        }
        if let Some(0) = self.max_file_size {
            return Err(bad("max-file-size", "must be at least 1".into()));
        }
        if let Some(0) = self.max_sessions {
            return Err(bad("max-sessions", "must be at least 1".into()));
        }
        if let Some(m) = self.session_memory {
            if m < MIN_SESSION_MEMORY {
                return Err(bad(
                    "session-memory",
                    format!("{m} is below the minimum of {MIN_SESSION_MEMORY} bytes"),
                ));
            }
        }
        if let Some(l) = &self.metrics_listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(
                    "metrics-listen",
                    format!("{l:?} is not IP:PORT (e.g. \"127.0.0.1:9477\")"),
                ));
            }
        }
        if let Some(l) = &self.listen {
            if l.parse::<std::net::IpAddr>().is_err() {
                return Err(bad("listen", format!("{l:?} is not an IP address")));
            }
        }
        if let Some(i) = &self.interface {
            if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
                return Err(bad("interface", format!("{i:?} is not an interface name")));
            }
        }
        Ok(())
    }

    /// Flags override file values: every field set in `flags` replaces this one's.
    pub fn overlay(self, flags: PfsConfig) -> PfsConfig {
        macro_rules! pick {
            ($($f:ident),*) => {
                PfsConfig { $($f: flags.$f.or(self.$f),)* }
            };
        }
        pick!(
            transport,
            interface,
            mode,
            queues,
            port,
            ports,
            snapshot,
            out_dir,
            listen,
            dst,
            dst_mac,
            mtu,
            max_file_size,
            overwrite,
            keep_setid,
            follow_symlinks,
            resume,
            rate,
            timeout,
            metrics,
            hugepages,
            xdp_mode,
            cpu,
            xdp_threads,
            cpus,
            busy_poll,
            xdp_answers,
            pack,
            level,
            plan_whole,
            predict,
            sync,
            hash_thread,
            identity,
            receiver_key,
            known_receivers,
            authorized_senders,
            psk_file,
            insecure,
            once,
            max_sessions,
            session_memory,
            grace,
            metrics_listen
        )
    }

    /// The file `pfs.toml` describes when nothing is set: the built-in defaults of
    /// `pfs send`/`pfs recv`, for printing and for filling a merged configuration.
    /// (`hugepages` is left to each command: the receiver copies the snapshot into huge
    /// pages, the sender maps it.)
    pub fn defaults() -> PfsConfig {
        PfsConfig {
            transport: Some(Transport::Auto),
            mode: Some(Spread::Scatter),
            port: Some(47000),
            ports: Some(1),
            listen: Some("0.0.0.0".into()),
            mtu: Some(1500),
            max_file_size: Some(1 << 40),
            overwrite: Some(false),
            keep_setid: Some(false),
            follow_symlinks: Some(false),
            resume: Some(true),
            timeout: Some(0),
            xdp_mode: Some(XdpMode::Auto),
            xdp_threads: Some(Threads::Auto),
            busy_poll: Some(false),
            xdp_answers: Some(crate::driver::options::Answers::Auto),
            pack: Some(PackPolicy::Auto),
            level: Some(crate::blueprint::Level::Fast),
            plan_whole: Some(0),
            predict: Some(true),
            sync: Some(true),
            hash_thread: Some(crate::proto::HashThread::Auto),
            once: Some(false),
            max_sessions: Some(64),
            session_memory: Some(DEFAULT_SESSION_MEMORY),
            grace: Some(30),
            ..PfsConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<PfsConfig, ConfigError> {
        PfsConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn shipped_file_parses() {
        let text = include_str!("../config/pfs.toml");
        let c = p(text).unwrap();
        assert_eq!(c.transport, Some(Transport::Xdp));
        assert!(c.snapshot.is_some() && c.out_dir.is_some() && c.interface.is_some());
        assert_eq!(c.overwrite, Some(false));
        // Secure by default: the shipped file names this host's key and the receiver's list.
        assert_eq!(c.identity, Some(PathBuf::from("/etc/pfs/pfs.key")));
        assert_eq!(
            c.authorized_senders,
            Some(PathBuf::from("/etc/pfs/authorized_senders"))
        );
        assert_eq!(c.insecure, None);
        // The receiver runs as a service over AF_XDP (no one-session-per-run workaround).
        assert_eq!(c.once, None);
    }

    #[test]
    fn empty_is_all_unset() {
        assert_eq!(p("").unwrap(), PfsConfig::default());
    }

    #[test]
    fn all_keys() {
        let c = p(r#"
            transport = "udp"
            interface = "eth1"
            mode = "queues"
            queues = [0, 3]
            port = 47000
            ports = 4
            snapshot = "/var/lib/pfs/snapshot"
            out-dir = "/var/lib/pfs/in"
            listen = "10.0.0.2"
            dst = "10.0.0.2:47000"
            dst-mac = "02:00:00:00:00:02"
            mtu = 9000
            max-file-size = 1000000
            overwrite = true
            rate = "5gbit"
            timeout = 30
            metrics = "/var/log/pfs/metrics.jsonl"
            hugepages = "on"
            xdp-mode = "native"
            cpu = 1
            xdp-threads = "session"
            cpus = [0, 1]
            busy-poll = true
            pack = "never"
            sync = false
            hash-thread = "on"
        "#)
        .unwrap();
        assert_eq!(c.hash_thread, Some(crate::proto::HashThread::Always));
        let e = p("hash-thread = \"always\"\n").unwrap_err().to_string();
        assert!(e.contains("always"), "{e}");
        assert_eq!(c.xdp_threads, Some(Threads::Session));
        assert_eq!(c.cpus, Some(vec![0, 1]));
        assert_eq!(c.busy_poll, Some(true));
        assert_eq!(c.pack, Some(PackPolicy::Never));
        assert_eq!(c.sync, Some(false));
        let e = p("pack = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        assert_eq!(c.mode, Some(Spread::Queues));
        assert_eq!(c.queues, Some(vec![0, 3]));
        assert_eq!(c.out_dir, Some(PathBuf::from("/var/lib/pfs/in")));
        assert_eq!(c.max_file_size, Some(1_000_000));
        assert_eq!(c.overwrite, Some(true));
        assert_eq!(c.hugepages, Some(HugePolicy::On));
        assert_eq!(c.mtu, Some(9000));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = p("snapshot = \"/s\"\nout_dir = \"/o\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out_dir"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
        let e = p("pacing = 3\n").unwrap_err().to_string();
        assert!(e.contains("pacing"), "{e}");
    }

    #[test]
    fn tables_are_unknown_too() {
        let e = p("[recv]\nport = 1\n").unwrap_err().to_string();
        assert!(e.contains("recv"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("mtu = 100", "mtu"),
            ("mtu = 20000", "mtu"),
            ("ports = 0", "ports"),
            ("port = 65535\nports = 2", "ports"),
            ("queues = [64]", "queues"),
            ("queues = [1, 1]", "queues"),
            ("mode = \"queues\"", "queues"),
            ("rate = \"fast\"", "rate"),
            ("listen = \"nowhere\"", "listen"),
            ("interface = \"a b\"", "interface"),
            ("max-file-size = 0", "max-file-size"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        // Wrong types and enum values are parse errors naming the value or key.
        let e = p("transport = \"tcp\"").unwrap_err().to_string();
        assert!(e.contains("tcp"), "{e}");
        let e = p("port = \"x\"").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let e = p("xdp-mode = \"fast\"").unwrap_err().to_string();
        assert!(e.contains("xdp-mode") && e.contains("fast"), "{e}");
        assert_eq!(
            p("xdp-mode = \"drv\"").unwrap().xdp_mode,
            Some(XdpMode::Native)
        );
    }

    #[test]
    fn flags_override_file() {
        let file = p(r#"
            transport = "xdp"
            interface = "eth1"
            mtu = 9000
            snapshot = "/file/snap"
        "#)
        .unwrap();
        let flags = PfsConfig {
            mtu: Some(1500),
            out_dir: Some("/flag/out".into()),
            ..PfsConfig::default()
        };
        let m = file.overlay(flags);
        assert_eq!(m.mtu, Some(1500), "flag wins");
        assert_eq!(m.interface.as_deref(), Some("eth1"), "file value kept");
        assert_eq!(m.transport, Some(Transport::Xdp));
        assert_eq!(m.snapshot, Some(PathBuf::from("/file/snap")));
        assert_eq!(m.out_dir, Some(PathBuf::from("/flag/out")), "flag only");
        // Defaults fill what neither said.
        let full = PfsConfig::defaults().overlay(m);
        assert_eq!(full.port, Some(47000));
        assert_eq!(full.mtu, Some(1500));
        assert_eq!(full.transport, Some(Transport::Xdp));
    }

    #[test]
    fn serializes_back_to_kebab_keys() {
        let c = PfsConfig::defaults();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("max-file-size"), "{text}");
        assert_eq!(p(&text).unwrap(), c);
    }
}
