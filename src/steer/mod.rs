//! The loader for the XDP steering program (`ebpf/steer`).
//!
//! The program sends UDP frames whose destination port lies in the PacketFS range to the
//! AF_XDP socket of their rx queue and passes everything else (ARP, neighbour discovery,
//! other traffic) to the kernel. [`Steering`] loads the object embedded at build time
//! (`build.rs`), attaches it, fills its maps, reads its counters and detaches it on drop.
//!
//! Loading does not go through aya's `EbpfLoader`, which parses the whole vmlinux BTF
//! first (40-60 ms here, aya issue #1172) although this program needs none: `aya-obj`
//! parses the ELF, aya creates the maps, libbpf's `bpf_prog_load` loads the relocated
//! program (a refusal carries the verifier's log) and `bpf_link_create` attaches it
//! (kernel >= 5.9). The kernel releases a BPF link when the last file descriptor to it
//! closes: the program is gone from the interface when [`Steering`] drops and also when the
//! process dies (SIGINT, SIGTERM, SIGKILL), so no signal handler is needed to keep
//! interfaces clean. Where the kernel refuses the link, aya's loader attaches instead.
//!
//! | file        | concern                                                             |
//! |-------------|---------------------------------------------------------------------|
//! | `load.rs`   | parse, create maps, relocate, `bpf_prog_load`, `bpf_link_create`     |
//! | `attach.rs` | [`Steering`]: load, attach (native, SKB or auto), maps, counters     |
//! | `query.rs`  | [`attached_xdp`]: which XDP program, if any, an interface carries    |
#![allow(unsafe_code)]

mod attach;
mod load;
mod query;

pub use attach::{LoadedSteering, Steering};
pub use packetfs_common::{Counter, PortRange, MAX_QUEUES};
pub use query::{attached_xdp, AttachedXdp};

use std::fmt;
use std::str::FromStr;

/// The XDP program object, as `build.rs` embedded it; empty when it could not be built.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pfs-steer.o"));

/// The embedded eBPF object (empty when this build has none).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Whether this build embeds the XDP program (false when nightly/bpf-linker were missing).
pub fn object_available() -> bool {
    !OBJECT.is_empty()
}

/// How to attach the XDP program (`--xdp-mode`, `xdp-mode`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): fast, needs driver support (veth has it).
    #[value(alias = "drv")]
    #[serde(alias = "drv")]
    Native,
    /// Generic XDP in the kernel stack (XDP_FLAGS_SKB_MODE): works on every interface.
    #[value(alias = "generic")]
    #[serde(alias = "generic")]
    Skb,
    /// Native, falling back to SKB mode with a notice when the driver refuses.
    #[default]
    Auto,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Auto => "auto",
        })
    }
}

impl FromStr for XdpMode {
    type Err = SteerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" | "drv" => Ok(XdpMode::Native),
            "skb" | "generic" => Ok(XdpMode::Skb),
            "auto" => Ok(XdpMode::Auto),
            other => Err(SteerError::BadMode(other.to_string())),
        }
    }
}

/// The program's counters, summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// PacketFS frames redirected to an AF_XDP socket.
    pub steered: u64,
    /// Other frames passed to the kernel.
    pub passed: u64,
    /// Frames with truncated or invalid headers (passed to the kernel).
    pub malformed: u64,
    /// PacketFS frames on a queue without a socket (passed to the kernel).
    pub no_socket: u64,
    /// PacketFS frames dropped by the impairment mode.
    pub impaired_drop: u64,
    /// PacketFS frames with a bit flipped by the impairment mode (still steered).
    pub impaired_flip: u64,
}

impl Counters {
    /// The value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        match c {
            Counter::Steered => self.steered,
            Counter::Passed => self.passed,
            Counter::Malformed => self.malformed,
            Counter::NoSocket => self.no_socket,
            Counter::ImpairedDrop => self.impaired_drop,
            Counter::ImpairedFlip => self.impaired_flip,
        }
    }

    fn set(&mut self, c: Counter, v: u64) {
        match c {
            Counter::Steered => self.steered = v,
            Counter::Passed => self.passed = v,
            Counter::Malformed => self.malformed = v,
            Counter::NoSocket => self.no_socket = v,
            Counter::ImpairedDrop => self.impaired_drop = v,
            Counter::ImpairedFlip => self.impaired_flip = v,
        }
    }

    /// Every PacketFS frame the program saw: steered, dropped on purpose, or without socket.
    pub fn packetfs_frames(&self) -> u64 {
        self.steered + self.no_socket + self.impaired_drop
    }

    /// Counter-wise difference `self - earlier` (saturating).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for c in Counter::ALL {
            d.set(c, self.get(c).saturating_sub(earlier.get(c)));
        }
        d
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in Counter::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", c.name(), self.get(*c))?;
        }
        Ok(())
    }
}

