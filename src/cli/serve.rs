//! `pfs recv` as a service (without `--once`): the service loop
//! ([`packetfs::driver::service`]) over the kernel UDP socket or the AF_XDP sockets, with what a human and systemd see: one line per session,
//! the JSON-lines log, signals (SIGTERM/SIGINT stop with a grace period, SIGHUP reloads),
//! systemd notifications ([`packetfs::notify`]) and the Prometheus endpoint
//! ([`packetfs::prom`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use packetfs::config::PfsConfig;
use packetfs::driver::service::{
    Control, Live, Reload, ServeWith, Service, ServiceConfig, ServiceHooks, ServiceIo, SessionEnd,
    UdpService,
};
use packetfs::driver::udp::RecvConfig;
use packetfs::driver::xdp;
use packetfs::notify::Notifier;
use packetfs::proto::{Event, ReceiverConfig};
use packetfs::secure::Security;
use packetfs::util::human_bytes;

/// What the service needs from `pfs recv`'s set-up.
pub struct ServeArgs {
    /// `--config FILE` and the flags given: a reload reads the file again under the same
    /// flags.
    pub config_path: Option<PathBuf>,
    pub flags: PfsConfig,
    pub config: PfsConfig,
    pub recv: RecvConfig,
    pub metrics_log: PathBuf,
    pub snap_name: String,
    pub snap_backing: String,
}

/// One received entry, for humans: a file with its size and check, a directory, a link and
/// its target, or why it was skipped.
pub fn entry_line(f: &packetfs::driver::session::ReceivedFile) -> String {
    let p = f.path.display();
    match (f.kind, &f.skipped) {
        (_, Some(why)) => format!("skipped {p}: {why}"),
        ("dir", _) => format!("received {p}/ (directory)"),
        ("symlink", _) => format!("received {p} -> {} (link)", f.target),
        _ if f.verified => format!("received {p} ({}), BLAKE3 verified", human_bytes(f.size)),
        _ => format!("INCOMPLETE {p} ({})", human_bytes(f.size)),
    }
}

/// The receiver settings a configuration gives (what a reload may change).
pub fn receiver_config(c: &PfsConfig) -> ReceiverConfig {
    let mut proto = ReceiverConfig::default();
    proto.max_file_size = c.max_file_size.unwrap_or(proto.max_file_size);
    proto.durable = c.sync.unwrap_or(true);
    proto.hash_thread = c.hash_thread.unwrap_or_default();
    proto.overwrite = c.overwrite.unwrap_or(false);
    proto.keep_setid = c.keep_setid.unwrap_or(false);
    proto.resume = c.resume.unwrap_or(true);
    proto.max_packed_total = c
        .session_memory
        .unwrap_or(packetfs::config::DEFAULT_SESSION_MEMORY);
    proto
}

/// `--once` under systemd (`Type=notify`): READY=1 now, and WATCHDOG=1 from a thread of its
/// own every half `WATCHDOG_USEC` while the one session runs.
pub fn notify_once_ready() {
    let Ok(n) = Notifier::from_env() else {
        return;
    };
    if !n.is_active() {
        return;
    }
    let _ = n.notify("READY=1\nSTATUS=one session (--once)");
    if let Some(every) = n.watchdog {
        let _ = std::thread::Builder::new()
            .name("pfs-watchdog".into())
            .spawn(move || loop {
                let _ = n.notify("WATCHDOG=1");
                std::thread::sleep(every);
            });
    }
}

/// SIGTERM/SIGINT set `stop`, SIGHUP sets `reload`.
pub fn control_on_signals() -> anyhow::Result<Control> {
    let ctl = Control::default();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&ctl.stop))
            .context("installing a signal handler")?;
    }
    signal_hook::flag::register(libc::SIGHUP, Arc::clone(&ctl.reload))
        .context("installing a signal handler")?;
    Ok(ctl)
}

struct Hooks {
    config_path: Option<PathBuf>,
    flags: PfsConfig,
    config: PfsConfig,
    security: Security,
    metrics_log: PathBuf,
    notifier: Notifier,
    last_status: String,
    last_watchdog: Instant,
    /// "udp" or "xdp", in the JSON log.
    transport: &'static str,
}

fn sender_name(s: Option<&str>) -> &str {
    s.unwrap_or("(insecure)")
}

impl Hooks {
    fn status(&mut self, live: &Live) {
        let active = live.sessions_active.load(Ordering::Relaxed);
        let total = live.sessions_total.load(Ordering::Relaxed);
        let s = format!("STATUS={active} session(s) active, {total} since start");
        if s != self.last_status {
            let _ = self.notifier.notify(&s);
            self.last_status = s;
        }
    }

    /// The configuration and keys a reload would give, or why not.
    fn load(&self) -> anyhow::Result<(PfsConfig, Security)> {
        let c = super::settings::merged(self.config_path.as_deref(), self.flags.clone())?;
        let sec = super::settings::receiver_security(&c)?;
        Ok((c, sec))
    }
}

