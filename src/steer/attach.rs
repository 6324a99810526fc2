//! [`Steering`]: the loaded and attached XDP program with its maps.
//!
//! The program is loaded by [`super::load`] (no vmlinux BTF parse) and attached through a
//! BPF link; on kernels without XDP links (< 5.9) attaching falls back to aya's loader,
//! which attaches through netlink, and says so in [`Steering::notice`].

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{Array, Map, MapData, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::Ebpf;
use packetfs_common::{
    Counter, ImpairConfig, PortRange, MAP_COUNTERS, MAP_IMPAIR, MAP_PORTS, MAP_XSKS, PPM, PROG_NAME,
};

use super::load::{self, Loaded};
use super::{object, object_available, Counters, SteerError, XdpMode};

/// The steering program, attached to one interface until this value drops.
///
/// Create it in the network namespace of the interface (the name is resolved there).
/// The maps are plain file descriptors and may be updated from any thread afterwards.
pub struct Steering {
    backend: Backend,
    iface: String,
    mode: XdpMode,
    notice: Option<String>,
}

/// Who loaded the program, and what keeps it attached.
enum Backend {
    /// Our loader: the program fd, its maps and the BPF link (field order is drop order:
    /// the link closes first, which detaches the program).
    Link {
        link: Option<OwnedFd>,
        maps: HashMap<String, Map>,
        _prog: OwnedFd,
    },
    /// aya's loader (the fallback when the kernel refused an XDP link).
    Aya {
        link: Option<aya::programs::xdp::XdpLinkId>,
        ebpf: Box<Ebpf>,
    },
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (backend, attached) = match &self.backend {
            Backend::Link { link, .. } => ("bpf link", link.is_some()),
            Backend::Aya { link, .. } => ("aya", link.is_some()),
        };
        f.debug_struct("Steering")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("backend", &backend)
            .field("attached", &attached)
            .finish()
    }
}

/// The steering program loaded into the kernel (verified, maps created), not attached yet:
/// [`Steering::load`], then [`LoadedSteering::attach`]. Loading needs no interface, so a
/// caller can load while it does other set-up.
pub struct LoadedSteering {
    loaded: Loaded,
}

impl std::fmt::Debug for LoadedSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSteering")
            .field("maps", &self.loaded.maps.len())
            .finish()
    }
}

impl Steering {
    /// Loads the embedded program and attaches it to `iface` in `mode`.
    ///
    /// The port range starts empty (nothing is steered) and impairment off: call
    /// [`Steering::set_ports`] and [`Steering::set_socket`] to start steering. With
    /// [`XdpMode::Auto`] a refused native attach falls back to SKB mode; the reason is logged
    /// and kept in [`Steering::notice`] for the CLI to print.
    pub fn attach(iface: &str, mode: XdpMode) -> Result<Self, SteerError> {
        if !object_available() {
            return Err(SteerError::NotBuilt);
        }
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(SteerError::NoInterface(iface.to_string()));
        }
        Self::load()?.attach(iface, mode)
    }

    /// Loads the embedded program (the verifier runs here) and creates its maps, without
    /// attaching it: no interface is needed yet.
    pub fn load() -> Result<LoadedSteering, SteerError> {
        if !object_available() {
            return Err(SteerError::NotBuilt);
        }
        Ok(LoadedSteering {
            loaded: load::load(object(), PROG_NAME)?,
        })
    }
}

impl LoadedSteering {
    /// Attaches the loaded program to `iface` in `mode` (see [`Steering::attach`]).
    ///
    /// Through a BPF link; when the kernel refuses the link for a reason other than the
    /// interface's (busy, permissions), the program is loaded again by aya and attached
    /// its way, with a notice saying why.
    pub fn attach(self, iface: &str, mode: XdpMode) -> Result<Steering, SteerError> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| SteerError::NoInterface(iface.to_string()))?;
        let Loaded { prog, maps } = self.loaded;
        let link_err = |m: XdpMode, source: std::io::Error| SteerError::Link {
            iface: iface.to_string(),
            mode: m,
            hint: link_hint(&source, m),
            source,
        };
        let try_mode =
            |m: XdpMode| load::xdp_link(prog.as_fd(), ifindex, m).map_err(|e| link_err(m, e));
        let mut notice = None;
        let attached = match mode {
            XdpMode::Native | XdpMode::Skb => try_mode(mode).map(|l| (l, mode)),
            XdpMode::Auto => match try_mode(XdpMode::Native) {
                Ok(l) => Ok((l, XdpMode::Native)),
                Err(native_err) => {
                    let r = try_mode(XdpMode::Skb).map(|l| (l, XdpMode::Skb));
                    if r.is_ok() {
                        let msg = format!(
                            "native XDP refused on {iface} ({native_err}); using SKB (generic) \
                             mode, which is slower"
                        );
                        tracing::warn!("{msg}");
                        notice = Some(msg);
                    }
                    r
                }
            },
        };
        match attached {
            Ok((link, actual)) => {
                tracing::debug!(iface, mode = %actual, "steering program attached (BPF link)");
                Ok(Steering {
                    backend: Backend::Link {
                        link: Some(link),
                        maps,
                        _prog: prog,
                    },
                    iface: iface.to_string(),
                    mode: actual,
                    notice,
                })
            }
            Err(e) if !link_fallback(&e) => Err(e),
            Err(e) => {
                drop((maps, prog));
                let why = format!(
                    "the kernel refused an XDP BPF link ({e}); attached through aya's loader \
                     instead (kernels before 5.9 have no XDP links; this path parses the \
                     kernel's BTF and starts slower)"
                );
                tracing::warn!("{why}");
                let mut s = aya_attach(iface, mode)?;
                s.notice = Some(match s.notice.take() {
                    Some(n) => format!("{why}; {n}"),
                    None => why,
                });
                Ok(s)
            }
        }
    }
}

