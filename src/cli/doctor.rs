//! `pfs doctor`: what this host is missing for the PacketFS data path, each check with the
//! command that fixes it.
//!
//! Output: one line per check, `STATUS  CHECK  DETAIL`, where STATUS is `ok`, `warn` or
//! `missing`, followed by an indented `fix: COMMAND` line when there is something to do.
//! The exit status is 1 when a required check is `missing`, 0 otherwise (`warn` only slows
//! things down or falls back).
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Args;

use packetfs::pob::{Snapshot, SNAPSHOT_BIN};
use packetfs::steer::{self, Steering, XdpMode};
use packetfs::xsk::XskConfig;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Missing,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn missing(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Missing,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Capability bits (linux/capability.h).
const CAPS: &[(&str, u32)] = &[
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];
const CAP_SYS_ADMIN: u32 = 21;

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
    let mut checks = Vec::new();
    let caps = effective_caps();
    checks.push(kernel());
    checks.push(af_xdp());
    checks.push(bpffs());
    checks.push(capabilities(caps));
    checks.push(ebpf_object(caps));
    if let Some(iface) = &a.iface {
        checks.extend(interface(iface));
    } else {
        checks.push(warn(
            "interface",
            "not checked (no --iface)",
            "pfs doctor --iface IFACE",
        ));
    }
    let snap_size = match &a.snapshot {
        Some(dir) => {
            let (c, size) = snapshot(dir);
            checks.push(c);
            size
        }
        None => {
            checks.push(warn(
                "snapshot",
                "not checked (no --snapshot)",
                "pfs doctor --snapshot DIR",
            ));
            None
        }
    };
    checks.push(hugepages(snap_size));

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

fn kernel() -> Check {
    let u = nix::sys::utsname::uname();
    let rel = match &u {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => return missing("kernel", format!("uname: {e}"), "check /proc/version"),
    };
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (maj, min) >= (5, 10) {
        ok(
            "kernel",
            format!("{rel} (>= 5.10: XDP links, AF_XDP need_wakeup)"),
        )
    } else {
        missing(
            "kernel",
            format!("{rel}: PacketFS needs >= 5.10 (XDP links, AF_XDP need_wakeup)"),
            "apt-get install -t bookworm-backports linux-image-amd64 && reboot",
        )
    }
}

fn af_xdp() -> Check {
    // SAFETY: socket(2) with constant arguments; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: fd was just returned by socket(2) and is owned here.
        unsafe { libc::close(fd) };
        return ok("af_xdp", "AF_XDP socket created");
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => warn(
            "af_xdp",
            format!("the kernel has AF_XDP but refused this process ({err})"),
            "grant CAP_NET_RAW (see the capabilities check)",
        ),
        _ => missing(
            "af_xdp",
            format!("socket(AF_XDP) failed: {err}"),
            "use a kernel built with CONFIG_XDP_SOCKETS=y (Debian's is)",
        ),
    }
}

