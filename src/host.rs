//! What this host offers the PacketFS data path, as structured checks: kernel, AF_XDP
//! sockets, bpffs, capabilities, the XDP program (embedded, passing the verifier), the
//! interface (native attach, queues, MTU), the snapshot and huge pages.
//!
//! `pfs doctor` prints [`all`]; the transports' auto-pick (`--transport auto`) asks
//! [`xdp_blocker`] and the AF_XDP thread model (`--xdp-threads auto`) [`usable_cores`], so
//! both decide from the same facts. Each [`Check`] says what was found and, when something
//! is to be done, the command that fixes it.

use std::path::Path;
use std::process::Command;

use crate::pob::{Snapshot, SNAPSHOT_BIN};
use crate::steer::{self, Steering, XdpMode};
use crate::xsk::XskConfig;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, slower or with a fallback.
    Warn,
    /// Required and absent: the AF_XDP path cannot run.
    Missing,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// A short name (`kernel`, `af_xdp`, `native_xdp`, ...).
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The command that fixes it, when something is to be done.
    pub fix: Option<String>,
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

pub fn kernel() -> Check {
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

#[allow(unsafe_code)]
pub fn af_xdp() -> Check {
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

pub fn bpffs() -> Check {
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

pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_cap(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

pub fn capabilities(caps: u64) -> Check {
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

pub fn ebpf_object(caps: u64) -> Check {
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
    // the loader transfers use (aya-obj parse, map creation, bpf_prog_load): the verifier runs
    let res = Steering::load().map(drop).map_err(|e| e.to_string());
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

pub fn interface(iface: &str) -> Vec<Check> {
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

pub fn snapshot(dir: &Path) -> (Check, Option<u64>) {
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

pub fn hugepages(snap_size: Option<u64>) -> Check {
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

/// Every check `pfs doctor` runs, in its order: the host, then `iface` and `snapshot` when
/// given (a `warn` saying how to check them when not), then huge pages.
pub fn all(iface: Option<&str>, snapshot_dir: Option<&Path>) -> Vec<Check> {
    let caps = effective_caps();
    let mut checks = vec![
        kernel(),
        af_xdp(),
        bpffs(),
        capabilities(caps),
        ebpf_object(caps),
    ];
    match iface {
        Some(i) => checks.extend(interface(i)),
        None => checks.push(warn(
            "interface",
            "not checked (no --iface)",
            "pfs doctor --iface IFACE",
        )),
    }
    let snap_size = match snapshot_dir {
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
    checks
}

/// Why the AF_XDP transport cannot run here with `iface`, if it cannot: the quick checks
/// of [`all`] (capabilities, an AF_XDP socket, the XDP program built in, the interface
/// named and present), without attaching anything.
pub fn xdp_blocker(iface: Option<&str>) -> Option<String> {
    let caps = capabilities(effective_caps());
    if caps.status == Status::Missing {
        return Some(format!("capabilities {}", caps.detail));
    }
    let sock = af_xdp();
    if sock.status != Status::Ok {
        return Some(format!("AF_XDP: {}", sock.detail));
    }
    if !steer::object_available() {
        return Some("this build has no XDP program (run scripts/setup.sh and rebuild)".into());
    }
    let Some(iface) = iface else {
        return Some("no --iface given".into());
    };
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Some(format!(
            "{iface}: no such interface in this network namespace"
        ));
    }
    None
}

/// Cores this process may run on (the AF_XDP thread model's auto choice).
pub fn usable_cores() -> usize {
    crate::util::cores()
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

    #[test]
    fn xdp_is_blocked_without_an_interface_or_with_an_unknown_one() {
        // Whatever the privileges, no interface (or one that does not exist) blocks it,
        // and the reason names what is missing.
        let r = xdp_blocker(None).expect("blocked without --iface");
        assert!(!r.is_empty());
        let r = xdp_blocker(Some("pfs-no-such0")).expect("blocked on a missing interface");
        assert!(
            r.contains("pfs-no-such0")
                || r.contains("capabilities")
                || r.contains("AF_XDP")
                || r.contains("XDP program"),
            "{r}"
        );
    }

    #[test]
    fn all_checks_name_themselves_and_fix_what_is_missing() {
        let checks = all(None, None);
        for c in &checks {
            assert!(!c.name.is_empty());
            if c.status != Status::Ok {
                assert!(c.fix.is_some(), "{} has no fix", c.name);
            }
        }
        assert!(checks
            .iter()
            .any(|c| c.name == "interface" && c.status == Status::Warn));
        assert!(usable_cores() >= 1);
    }
}