/// Whether a refused link should be retried through aya: not when the interface is busy,
/// missing or the caller lacks permissions (aya would be refused the same way).
fn link_fallback(e: &SteerError) -> bool {
    let SteerError::Link { source, .. } = e else {
        return false;
    };
    !matches!(
        source.raw_os_error(),
        Some(libc::EBUSY | libc::EEXIST | libc::EPERM | libc::EACCES | libc::ENODEV)
    )
}

/// The pre-link way: aya loads (parsing vmlinux BTF) and attaches.
fn aya_attach(iface: &str, mode: XdpMode) -> Result<Steering, SteerError> {
    let mut ebpf = Box::new(Ebpf::load(object()).map_err(SteerError::Load)?);
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_NAME)
        .ok_or(SteerError::MissingProgram(PROG_NAME))?
        .try_into()
        .map_err(SteerError::Verify)?;
    prog.load().map_err(SteerError::Verify)?;

    let attach = |prog: &mut Xdp, m: XdpMode| {
        let flags = match m {
            XdpMode::Skb => XdpFlags::SKB_MODE,
            _ => XdpFlags::DRV_MODE,
        };
        prog.attach(iface, flags)
            .map_err(|source| SteerError::Attach {
                iface: iface.to_string(),
                mode: m,
                hint: attach_hint(&source, m),
                source,
            })
    };
    let mut notice = None;
    let (link, actual) = match mode {
        XdpMode::Native | XdpMode::Skb => (attach(prog, mode)?, mode),
        XdpMode::Auto => match attach(prog, XdpMode::Native) {
            Ok(link) => (link, XdpMode::Native),
            Err(native_err) => {
                let link = attach(prog, XdpMode::Skb)?;
                let msg = format!(
                    "native XDP refused on {iface} ({native_err}); using SKB (generic) \
                     mode, which is slower"
                );
                tracing::warn!("{msg}");
                notice = Some(msg);
                (link, XdpMode::Skb)
            }
        },
    };
    tracing::debug!(iface, mode = %actual, "steering program attached (aya)");
    Ok(Steering {
        backend: Backend::Aya {
            link: Some(link),
            ebpf,
        },
        iface: iface.to_string(),
        mode: actual,
        notice,
    })
}

impl Steering {
    /// The interface the program is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The mode it is attached in: [`XdpMode::Native`] or [`XdpMode::Skb`].
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Why attaching fell back to SKB mode, if it did.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// Steers UDP destination ports `range` (an empty range steers nothing).
    pub fn set_ports(&mut self, range: PortRange) -> Result<(), SteerError> {
        let mut map: Array<&mut MapData, PortRange> = self.map_mut(MAP_PORTS)?;
        map.set(0, range, 0).map_err(map_err(MAP_PORTS))
    }

    /// The configured port range.
    pub fn ports(&self) -> Result<PortRange, SteerError> {
        let map: Array<&MapData, PortRange> = self.map(MAP_PORTS)?;
        map.get(&0, 0).map_err(map_err(MAP_PORTS))
    }

    /// Sends PacketFS frames arriving on rx `queue` to the AF_XDP socket `fd`.
    ///
    /// The socket must be bound to `queue` of this interface: the kernel drops frames
    /// redirected to a socket bound elsewhere. Closing the socket removes its entry.
    pub fn set_socket(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), SteerError> {
        let mut map: XskMap<&mut MapData> = self.map_mut(MAP_XSKS)?;
        let max = map.len();
        if queue >= max {
            return Err(SteerError::QueueOutOfRange { queue, max });
        }
        map.set(queue, fd.as_raw_fd(), 0).map_err(map_err(MAP_XSKS))
    }

    /// Drops `drop_ppm` parts per million of PacketFS frames on receive (0 turns it off).
    pub fn set_impairment(&mut self, drop_ppm: u32) -> Result<(), SteerError> {
        self.set_impairments(drop_ppm, 0)
    }

