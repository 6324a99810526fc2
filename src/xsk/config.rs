//! [`XskConfig`]: how big the UMEM and the rings of one AF_XDP socket are.

use super::XskError;

/// How the socket binds: let the kernel choose, or force copy / zero-copy mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy otherwise (veth: copy).
    #[default]
    Auto,
    /// XDP_COPY.
    Copy,
    /// XDP_ZEROCOPY (fails on drivers without it).
    ZeroCopy,
}

/// UMEM and ring sizes of one AF_XDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame: a power of two, 2048 or 4096. The XDP headroom (256 B) comes
    /// off the front, so 2048 carries frames up to 1792 B and 4096 up to 3840 B.
    pub frame_size: u32,
    /// Frames in the UMEM: up to `ring_size` of them feed the fill ring, the rest transmit.
    pub frame_count: u32,
    /// Entries of each of the four rings (fill, completion, rx, tx): a power of two.
    pub ring_size: u32,
    /// Most descriptors handled by one `recv_batch` or `send_batch` call.
    pub batch: u32,
    /// Copy, zero-copy, or let the kernel decide.
    pub bind: BindMode,
    /// Back the UMEM with huge pages (needs /proc/sys/vm/nr_hugepages reserved).
    pub huge_pages: bool,
    /// The socket receives: half the UMEM (at most a ring) feeds the fill ring. False for
    /// a socket that only transmits (no program steers frames to it): every frame sends.
    pub receive: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 4096,
            frame_count: 4096,
            ring_size: 2048,
            batch: 64,
            bind: BindMode::Auto,
            huge_pages: false,
            receive: true,
        }
    }
}

impl XskConfig {
    /// Checks the sizes; the socket constructor calls this.
    pub fn validate(&self) -> Result<(), XskError> {
        let bad = |what, value: u32, rule: String| {
            Err(XskError::Size {
                what,
                value: value as u64,
                rule,
            })
        };
        if !(self.frame_size == 2048 || self.frame_size == 4096) {
            return bad("frame_size", self.frame_size, "2048 or 4096".into());
        }
        if !self.ring_size.is_power_of_two() || self.ring_size < 8 {
            return bad("ring_size", self.ring_size, "a power of two >= 8".into());
        }
        if self.frame_count < 2 * 8 || self.frame_count > (1 << 22) {
            return bad("frame_count", self.frame_count, "between 16 and 4M".into());
        }
        if self.batch == 0 || self.batch > self.ring_size {
            return bad(
                "batch",
                self.batch,
                format!("between 1 and ring_size {}", self.ring_size),
            );
        }
        Ok(())
    }

    /// Frames handed to the fill ring (receive side): half the UMEM, at most one ring;
    /// none for a socket that only transmits.
    pub fn rx_frames(&self) -> u32 {
        if !self.receive {
            return 0;
        }
        (self.frame_count / 2).min(self.ring_size)
    }

    /// Frames kept by user space for transmission: the rest of the UMEM.
    pub fn tx_frames(&self) -> u32 {
        self.frame_count - self.rx_frames()
    }

    /// The largest frame (Ethernet header to end of payload) one UMEM frame carries.
    pub fn max_frame_len(&self) -> usize {
        // XDP_PACKET_HEADROOM is 256; xsk-rs adds no frame headroom of its own here.
        (self.frame_size - 256) as usize
    }

    /// UMEM size in bytes.
    pub fn umem_bytes(&self) -> usize {
        self.frame_size as usize * self.frame_count as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = XskConfig::default();
        c.validate().unwrap();
        assert_eq!(c.rx_frames() + c.tx_frames(), c.frame_count);
        assert_eq!(c.rx_frames(), 2048);
        assert_eq!(c.max_frame_len(), 3840);
        assert_eq!(c.umem_bytes(), 16 << 20);
    }

    #[test]
    fn rejects_bad_sizes() {
        let d = XskConfig::default();
        for c in [
            XskConfig {
                frame_size: 3000,
                ..d
            },
            XskConfig {
                ring_size: 1000,
                ..d
            },
            XskConfig {
                frame_count: 4,
                ..d
            },
            XskConfig { batch: 0, ..d },
            XskConfig { batch: 4096, ..d },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn a_transmit_only_umem_gives_every_frame_to_transmission() {
        let c = XskConfig {
            receive: false,
            ..XskConfig::default()
        };
        c.validate().unwrap();
        assert_eq!(c.rx_frames(), 0);
        assert_eq!(c.tx_frames(), c.frame_count);
    }

    #[test]
    fn small_umem_splits_in_half() {
        let c = XskConfig {
            frame_count: 64,
            ring_size: 2048,
            ..XskConfig::default()
        };
        assert_eq!((c.rx_frames(), c.tx_frames()), (32, 32));
    }
}