fn bpffs() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        ok("bpffs", "mounted")
    } else {
        // pfs_steer pins nothing and attaches through a BPF link, so pfs works without it;
        // libxdp (xdp-loader, multi-program dispatch) and bpftool pinning need it.
        warn(
            "bpffs",
            "no bpf filesystem mounted here (pfs pins nothing; xdp-loader and libxdp need it; \
             `ip netns exec` hides it, `nsenter --net=` does not)",
            "mount -t bpf bpf /sys/fs/bpf",
        )
    }
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has_cap(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

fn capabilities(caps: u64) -> Check {
    let lacking: Vec<&str> = CAPS
        .iter()
        .filter(|(name, bit)| {
            // Before 5.8 (no CAP_BPF/CAP_PERFMON) CAP_SYS_ADMIN stands in for both.
            !has_cap(caps, *bit)
                && !((*name == "CAP_BPF" || *name == "CAP_PERFMON") && has_cap(caps, CAP_SYS_ADMIN))
        })
        .map(|(name, _)| *name)
        .collect();
    if lacking.is_empty() {
        ok(
            "capabilities",
            "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK effective",
        )
    } else {
        missing(
            "capabilities",
            format!("not effective: {}", lacking.join(" ")),
            "run as root, or: setcap cap_net_admin,cap_net_raw,cap_bpf,cap_perfmon,cap_ipc_lock+ep \
             $(command -v pfs), or podman run --cap-add NET_ADMIN,NET_RAW,BPF,PERFMON,IPC_LOCK",
        )
    }
}

fn ebpf_object(caps: u64) -> Check {
    if !steer::object_available() {
        return missing(
            "ebpf_object",
            "this pfs was built without the XDP program (nightly or bpf-linker missing)",
            "bash scripts/setup.sh && cargo build --release",
        );
    }
    let size = steer::object().len();
    if !has_cap(caps, 39) && !has_cap(caps, CAP_SYS_ADMIN) {
        return warn(
            "ebpf_object",
            format!("embedded ({size} B); load not tried without CAP_BPF"),
            "rerun pfs doctor with CAP_BPF (root)",
        );
    }
    let res = (|| -> Result<(), String> {
        let mut ebpf = aya::Ebpf::load(steer::object()).map_err(|e| format!("load: {e}"))?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(packetfs_common::PROG_NAME)
            .ok_or_else(|| format!("no program {}", packetfs_common::PROG_NAME))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load().map_err(|e| format!("verifier: {e}"))?;
        Ok(())
    })();
    match res {
        Ok(()) => ok(
            "ebpf_object",
            format!(
                "embedded ({size} B), {} passes the verifier",
                packetfs_common::PROG_NAME
            ),
        ),
        Err(e) => missing(
            "ebpf_object",
            format!("embedded ({size} B) but does not load: {e}"),
            "in a container: --security-opt seccomp=$(scripts/container-seccomp.sh) (podman's \
             default profile allows bpf(2) only with CAP_SYS_ADMIN); kernels < 5.11: ulimit -l \
             unlimited; details: pfs -vv doctor",
        ),
    }
}

fn interface(iface: &str) -> Vec<Check> {
    // Netlink through `ip`, not /sys/class/net: sysfs shows the namespace it was mounted
    // in, which under `nsenter --net=` is not this one.
    let link = Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output();
    let link: serde_json::Value = match link {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout)
            .ok()
            .and_then(|v: serde_json::Value| v.get(0).cloned())
            .unwrap_or_default(),
        Ok(_) => {
            return vec![missing(
                "interface",
                format!("{iface}: no such interface in this network namespace"),
                "ip -br link   # pick an existing interface, or run doctor inside its namespace",
            )]
        }
        // No iproute2 (the slim container image): sysfs, which a container mounts for its
        // own network namespace.
        Err(_) => match sysfs_link(iface) {
            Some(v) => v,
            None => {
                return vec![missing(
                "interface",
                format!("{iface}: no such interface in this network namespace"),
                "ip -br link   # pick an existing interface, or run doctor inside its namespace",
            )]
            }
        },
    };
    let num = |k: &str| link.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let mut out = Vec::new();
    let state = link
        .get("operstate")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let driver = Command::new("ethtool")
        .args(["-i", iface])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("driver:").map(|d| d.trim().to_string()))
        })
        .unwrap_or_else(|| "driver unknown".into());
    if state == "up" || state == "unknown" {
        out.push(ok(
            "interface",
            format!("{iface} ({driver}) operstate {state}"),
        ));
    } else {
        out.push(warn(
            "interface",
            format!("{iface} ({driver}) operstate {state}"),
            format!("ip link set {iface} up"),
        ));
    }

    // Native XDP: attach the real program, then drop it (the link goes with it).
    out.push(match steer::attached_xdp(iface) {
        Ok(a) if a.any() => warn(
            "native_xdp",
            format!("{iface} already carries an XDP program ({a:?}); attach not tried"),
            format!(
                "xdp-loader status {iface}; ip link set dev {iface} xdp off   # if it is stale"
            ),
        ),
        _ => match Steering::attach(iface, XdpMode::Native) {
            Ok(s) => {
                drop(s);
                ok(
                    "native_xdp",
                    format!("pfs_steer attached natively to {iface} and detached"),
                )
            }
            Err(native) => match Steering::attach(iface, XdpMode::Skb) {
                Ok(s) => {
                    drop(s);
                    warn(
                        "native_xdp",
                        format!("native refused ({native}); SKB (generic) mode works, slower"),
                        format!(
                            "ip link set dev {iface} mtu 3400   # drivers refuse native XDP above \
                             their XDP MTU (veth: 3498 ok, 3520 refused, also for the peer's \
                             MTU); else ethtool -i {iface}: a driver with native XDP"
                        ),
                    )
                }
                Err(e) => missing(
                    "native_xdp",
                    format!("cannot attach to {iface}: {native}; SKB: {e}"),
                    "see the capabilities and bpffs checks; pfs -vv doctor --iface IFACE",
                ),
            },
        },
    });

    // Queues and channels.
    let (rx, tx) = (num("num_rx_queues"), num("num_tx_queues"));
    let ch = match Command::new("ethtool").args(["-l", iface]).output() {
        Ok(o) if o.status.success() => match parse_channels(&String::from_utf8_lossy(&o.stdout)) {
            Some(((cmax, ccur), (rmax, rcur))) => {
                format!("; ethtool -l: combined {ccur} of max {cmax}, rx {rcur} of max {rmax}")
            }
            None => "; ethtool -l: unreadable".into(),
        },
        Ok(_) => "; ethtool -l not supported by the driver".into(),
        Err(_) => "; ethtool not installed (apt-get install -y ethtool)".into(),
    };
    if rx >= 1 && rx == tx {
        out.push(ok("queues", format!("{rx} rx / {tx} tx queues{ch}")));
    } else {
        out.push(warn(
            "queues",
            format!("{rx} rx / {tx} tx queues (asymmetric){ch}"),
            format!("ethtool -L {iface} combined N"),
        ));
    }

    // MTU against the UMEM frame.
    let mtu = num("mtu");
    let frame = XskConfig::default().frame_size as usize;
    let room = frame - 256; // XDP headroom
    let need = mtu + 14 + 4; // Ethernet + one VLAN tag
    if need <= room {
        out.push(ok(
            "mtu",
            format!("{mtu} (+18 B L2) fits a {frame} B UMEM frame ({room} B after headroom)"),
        ));
    } else {
        out.push(missing(
            "mtu",
            format!(
                "{mtu} (+18 B L2) does not fit a {frame} B UMEM frame ({room} B after headroom)"
            ),
            format!("ip link set dev {iface} mtu {}", room - 18),
        ));
    }
    out
}