    /// Drops `drop_ppm` and flips one bit (40 bytes into the UDP payload) in `flip_ppm`
    /// parts per million of PacketFS frames on receive (0 turns each off).
    pub fn set_impairments(&mut self, drop_ppm: u32, flip_ppm: u32) -> Result<(), SteerError> {
        for r in [drop_ppm, flip_ppm] {
            if r > PPM {
                return Err(SteerError::BadDropRate(r));
            }
        }
        let mut map: Array<&mut MapData, ImpairConfig> = self.map_mut(MAP_IMPAIR)?;
        map.set(0, ImpairConfig { drop_ppm, flip_ppm }, 0)
            .map_err(map_err(MAP_IMPAIR))
    }

    /// The counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, SteerError> {
        let map: PerCpuArray<&MapData, u64> = self.map(MAP_COUNTERS)?;
        let mut out = Counters::default();
        for c in Counter::ALL {
            let per_cpu = map.get(&c.index(), 0).map_err(map_err(MAP_COUNTERS))?;
            out.set(c, per_cpu.iter().sum());
        }
        Ok(out)
    }

    /// Detaches the program now (dropping does the same, ignoring errors).
    pub fn detach(mut self) -> Result<(), SteerError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), SteerError> {
        match &mut self.backend {
            Backend::Link { link, .. } => {
                // Closing the link's last fd detaches the program.
                if link.take().is_some() {
                    tracing::debug!(iface = %self.iface, "steering program detached");
                }
                Ok(())
            }
            Backend::Aya { link, ebpf } => {
                let Some(link) = link.take() else {
                    return Ok(());
                };
                let prog: &mut Xdp = ebpf
                    .program_mut(PROG_NAME)
                    .ok_or(SteerError::MissingProgram(PROG_NAME))?
                    .try_into()
                    .map_err(SteerError::Verify)?;
                prog.detach(link).map_err(|source| SteerError::Attach {
                    iface: self.iface.clone(),
                    mode: self.mode,
                    source,
                    hint: "",
                })?;
                tracing::debug!(iface = %self.iface, "steering program detached");
                Ok(())
            }
        }
    }

    fn raw_map(&self, name: &'static str) -> Option<&Map> {
        match &self.backend {
            Backend::Link { maps, .. } => maps.get(name),
            Backend::Aya { ebpf, .. } => ebpf.map(name),
        }
    }

    fn raw_map_mut(&mut self, name: &'static str) -> Option<&mut Map> {
        match &mut self.backend {
            Backend::Link { maps, .. } => maps.get_mut(name),
            Backend::Aya { ebpf, .. } => ebpf.map_mut(name),
        }
    }

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, SteerError>
    where
        M: TryFrom<&'a Map, Error = aya::maps::MapError>,
    {
        let m = self.raw_map(name).ok_or(SteerError::MissingMap(name))?;
        M::try_from(m).map_err(map_err(name))
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, SteerError>
    where
        M: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
    {
        let m = self.raw_map_mut(name).ok_or(SteerError::MissingMap(name))?;
        M::try_from(m).map_err(map_err(name))
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            // Dropping the backend right after closes the link fd, which detaches it anyway.
            tracing::warn!(iface = %self.iface, "detaching XDP: {e}");
        }
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SteerError {
    move |source| SteerError::Map { map, source }
}

/// What to try when an aya attach fails, judged from the kernel's errno.
fn attach_hint(e: &ProgramError, mode: XdpMode) -> &'static str {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    errno_hint(errno, mode)
}

/// What to try when a link create fails.
fn link_hint(e: &std::io::Error, mode: XdpMode) -> &'static str {
    errno_hint(e.raw_os_error(), mode)
}

fn errno_hint(errno: Option<i32>, mode: XdpMode) -> &'static str {
    match (errno, mode) {
        (Some(libc::EBUSY), _) | (Some(libc::EEXIST), _) => {
            " (another XDP program is attached: remove it with `ip link set dev IF xdp off`)"
        }
        (Some(libc::EOPNOTSUPP), XdpMode::Native) | (Some(libc::EINVAL), XdpMode::Native) => {
            " (the driver has no native XDP: use --xdp-mode skb or auto)"
        }
        (Some(libc::EPERM), _) => " (needs root or CAP_NET_ADMIN + CAP_BPF)",
        (_, XdpMode::Native) => " (try --xdp-mode skb)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_error(errno: i32) -> SteerError {
        let source = std::io::Error::from_raw_os_error(errno);
        SteerError::Link {
            iface: "veth0".into(),
            mode: XdpMode::Native,
            hint: link_hint(&source, XdpMode::Native),
            source,
        }
    }

    /// A busy interface or missing permissions are the caller's to fix (aya would be refused
    /// the same way); anything else (an old kernel without XDP links) goes to aya's loader.
    #[test]
    fn link_refusals_that_fall_back_to_aya() {
        for errno in [libc::EBUSY, libc::EEXIST, libc::EPERM, libc::ENODEV] {
            assert!(!link_fallback(&link_error(errno)), "errno {errno}");
        }
        for errno in [libc::EINVAL, libc::EOPNOTSUPP] {
            assert!(link_fallback(&link_error(errno)), "errno {errno}");
        }
        assert!(!link_fallback(&SteerError::NotBuilt));
        let busy = link_error(libc::EBUSY).to_string();
        assert!(busy.contains("another XDP program"), "{busy}");
    }
}