/// What can go wrong loading, attaching or driving the steering program.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error(
        "this pfs build has no XDP program (nightly or bpf-linker were missing when it was \
         built): run scripts/setup.sh, then rebuild pfs"
    )]
    NotBuilt,
    #[error("unknown XDP mode {0:?}: use native, skb or auto")]
    BadMode(String),
    #[error("network interface {0:?} not found in this network namespace (see `ip link`)")]
    NoInterface(String),
    #[error(
        "loading the XDP object failed: {0} (needs root or CAP_BPF + CAP_NET_ADMIN, and \
         RLIMIT_MEMLOCK high enough on old kernels)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("parsing the XDP object failed: {0} (rebuild it with scripts/build-ebpf.sh)")]
    Parse(#[source] aya_obj::ParseError),
    #[error(
        "creating the XDP map {name} failed: {source} (needs root or CAP_BPF, and \
         RLIMIT_MEMLOCK high enough on kernels < 5.11)"
    )]
    CreateMap {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("relocating the XDP program failed: {0}")]
    Relocate(String),
    #[error("the kernel refused the XDP program: {source}{}", prog_load_detail(.source, .log))]
    ProgLoad {
        #[source]
        source: std::io::Error,
        /// The verifier's log (empty when the kernel gave none).
        log: String,
    },
    #[error("the XDP object has no program {0:?}: rebuild it with scripts/build-ebpf.sh")]
    MissingProgram(&'static str),
    #[error("the XDP object has no map {0:?}: rebuild it with scripts/build-ebpf.sh")]
    MissingMap(&'static str),
    #[error("the kernel refused the XDP program: {0}")]
    Verify(#[source] aya::programs::ProgramError),
    #[error("attaching XDP to {iface} in {mode} mode failed: {source}{hint}")]
    Attach {
        iface: String,
        mode: XdpMode,
        #[source]
        source: aya::programs::ProgramError,
        hint: &'static str,
    },
    #[error("attaching XDP to {iface} in {mode} mode (BPF link) failed: {source}{hint}")]
    Link {
        iface: String,
        mode: XdpMode,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("XDP map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("rx queue {queue} is beyond the XSKMAP's {max} entries")]
    QueueOutOfRange { queue: u32, max: u32 },
    #[error("impairment drop rate {0} ppm is above 1000000 (100%)")]
    BadDropRate(u32),
    #[error("querying the XDP program on {iface}: {source}")]
    Query {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// The hint and the verifier's log after a refused program load.
fn prog_load_detail(source: &std::io::Error, log: &str) -> String {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (needs root or CAP_BPF + CAP_NET_ADMIN; in a container see \
             scripts/container-seccomp.sh)"
        }
        _ => "",
    };
    if log.is_empty() {
        hint.to_string()
    } else {
        format!("{hint}; verifier log:\n{log}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses() {
        assert_eq!("native".parse::<XdpMode>().unwrap(), XdpMode::Native);
        assert_eq!("skb".parse::<XdpMode>().unwrap(), XdpMode::Skb);
        assert_eq!("auto".parse::<XdpMode>().unwrap(), XdpMode::Auto);
        let e = "fast".parse::<XdpMode>().unwrap_err().to_string();
        assert!(e.contains("native, skb or auto"), "{e}");
    }

    #[test]
    fn counters_arithmetic() {
        let a = Counters {
            steered: 10,
            passed: 3,
            malformed: 0,
            no_socket: 2,
            impaired_drop: 1,
            impaired_flip: 0,
        };
        assert_eq!(a.packetfs_frames(), 13);
        let b = Counters { steered: 4, ..a };
        assert_eq!(a.since(&b).steered, 6);
        assert_eq!(b.since(&a).steered, 0);
        assert_eq!(
            a.to_string(),
            "steered=10 passed=3 malformed=0 no_socket=2 impaired_drop=1 impaired_flip=0"
        );
    }

    #[test]
    fn not_built_error_names_setup() {
        assert!(SteerError::NotBuilt
            .to_string()
            .contains("scripts/setup.sh"));
    }

    /// The embedded object carries the program and every map under the names that
    /// packetfs-common declares (no kernel needed: an ELF symbol check).
    #[test]
    fn object_has_program_and_maps() {
        use object::{Object, ObjectSymbol};
        if !object_available() {
            eprintln!("skipped: no eBPF object in this build (run scripts/setup.sh)");
            return;
        }
        let file = object::File::parse(object()).expect("eBPF object parses as ELF");
        let names: Vec<String> = file
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_string))
            .collect();
        for want in [
            packetfs_common::PROG_NAME,
            packetfs_common::MAP_XSKS,
            packetfs_common::MAP_PORTS,
            packetfs_common::MAP_COUNTERS,
            packetfs_common::MAP_IMPAIR,
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
