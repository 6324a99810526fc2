//! [`Steering`]: the loaded and attached XDP program with its maps.

use std::os::fd::AsRawFd;

use aya::maps::{Array, MapData, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::Ebpf;
use packetfs_common::{
    Counter, ImpairConfig, PortRange, MAP_COUNTERS, MAP_IMPAIR, MAP_PORTS, MAP_XSKS, PPM, PROG_NAME,
};

use super::{object, object_available, Counters, SteerError, XdpMode};

/// The steering program, attached to one interface until this value drops.
///
/// Create it in the network namespace of the interface (the name is resolved there).
/// The maps are plain file descriptors and may be updated from any thread afterwards.
pub struct Steering {
    ebpf: Ebpf,
    link: Option<aya::programs::xdp::XdpLinkId>,
    iface: String,
    mode: XdpMode,
    notice: Option<String>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("attached", &self.link.is_some())
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
        let mut ebpf = Ebpf::load(object()).map_err(SteerError::Load)?;
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
        tracing::debug!(iface, mode = %actual, "steering program attached");
        Ok(Steering {
            ebpf,
            link: Some(link),
            iface: iface.to_string(),
            mode: actual,
            notice,
        })
    }

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
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let prog: &mut Xdp = self
            .ebpf
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

    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, SteerError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self.ebpf.map(name).ok_or(SteerError::MissingMap(name))?;
        M::try_from(m).map_err(map_err(name))
    }

    fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, SteerError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(SteerError::MissingMap(name))?;
        M::try_from(m).map_err(map_err(name))
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            // Dropping the Ebpf right after closes the link fd, which detaches it anyway.
            tracing::warn!(iface = %self.iface, "detaching XDP: {e}");
        }
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> SteerError {
    move |source| SteerError::Map { map, source }
}

/// What to try when an attach fails, judged from the kernel's errno.
fn attach_hint(e: &ProgramError, mode: XdpMode) -> &'static str {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
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