/// What changed between two configurations and two key sets, in words.
fn changes(old: &PfsConfig, new: &PfsConfig, olds: &Security, news: &Security) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in b {
            let was = a.get(k).cloned().unwrap_or_default();
            if &was != v {
                out.push(format!("{k}: {was} -> {v}"));
            }
        }
    }
    if let (Security::Receiver(a), Security::Receiver(b)) = (olds, news) {
        for p in b.authorized.iter() {
            match a.authorized.get(&p.key) {
                None => out.push(format!("sender {} added", p.name)),
                Some(q) if q != p => out.push(format!("sender {} changed", p.name)),
                _ => {}
            }
        }
        for p in a.authorized.iter() {
            if b.authorized.get(&p.key).is_none() {
                out.push(format!("sender {} removed", p.name));
            }
        }
    }
    out
}

impl ServiceHooks for Hooks {
    fn event(&mut self, session: u64, sender: Option<&str>, e: &Event) {
        match e {
            Event::Accepted { files, bytes } => eprintln!(
                "session {session:016x} from {}: accepted {files} file(s), {}",
                sender_name(sender),
                human_bytes(*bytes)
            ),
            Event::Aborted(f) => eprintln!(
                "session {session:016x} from {}: aborted: {f}",
                sender_name(sender)
            ),
            _ => {}
        }
    }

    fn session_ended(&mut self, end: SessionEnd) {
        let who = sender_name(end.sender.as_deref()).to_string();
        let mut m = match &end.result {
            Ok(s) => {
                for f in &s.files {
                    println!("{}", entry_line(f));
                }
                let total = s.total.as_secs_f64();
                println!(
                    "session {:016x} from {who} ({}): ok, {} file(s), {} in {:.3} s ({:.3} Gbit/s), wire {} in {} frames, {} duplicates",
                    end.session,
                    end.peer,
                    s.files.len(),
                    human_bytes(s.file_bytes),
                    total,
                    s.file_bytes as f64 * 8.0 / total.max(1e-9) / 1e9,
                    human_bytes(s.wire_bytes),
                    s.frames,
                    s.duplicate_frames
                );
                if s.stats.skipped_files > 0 || s.stats.resumed_files > 0 {
                    println!(
                        "session {:016x}: skipped {} file(s) held whole and unchanged ({}), resumed {} file(s) after {} held",
                        end.session,
                        s.stats.skipped_files,
                        human_bytes(s.stats.skipped_bytes),
                        s.stats.resumed_files,
                        human_bytes(s.stats.resumed_bytes)
                    );
                }
                let mut m = serde_json::to_value(s).unwrap_or_default();
                m["ok"] = json!(true);
                m
            }
            Err(e) => {
                println!(
                    "session {:016x} from {who} ({}): failed: {e}",
                    end.session, end.peer
                );
                json!({"ok": false, "reason": e.to_string(), "session_id": end.session, "peer": end.peer})
            }
        };
        m["kind"] = json!("recv");
        m["transport"] = json!(self.transport);
        m["service"] = json!(true);
        m["sender"] = json!(end.sender);
        if let Err(e) = packetfs::metrics::append(&self.metrics_log, &m) {
            eprintln!("warning: appending to {}: {e}", self.metrics_log.display());
        }
    }

    fn reload(&mut self) -> Option<Reload> {
        match self.load() {
            Ok((c, sec)) => {
                let ch = changes(&self.config, &c, &self.security, &sec);
                if ch.is_empty() {
                    eprintln!("reload: nothing changed");
                } else {
                    eprintln!(
                        "reload: {} (running sessions keep their settings)",
                        ch.join("; ")
                    );
                }
                let r = Reload {
                    proto: receiver_config(&c),
                    security: sec.clone(),
                    max_sessions: c.max_sessions.unwrap_or(64),
                };
                self.config = c;
                self.security = sec;
                Some(r)
            }
            Err(e) => {
                eprintln!("reload failed, keeping the old settings: {e:#}");
                None
            }
        }
    }

    fn stopping(&mut self, active: usize) {
        eprintln!("stopping: no new sessions; {active} running session(s) may finish");
        let _ = self.notifier.notify("STOPPING=1");
    }

    fn tick(&mut self, live: &Live) {
        self.status(live);
        if let Some(every) = self.notifier.watchdog {
            if self.last_watchdog.elapsed() >= every {
                let _ = self.notifier.notify("WATCHDOG=1");
                self.last_watchdog = Instant::now();
            }
        }
    }
}