/// The fields of `ip -d -j link show` that doctor reads, from /sys/class/net instead.
fn sysfs_link(iface: &str) -> Option<serde_json::Value> {
    nix::net::if_::if_nametoindex(iface).ok()?;
    let sys = Path::new("/sys/class/net").join(iface);
    let read = |f: &str| {
        std::fs::read_to_string(sys.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let count = |prefix: &str| {
        std::fs::read_dir(sys.join("queues"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            })
            .unwrap_or(0)
    };
    Some(serde_json::json!({
        "mtu": read("mtu")?.parse::<u64>().ok()?,
        "operstate": read("operstate").unwrap_or_default(),
        "num_rx_queues": count("rx-"),
        "num_tx_queues": count("tx-"),
    }))
}

/// (combined max, combined current), (rx max, rx current) from `ethtool -l`.
fn parse_channels(text: &str) -> Option<((u32, u32), (u32, u32))> {
    let mut section = 0; // 1 = maximums, 2 = current
    let (mut c, mut r) = ((0, 0), (0, 0));
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with("Pre-set maximums") {
            section = 1;
        } else if l.starts_with("Current hardware settings") {
            section = 2;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v: u32 = v.trim().parse().unwrap_or(0);
        match (k.trim(), section) {
            ("Combined", 1) => c.0 = v,
            ("Combined", 2) => c.1 = v,
            ("RX", 1) => r.0 = v,
            ("RX", 2) => r.1 = v,
            _ => {}
        }
    }
    Some((c, r))
}

fn snapshot(dir: &Path) -> (Check, Option<u64>) {
    match Snapshot::read_manifest(dir) {
        Ok(m) => {
            let bin = dir.join(SNAPSHOT_BIN);
            match std::fs::metadata(&bin) {
                Ok(md) if md.len() == m.size => (
                    ok(
                        "snapshot",
                        format!(
                            "{}: id {} ({} B); compare the id with the peer's",
                            dir.display(),
                            m.snapshot_id,
                            m.size
                        ),
                    ),
                    Some(m.size),
                ),
                Ok(md) => (
                    missing(
                        "snapshot",
                        format!(
                            "{} is {} B, the manifest says {} B",
                            bin.display(),
                            md.len(),
                            m.size
                        ),
                        format!("pfs snapshot verify {}", dir.display()),
                    ),
                    None,
                ),
                Err(e) => (
                    missing(
                        "snapshot",
                        format!("{}: {e}", bin.display()),
                        format!("pfs snapshot build --out {}", dir.display()),
                    ),
                    None,
                ),
            }
        }
        Err(e) => (
            missing(
                "snapshot",
                format!("{e}"),
                format!(
                    "pfs snapshot build --out {}   # same recipe and seed as the peer",
                    dir.display()
                ),
            ),
            None,
        ),
    }
}

fn hugepages(snap_size: Option<u64>) -> Check {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (total, free, size_kb) = (
        field("HugePages_Total:"),
        field("HugePages_Free:"),
        field("Hugepagesize:"),
    );
    let page = size_kb.max(1) * 1024;
    let need = snap_size.map(|s| s.div_ceil(page)).unwrap_or(1);
    let detail = format!(
        "{free} free of {total} x {} KiB{}",
        size_kb,
        snap_size
            .map(|_| format!(", the snapshot needs {need}"))
            .unwrap_or_default()
    );
    if free >= need {
        ok("hugepages", detail)
    } else {
        warn(
            "hugepages",
            format!("{detail} (the snapshot falls back to transparent huge pages)"),
            format!(
                "echo {} > /proc/sys/vm/nr_hugepages",
                total + need.saturating_sub(free)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse() {
        let t = "Channel parameters for eth0:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\n\
                 Other:\t\t1\nCombined:\t63\nCurrent hardware settings:\nRX:\t\tn/a\n\
                 TX:\t\tn/a\nOther:\t\t1\nCombined:\t8\n";
        assert_eq!(parse_channels(t), Some(((63, 8), (0, 0))));
    }

    #[test]
    fn caps_bits() {
        let all = CAPS.iter().fold(0u64, |a, (_, b)| a | 1 << b);
        assert_eq!(capabilities(all).status, Status::Ok);
        assert_eq!(capabilities(0).status, Status::Missing);
        let old = (1 << 12) | (1 << 13) | (1 << 14) | (1 << CAP_SYS_ADMIN);
        assert_eq!(capabilities(old).status, Status::Ok);
    }
}
