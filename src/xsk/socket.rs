//! [`XskSocket`]: one AF_XDP socket with its own UMEM, bound to one queue of an interface.

use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::{BindMode, XskConfig, XskError};

/// Kernel AF_XDP statistics of one socket (`getsockopt(XDP_STATISTICS)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskStats {
    /// Frames dropped for reasons other than a full rx ring (e.g. too large for a frame).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the tx ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: u64,
    /// Times the kernel found the tx ring empty.
    pub tx_ring_empty: u64,
}

impl XskStats {
    /// Frames lost on receive for any reason.
    pub fn rx_lost(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

/// One UMEM frame lent out of its [`XskSocket`] to another thread (a worker's frame built or
/// consumed by the session thread): its descriptor and where its bytes are.
///
/// Reading or writing the bytes is `unsafe`: the caller must hold the frame exclusively (it
/// came out of `rx_lend` / `tx_lend` and has not been handed back) and the socket, whose
/// UMEM the pointer points into, must still be alive.
#[derive(Clone, Copy, Debug)]
pub struct LentFrame {
    desc: FrameDesc,
    ptr: *mut u8,
    len: usize,
    owner: RawFd,
}

// Safety: a LentFrame is a capability for one UMEM frame, handed between threads through
// queues that order the accesses; the UMEM is shared memory that outlives the frames.
unsafe impl Send for LentFrame {}

impl LentFrame {
    /// Received: the frame's length; lent for transmission: its capacity.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's bytes.
    ///
    /// # Safety
    /// The frame is held exclusively by the caller and its socket is alive.
    pub unsafe fn bytes(&self) -> &[u8] {
        // Safety: per the contract, ptr..ptr+len is a live UMEM frame nobody else touches.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The frame's bytes, writable.
    ///
    /// # Safety
    /// As for [`bytes`](Self::bytes).
    pub unsafe fn bytes_mut(&mut self) -> &mut [u8] {
        // Safety: as above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// An AF_XDP socket bound to one queue, with its UMEM and four rings.
///
/// Built in the network namespace of the interface. It owns every frame of its UMEM and
/// hands them out only inside [`recv_batch`](Self::recv_batch) and
/// [`send_batch`](Self::send_batch), so frames are processed and built in place. Move it
/// into the worker thread of its queue: it is `Send` but not `Sync`.
pub struct XskSocket {
    // Field order is drop order: rings go before the UMEM they point into.
    fq: FillQueue,
    cq: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    umem: Umem,
    /// Frames user space holds for transmission.
    tx_free: Vec<FrameDesc>,
    /// Received frames that go back to the fill ring when it has room.
    fill_pending: Vec<FrameDesc>,
    /// Descriptor scratch space for one batch.
    scratch: Vec<FrameDesc>,
    /// Frames on the tx ring or in flight, not yet back through the completion ring.
    tx_in_flight: usize,
    batch: usize,
    /// Frames one tx kick (`sendto`) moves in copy mode: the kernel's default of 32, or the
    /// tx ring's size where the kernel takes `XDP_MAX_TX_SKB_BUDGET` (6.17+).
    kick_budget: u32,
    /// Busy-poll mode (see [`set_busy_poll`](Self::set_busy_poll)).
    busy_poll: bool,
    frame_cap: usize,
    iface: String,
    queue: u32,
    fd: RawFd,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("iface", &self.iface)
            .field("queue", &self.queue)
            .field("fd", &self.fd)
            .field("tx_free", &self.tx_free.len())
            .field("tx_in_flight", &self.tx_in_flight)
            .finish()
    }
}

impl XskSocket {
    /// Creates a UMEM of `cfg.frame_count` frames and binds a socket to `queue` of `iface`.
    ///
    /// No XDP program is loaded: put the socket into the steering program's XSKMAP with
    /// [`crate::steer::Steering::set_socket`] to receive. The fill ring is filled here.
    pub fn new(iface: &str, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        cfg.validate()?;
        fn setting<E: std::error::Error + Send + Sync + 'static>(
            what: &'static str,
        ) -> impl FnOnce(E) -> XskError {
            move |e| XskError::Setting {
                what,
                source: Box::new(e),
            }
        }
        let ring = QueueSize::new(cfg.ring_size).map_err(setting("ring size"))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(setting("frame size"))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(setting("UMEM"))?;
        let count = NonZeroU32::new(cfg.frame_count).ok_or(XskError::Size {
            what: "frame_count",
            value: 0,
            rule: "at least 16".into(),
        })?;
        let (umem, mut descs) =
            Umem::new(umem_cfg, count, cfg.huge_pages).map_err(|e| XskError::Umem {
                frames: cfg.frame_count,
                frame_size: cfg.frame_size,
                source: Box::new(e),
            })?;

        let mode = match cfg.bind {
            BindMode::Auto => BindFlags::empty(),
            BindMode::Copy => BindFlags::XDP_COPY,
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | mode)
            .build();
        let if_name: Interface = iface.parse().map_err(setting("interface name"))?;
        let bind_err = |source: Box<dyn std::error::Error + Send + Sync>| XskError::Bind {
            iface: iface.to_string(),
            queue,
            source,
        };
        // Safety: the UMEM was created just above and is used by this socket only, so the
        // shared-UMEM requirement of Socket::new does not arise.
        let (tx, rx, rings) = unsafe { Socket::new(sock_cfg, &umem, &if_name, queue) }
            .map_err(|e| bind_err(Box::new(e)))?;
        let (fq, cq) = rings.ok_or_else(|| XskError::SharedUmem {
            iface: iface.to_string(),
            queue,
        })?;

        let tx_free = descs.split_off(cfg.rx_frames() as usize);
        let fd = rx.fd().as_raw_fd();
        let kick_budget = set_tx_budget(fd, cfg.ring_size);
        let mut sock = XskSocket {
            fq,
            cq,
            rx,
            tx,
            umem,
            tx_free,
            fill_pending: descs,
            scratch: vec![FrameDesc::default(); cfg.batch as usize],
            tx_in_flight: 0,
            batch: cfg.batch as usize,
            kick_budget,
            busy_poll: false,
            frame_cap: cfg.max_frame_len(),
            iface: iface.to_string(),
            queue,
            fd,
            _not_sync: PhantomData,
        };
        sock.refill();
        Ok(sock)
    }

    /// The interface this socket is bound to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The largest frame one UMEM frame carries.
    pub fn frame_capacity(&self) -> usize {
        self.frame_cap
    }

    /// Most descriptors one `recv_batch` / `send_batch` call handles.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Frames one tx kick moves in copy mode (32 unless the kernel took a larger budget).
    pub fn kick_budget(&self) -> u32 {
        self.kick_budget
    }

    /// Busy-poll mode: the socket asks the kernel to prefer busy polling
    /// (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` 20 us, `SO_BUSY_POLL_BUDGET` one batch: NAPI
    /// runs in this thread's syscalls instead of softirq, on NICs whose driver supports it),
    /// and a receive that finds nothing drives the queue with a non-blocking `recvfrom`.
    /// The options are best effort (a kernel or device without them keeps its interrupts);
    /// returns whether all three were taken. The caller polls instead of sleeping.
    pub fn set_busy_poll(&mut self) -> bool {
        self.busy_poll = true;
        let batch = self.batch.min(u16::MAX as usize) as libc::c_int;
        let mut ok = true;
        for (name, what, v) in [
            (SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", 1),
            (libc::SO_BUSY_POLL, "SO_BUSY_POLL", BUSY_POLL_US),
            (SO_BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET", batch),
        ] {
            if let Err(e) = setsockopt_int(self.fd, libc::SOL_SOCKET, name, v) {
                tracing::debug!(iface = %self.iface, queue = self.queue, "{what}: {e}");
                ok = false;
            }
        }
        ok
    }

    /// Whether [`set_busy_poll`](Self::set_busy_poll) was called.
    pub fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    /// Frames available to [`send_batch`](Self::send_batch) right now (before reclaiming).
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// Frames handed to the kernel for transmission and not completed yet.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_in_flight
    }

    /// Receives up to one batch, calling `f` on each frame's bytes in the UMEM, in ring order.
    ///
    /// Returns the number of frames handled (0 when none were waiting). The frames go back
    /// to the fill ring as soon as `f` is done with them. Does not block: see
    /// [`wait_rx`](Self::wait_rx).
    pub fn recv_batch(&mut self, mut f: impl FnMut(&mut [u8])) -> usize {
        self.refill();
        let n = {
            let batch = self.batch;
            // Safety: the descriptors written into scratch come from this socket's rx ring,
            // so they describe frames of self.umem that the kernel has handed back to us.
            unsafe { self.rx.consume(&mut self.scratch[..batch]) }
        };
        if n == 0 {
            self.wake_fill();
            self.busy_kick();
            return 0;
        }
        for d in &mut self.scratch[..n] {
            // Safety: d came from the rx ring of this socket, so it is a frame of self.umem;
            // user space owns it until it is put on the fill ring below, and nothing else
            // reads or writes it meanwhile (frames are opened in place).
            let mut data = unsafe { self.umem.data_mut(d) };
            f(data.contents_mut());
        }
        self.fill_pending.extend_from_slice(&self.scratch[..n]);
        self.refill();
        n
    }

    /// Waits up to `timeout` for received frames; true when some are waiting.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<bool, XskError> {
        if self.rx.nb_avail(1) > 0 {
            return Ok(true);
        }
        self.refill();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        self.rx.poll(ms).map_err(|e| self.io_err(e))
    }

    /// Builds and transmits up to `n` frames in place.
    ///
    /// For each frame, `build(i, buf)` writes frame `i` of this call (Ethernet header
    /// onwards) into `buf`, a UMEM frame of [`frame_capacity`](Self::frame_capacity)
    /// bytes that still holds whatever it carried last, and returns its length; returning 0
    /// stops the batch (that frame is not sent). Returns how many frames were queued: fewer
    /// than `n` when the tx ring or the free frames ran short. Completed frames are
    /// reclaimed first, and the kernel is woken whenever it asks to be.
    pub fn send_batch(
        &mut self,
        n: usize,
        mut build: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        self.reclaim();
        let want = n.min(self.batch).min(self.tx_free.len());
        let k = if want == 0 {
            0
        } else {
            want.min(self.tx.nb_free(want as u32) as usize)
        };
        let mut built = 0;
        for i in 0..k {
            let mut d = self.tx_free.pop().expect("k <= tx_free.len()");
            // Safety: d is a frame of self.umem held in tx_free, so neither the kernel nor
            // any other view of the UMEM touches it until it is produced on the tx ring.
            let mut data = unsafe { self.umem.data_mut(&mut d) };
            data.cursor().set_pos(self.frame_cap);
            let len = build(i, data.contents_mut()).min(self.frame_cap);
            data.cursor().set_pos(len);
            if len == 0 {
                self.tx_free.push(d);
                break;
            }
            self.scratch[built] = d;
            built += 1;
        }
        if built > 0 {
            // Safety: every descriptor in scratch[..built] is a frame of self.umem owned by
            // user space (taken from tx_free); produce hands them to the kernel, which
            // returns them through the completion ring. built <= nb_free, so all go.
            let sent = unsafe { self.tx.produce(&self.scratch[..built]) };
            debug_assert_eq!(sent, built);
            self.tx_in_flight += sent;
        }
        self.wake_tx();
        built
    }

    /// Takes up to one batch of received frames off the rx ring without giving them back:
    /// `f` sees each as a [`LentFrame`] (its bytes stay in the UMEM) and must hand every one
    /// back through [`rx_return`](Self::rx_return) once done with it. The fill ring is
    /// topped up first with what was returned. Returns how many frames were lent.
    pub fn rx_lend(&mut self, max: usize, mut f: impl FnMut(LentFrame)) -> usize {
        self.refill();
        let n = {
            let k = max.min(self.batch);
            // Safety: the descriptors come from this socket's rx ring: frames of self.umem
            // the kernel handed back to user space.
            unsafe { self.rx.consume(&mut self.scratch[..k]) }
        };
        if n == 0 {
            self.wake_fill();
            self.busy_kick();
            return 0;
        }
        for d in &self.scratch[..n] {
            // Safety: d is a received frame of self.umem owned by user space until it is
            // returned (rx_return); the pointer stays valid while the UMEM lives.
            let data = unsafe { self.umem.data(d) };
            let bytes = data.contents();
            f(LentFrame {
                desc: *d,
                ptr: bytes.as_ptr() as *mut u8,
                len: bytes.len(),
                owner: self.fd,
            });
        }
        n
    }

    /// Gives back a frame lent by [`rx_lend`](Self::rx_lend): it goes to the fill ring.
    pub fn rx_return(&mut self, f: LentFrame) {
        debug_assert_eq!(f.owner, self.fd, "frame of another socket");
        self.fill_pending.push(f.desc);
    }

    /// Puts returned frames on the fill ring now (also done by `rx_lend`).
    pub fn rx_refill(&mut self) {
        self.refill();
    }

    /// Lends one free transmit frame (completions are reclaimed first): `len()` is the
    /// frame's capacity. Build the frame in it, then [`tx_submit`](Self::tx_submit) it, or
    /// give it back unused with [`tx_unlend`](Self::tx_unlend).
    pub fn tx_lend(&mut self) -> Option<LentFrame> {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        let mut d = self.tx_free.pop()?;
        // Safety: d is a frame of self.umem held in tx_free: no one else touches it until it
        // is produced on the tx ring.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        data.cursor().set_pos(self.frame_cap);
        let ptr = data.contents_mut().as_mut_ptr();
        Some(LentFrame {
            desc: d,
            ptr,
            len: self.frame_cap,
            owner: self.fd,
        })
    }

    /// Returns an unused lent transmit frame.
    pub fn tx_unlend(&mut self, f: LentFrame) {
        debug_assert_eq!(f.owner, self.fd, "frame of another socket");
        self.tx_free.push(f.desc);
    }

    /// Puts built frames (`(frame, length)`) on the tx ring, in order, as many as it has
    /// room for, and wakes the kernel when it asks. Returns how many went; the caller keeps
    /// the rest for later.
    pub fn tx_submit(&mut self, frames: &[(LentFrame, usize)]) -> usize {
        self.reclaim();
        let k = frames.len().min(self.batch);
        let k = if k == 0 {
            0
        } else {
            k.min(self.tx.nb_free(k as u32) as usize)
        };
        for (i, (f, len)) in frames[..k].iter().enumerate() {
            debug_assert_eq!(f.owner, self.fd, "frame of another socket");
            let mut d = f.desc;
            // Safety: d is a lent frame of self.umem; its builder is done with it (it handed
            // it back), so this is the only view while the length is set.
            let mut data = unsafe { self.umem.data_mut(&mut d) };
            data.cursor().set_pos((*len).min(self.frame_cap));
            self.scratch[i] = d;
        }
        if k > 0 {
            // Safety: scratch[..k] are frames of self.umem owned by user space; k <= nb_free.
            let sent = unsafe { self.tx.produce(&self.scratch[..k]) };
            debug_assert_eq!(sent, k);
            self.tx_in_flight += sent;
        }
        self.wake_tx();
        k
    }

    /// Reclaims completions now; returns the frames still in flight.
    pub fn tx_reclaim(&mut self) -> usize {
        self.reclaim();
        self.tx_in_flight
    }

    /// Frames waiting on the rx ring (up to `max`).
    pub fn rx_ready(&mut self, max: u32) -> u32 {
        self.rx.nb_avail(max)
    }

    /// Kicks transmission and reclaims completions until nothing is in flight or
    /// `timeout` passes; returns the frames still in flight (0 when all went out).
    pub fn flush(&mut self, timeout: Duration) -> usize {
        let until = Instant::now() + timeout;
        loop {
            self.reclaim();
            if self.tx_in_flight == 0 || Instant::now() >= until {
                return self.tx_in_flight;
            }
            self.wake_tx_always();
            std::thread::yield_now();
        }
    }

    /// The kernel's XDP_STATISTICS for this socket.
    pub fn stats(&self) -> Result<XskStats, XskError> {
        let s = self.rx.fd().xdp_statistics().map_err(|e| self.io_err(e))?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            fill_ring_empty: s.rx_fill_ring_empty_descs(),
            tx_ring_empty: s.tx_ring_empty_descs(),
        })
    }

    /// Moves completed tx frames back to the free list.
    fn reclaim(&mut self) {
        loop {
            // Safety: the completion ring only returns frames of self.umem that this socket
            // produced on its tx ring; from here on user space owns them again.
            let n = unsafe { self.cq.consume(&mut self.scratch) };
            if n == 0 {
                return;
            }
            self.tx_free.extend_from_slice(&self.scratch[..n]);
            self.tx_in_flight = self.tx_in_flight.saturating_sub(n);
        }
    }

    /// Hands pending frames to the fill ring: never more than it has free.
    fn refill(&mut self) {
        if self.fill_pending.is_empty() {
            return;
        }
        let free = self.fq.nb_free(self.fill_pending.len() as u32) as usize;
        let k = free.min(self.fill_pending.len());
        if k == 0 {
            return;
        }
        let start = self.fill_pending.len() - k;
        // Safety: fill_pending holds frames of self.umem that user space owns (never
        // produced elsewhere); after this the kernel owns them until they come back on rx.
        let n = unsafe { self.fq.produce(&self.fill_pending[start..]) };
        debug_assert_eq!(n, k);
        self.fill_pending.truncate(self.fill_pending.len() - n);
        self.wake_fill();
    }

    /// Busy-poll mode: a non-blocking `recvfrom` runs the queue's NAPI in this thread (what
    /// libxdp's samples do); errors only mean "nothing now".
    fn busy_kick(&mut self) {
        if self.busy_poll {
            // Safety: a zero-length receive into no buffer on this socket's own descriptor.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
        }
    }

    fn wake_fill(&mut self) {
        if self.fq.needs_wakeup() {
            // A zero-timeout poll is the wakeup for the fill ring; errors only mean "later".
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    fn wake_tx(&mut self) {
        if self.tx.needs_wakeup() {
            self.wake_tx_always();
        }
    }

    fn wake_tx_always(&mut self) {
        // sendto() kicks copy-mode transmission; EAGAIN/EBUSY/ENOBUFS are swallowed by
        // xsk-rs and only mean "try again".
        if let Err(e) = self.tx.wakeup() {
            tracing::debug!(iface = %self.iface, queue = self.queue, "tx wakeup: {e}");
        }
    }

    fn io_err(&self, source: std::io::Error) -> XskError {
        XskError::Io {
            iface: self.iface.clone(),
            queue: self.queue,
            source,
        }
    }
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, 6.17+): how many frames one copy-mode tx kick
/// moves (the kernel's default is 32, its TX_BATCH_SIZE).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The kernel's default tx kick budget.
const TX_BATCH_SIZE: u32 = 32;
/// linux/socket.h (5.11+); not in every libc release.
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
/// Microseconds a busy-polling syscall spins on the device queue.
const BUSY_POLL_US: libc::c_int = 20;

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // Safety: fd is an open socket owned by the caller; the option value is a c_int that
    // lives across the call, with its size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to move up to `ring` frames per tx kick (one `sendto` per batch instead
/// of one per 32 frames in copy mode). Older kernels refuse the option: they keep 32.
fn set_tx_budget(fd: RawFd, ring: u32) -> u32 {
    if ring <= TX_BATCH_SIZE {
        return TX_BATCH_SIZE;
    }
    match setsockopt_int(
        fd,
        libc::SOL_XDP,
        XDP_MAX_TX_SKB_BUDGET,
        ring as libc::c_int,
    ) {
        Ok(()) => ring,
        Err(e) => {
            tracing::debug!("XDP_MAX_TX_SKB_BUDGET {ring}: {e} (the kernel keeps {TX_BATCH_SIZE})");
            TX_BATCH_SIZE
        }
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // Safety: self.fd is the socket's own descriptor, owned by self.rx (xsk-rs closes it
        // when the socket drops), so it stays open for as long as this borrow of self lives.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

/// Waits until any of `socks` has received frames, or `timeout` passes (nanosecond
/// resolution: `ppoll`). Pending fill-ring frames are handed to the kernel first. Returns
/// true when some socket is readable.
pub fn wait_any(socks: &mut [XskSocket], timeout: Duration) -> Result<bool, XskError> {
    use nix::poll::{ppoll, PollFd, PollFlags};
    for s in socks.iter_mut() {
        if s.rx.nb_avail(1) > 0 {
            return Ok(true);
        }
        s.refill();
    }
    if timeout.is_zero() || socks.is_empty() {
        return Ok(false);
    }
    if socks[0].busy_poll {
        return Ok(spin_any(socks, timeout));
    }
    let mut fds: Vec<PollFd<'_>> = socks
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();
    let ts = nix::sys::time::TimeSpec::from_duration(timeout);
    match ppoll(&mut fds, Some(ts), None) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(socks[0].io_err(e.into())),
    }
}

/// Busy-poll mode's wait: poll the rx rings (driving each queue with a non-blocking
/// receive) until one has frames or `timeout` passes; never sleeps.
fn spin_any(socks: &mut [XskSocket], timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        for _ in 0..64 {
            for s in socks.iter_mut() {
                if s.rx.nb_avail(1) > 0 {
                    return true;
                }
            }
            std::hint::spin_loop();
        }
        for s in socks.iter_mut() {
            s.busy_kick();
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

// Compile-time check of the threading contract: movable to a worker, not shareable.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<XskSocket>();
};