/// Run the service until stopped; exit 0 after a clean stop. `xdp`: the AF_XDP receiver
/// bound already (its program attached, its sockets bound), else a UDP socket is bound
/// here. Whatever way the run ends (a stop, an error), the AF_XDP sockets close and the
/// program detaches when the service drops at the end of this function.
pub fn run(
    a: ServeArgs,
    ctl: &Control,
    snap_id: [u8; 32],
    snapshot: &[u8],
    xdp: Option<xdp::XdpReceiver>,
) -> anyhow::Result<ExitCode> {
    let c = &a.config;
    let mut cfg = ServiceConfig::new(a.recv.clone());
    cfg.max_sessions = c.max_sessions.unwrap_or(64);
    cfg.grace = Duration::from_secs(c.grace.unwrap_or(30));
    match xdp {
        None => {
            let svc = UdpService::bind(cfg)?;
            let listening = format!("udp {}", svc.local_addr()?);
            serve(a, svc, listening, "udp", ctl, snap_id, snapshot)
        }
        Some(r) => {
            let (mode, notice) = r.xdp_mode();
            if let Some(n) = notice {
                eprintln!("notice: {n}");
            }
            eprintln!("xdp threads: {}", r.thread_map());
            let l = r.link();
            let listening = format!(
                "xdp {} ({mode} mode) queues {:?} ports {}..={}",
                l.iface,
                r.queues(),
                l.port,
                l.port as u32 + l.ports.max(1) as u32 - 1
            );
            r.serve(
                cfg,
                Runner {
                    a,
                    listening,
                    ctl,
                    snap_id,
                    snapshot,
                },
            )?
        }
    }
}

/// Runs the AF_XDP service once the receiver built it (over the session thread's sockets
/// or the workers).
struct Runner<'a> {
    a: ServeArgs,
    listening: String,
    ctl: &'a Control,
    snap_id: [u8; 32],
    snapshot: &'a [u8],
}

impl ServeWith<anyhow::Result<ExitCode>> for Runner<'_> {
    fn serve<I: ServiceIo>(self, svc: Service<I>) -> anyhow::Result<ExitCode> {
        let Runner {
            a,
            listening,
            ctl,
            snap_id,
            snapshot,
        } = self;
        serve(a, svc, listening, "xdp", ctl, snap_id, snapshot)
    }
}

fn serve<I: ServiceIo>(
    a: ServeArgs,
    mut svc: Service<I>,
    listening: String,
    transport: &'static str,
    ctl: &Control,
    snap_id: [u8; 32],
    snapshot: &[u8],
) -> anyhow::Result<ExitCode> {
    let c = &a.config;
    let max_sessions = c.max_sessions.unwrap_or(64);
    let grace = c.grace.unwrap_or(30);
    let notifier = Notifier::from_env().context("opening NOTIFY_SOCKET")?;
    if let Some(addr) = c.metrics_listen.as_deref() {
        let addr = addr
            .parse()
            .with_context(|| format!("metrics-listen {addr:?} is not IP:PORT"))?;
        let bound = packetfs::prom::serve(addr, svc.live())
            .with_context(|| format!("serving metrics on {addr}"))?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    let per = a.recv.proto.max_packed_total;
    eprintln!(
        "listening on {listening} with snapshot {} ({}), writing to {}; up to {} sessions at once, {} of reassembly buffers each ({} in all); SIGTERM stops (grace {} s), SIGHUP reloads",
        a.snap_name,
        a.snap_backing,
        a.recv.out_dir.display(),
        max_sessions,
        human_bytes(per),
        human_bytes(per.saturating_mul(max_sessions as u64)),
        grace,
    );
    let _ = notifier.notify("READY=1\nSTATUS=0 session(s) active, 0 since start");
    let mut hooks = Hooks {
        config_path: a.config_path,
        flags: a.flags,
        config: a.config.clone(),
        security: a.recv.security.clone(),
        metrics_log: a.metrics_log,
        notifier,
        last_status: String::new(),
        last_watchdog: Instant::now(),
        transport,
    };
    let fin = svc.run(snap_id, snapshot, ctl, &mut hooks)?;
    println!(
        "stopped: {} session(s) served ({} ok, {} failed), {} file(s), {}; refused: {} unknown sender, {} over max-sessions, {} bad mac1, {} rate-limited, {} while stopping",
        fin.sessions_total,
        fin.sessions_ok,
        fin.sessions_failed,
        fin.files,
        human_bytes(fin.file_bytes),
        fin.refused_unknown_sender,
        fin.refused_over_max_sessions,
        fin.refused_mac1,
        fin.refused_rate_limited,
        fin.refused_closing,
    );
    if let Some(x) = &fin.xdp {
        let q: Vec<String> = x
            .queues
            .iter()
            .map(|q| format!("q{} rx {} tx {}", q.queue, q.rx_frames, q.tx_frames))
            .collect();
        println!(
            "xdp: {} steering {}; {}; bad frames {}",
            x.iface,
            x.steer,
            q.join(", "),
            x.bad_frames
        );
    }
    drop(svc); // sockets closed, program detached
    Ok(ExitCode::SUCCESS)
}
