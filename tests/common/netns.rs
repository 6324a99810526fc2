//! Test harness twin of scripts/netns.sh: two network namespaces joined by a veth pair
//! ([`NetnsPair`]), or several hosts on one bridged segment ([`NetnsStar`]).
//!
//! [`NetnsPair::new`] makes uniquely named namespaces `<name>a`/`<name>b` holding veth ends
//! of the same names (10.201.X.1/30 and .2), N symmetric queues, an MTU, links up and bpffs
//! mounted. Dropping the pair deletes both namespaces, which removes the veth pair and any
//! XDP program on it, also when the test panics (Drop runs during unwinding).
//!
//! Code runs inside a namespace through [`NetnsPair::run_in`]: a fresh thread joins the
//! namespace with setns(CLONE_NEWNET) (a per-thread setting), so sockets, interface names and
//! XDP attachments made there belong to it, while the rest of the test stays outside.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One side of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Two namespaces joined by a veth pair; removed on drop.
#[derive(Debug)]
pub struct NetnsPair {
    pub name: String,
    pub queues: u32,
    pub mtu: u32,
    pub net: u8,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Why privileged tests cannot run here, if they cannot (not root, no `ip`).
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (AF_XDP, XDP and network namespaces need root)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) not installed: run scripts/setup.sh".into());
    }
    None
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetnsPair {
    /// Creates a pair with a name unique to this process and call.
    pub fn new(queues: u32, mtu: u32) -> Result<Self, String> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // "pfs" + pid (<= 7 digits) + seq: at most 14 characters with the side letter.
        let name = format!("pfs{}x{}", std::process::id() % 10_000_000, seq % 100);
        let net = ((std::process::id().wrapping_mul(31).wrapping_add(seq)) % 250) as u8;
        let pair = NetnsPair {
            name,
            queues,
            mtu,
            net,
        };
        pair.create()?;
        Ok(pair)
    }

    fn create(&self) -> Result<(), String> {
        mount_bpffs();
        let (a, b) = (self.ns(Side::A), self.ns(Side::B));
        let q = self.queues.to_string();
        let mtu = self.mtu.to_string();
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &a,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &b,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ])?;
        for side in [Side::A, Side::B] {
            let ns = self.ns(side);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", &ns, "mtu", &mtu])?;
            let addr = format!("{}/30", self.addr(side));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &ns])?;
            ip(&["-n", &ns, "link", "set", &ns, "up"])?;
        }
        Ok(())
    }

    /// The namespace name of `side`; the veth end inside it has the same name.
    pub fn ns(&self, side: Side) -> String {
        match side {
            Side::A => format!("{}a", self.name),
            Side::B => format!("{}b", self.name),
        }
    }

    /// The interface of `side` (named like its namespace).
    pub fn iface(&self, side: Side) -> String {
        self.ns(side)
    }

    /// The IPv4 address of `side`: 10.201.X.1 (A) or .2 (B).
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.net, if side == Side::A { 1 } else { 2 })
    }

    /// The MAC address of `side`'s veth end.
    pub fn mac(&self, side: Side) -> [u8; 6] {
        let ns = self.ns(side);
        let out = ip(&["-n", &ns, "-j", "link", "show", "dev", &ns]).expect("ip link show");
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        let s = v[0]["address"].as_str().expect("address");
        let mut mac = [0u8; 6];
        for (i, part) in s.split(':').enumerate() {
            mac[i] = u8::from_str_radix(part, 16).expect("hex");
        }
        mac
    }

    /// Runs `f` on a new thread inside `side`'s namespace and returns its result; a panic
    /// in `f` is re-raised here.
    pub fn run_in<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.ns(side));
        let handle = std::thread::spawn(move || {
            enter(&path);
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Spawns `f` on a thread inside `side`'s namespace (join it yourself).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(side));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for side in [Side::A, Side::B] {
            let ns = self.ns(side);
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

/// Several sender namespaces and one receiver namespace on one Ethernet segment: a bridge
/// in a namespace of its own joins a veth pair per host (real hosts behind a switch, each
/// with its own interface, so each may attach its own XDP program). Removed on drop.
///
/// Namespaces: `<name>r` (the receiver), `<name>s0`, `<name>s1`, ... (senders), `<name>w`
/// (the bridge `<name>br`). Each host's veth end is named like its namespace and holds
/// 10.202.X.(10+i)/24 (sender i) or 10.202.X.1/24 (the receiver); every veth has N
/// symmetric queues and the given MTU; bpffs is mounted.
#[derive(Debug)]
pub struct NetnsStar {
    pub name: String,
    pub senders: usize,
    pub net: u8,
}

impl NetnsStar {
    pub fn new(senders: usize, queues: u32, mtu: u32) -> Result<Self, String> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // "pst" + pid (<= 7 digits) + seq: at most 14 characters with the suffixes.
        let name = format!("pst{}x{}", std::process::id() % 1_000_000, seq % 10);
        let net = ((std::process::id().wrapping_mul(17).wrapping_add(seq)) % 250) as u8;
        let star = NetnsStar { name, senders, net };
        star.create(queues, mtu)
            .inspect_err(|_| drop_namespaces(&star.all()))?;
        Ok(star)
    }

    fn all(&self) -> Vec<String> {
        let mut v = vec![self.switch(), self.receiver()];
        v.extend((0..self.senders).map(|i| self.sender(i)));
        v
    }

    fn create(&self, queues: u32, mtu: u32) -> Result<(), String> {
        mount_bpffs();
        let (q, mtu) = (queues.to_string(), mtu.to_string());
        let w = self.switch();
        let br = format!("{}br", self.name);
        for ns in self.all() {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &w, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &w, "link", "set", &br, "up"])?;
        let mut hosts: Vec<(String, String)> = vec![(self.receiver(), format!("{}pr", self.name))];
        hosts.extend((0..self.senders).map(|i| (self.sender(i), format!("{}p{i}", self.name))));
        for (ns, port) in &hosts {
            ip(&[
                "link",
                "add",
                ns,
                "netns",
                ns,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &w,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
            ])?;
            ip(&["-n", &w, "link", "set", port, "mtu", &mtu])?;
            ip(&["-n", &w, "link", "set", port, "master", &br])?;
            ip(&["-n", &w, "link", "set", port, "up"])?;
            ip(&["-n", ns, "link", "set", ns, "mtu", &mtu])?;
            let addr = format!("{}/24", self.addr(ns));
            ip(&["-n", ns, "addr", "add", &addr, "dev", ns])?;
            ip(&["-n", ns, "link", "set", ns, "up"])?;
        }
        Ok(())
    }

    /// The receiver's namespace (its veth end has the same name).
    pub fn receiver(&self) -> String {
        format!("{}r", self.name)
    }

    /// Sender `i`'s namespace (its veth end has the same name).
    pub fn sender(&self, i: usize) -> String {
        format!("{}s{i}", self.name)
    }

    fn switch(&self) -> String {
        format!("{}w", self.name)
    }

    /// The IPv4 address of the host namespace `ns`.
    pub fn addr(&self, ns: &str) -> Ipv4Addr {
        let last = if ns == self.receiver() {
            1
        } else {
            let i: u8 = ns
                .rsplit('s')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            10 + i
        };
        Ipv4Addr::new(10, 202, self.net, last)
    }
}

fn mount_bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.contains(" /sys/fs/bpf bpf ")))
        .unwrap_or(false);
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
    }
}

fn drop_namespaces(all: &[String]) {
    for ns in all {
        if std::path::Path::new("/run/netns").join(ns).exists() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

impl Drop for NetnsStar {
    fn drop(&mut self) {
        drop_namespaces(&self.all());
    }
}

/// Runs `f` on a new thread inside the namespace `ns` and returns its result; a panic in
/// `f` is re-raised here.
pub fn run_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::spawn(move || {
        enter(&path);
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
