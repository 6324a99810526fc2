//! Large in-memory byte buffers on transparent huge pages: a buffer that grows to tens of
//! MiB (a streamed file's bytes on the sender, kept for retransmission) otherwise takes one
//! page fault per 4 KiB on first touch, which profiles showed as a fifth of the sender's
//! session thread (docs/profile.md, "AF_XDP data path").
#![allow(unsafe_code)]

/// Below this a buffer stays on normal pages (no 2 MiB range inside it to advise).
const MIN_HUGE: usize = 4 << 20;
/// The most capacity reserved up front (address space only; pages come on first touch).
/// A larger buffer grows past it like any `Vec` (`mremap` keeps the advice).
const MAX_RESERVE: usize = 1 << 30;
/// Transparent huge page size on x86-64.
const HUGE: usize = 2 << 20;

/// An empty `Vec` with room for `expected` bytes (at most [`MAX_RESERVE`]) whose memory is
/// advised `MADV_HUGEPAGE`, so that the kernel backs it with 2 MiB pages where transparent
/// huge pages are enabled (`madvise` or `always`). Best effort: where the advice is refused
/// the buffer is an ordinary `Vec`.
pub fn huge_vec(expected: u64) -> Vec<u8> {
    let cap = usize::try_from(expected)
        .unwrap_or(usize::MAX)
        .min(MAX_RESERVE);
    if cap < MIN_HUGE {
        return Vec::new();
    }
    let v: Vec<u8> = Vec::with_capacity(cap);
    let start = v.as_ptr() as usize;
    let lo = start.next_multiple_of(HUGE);
    let hi = (start + v.capacity()) / HUGE * HUGE;
    if hi > lo {
        // Safety: [lo, hi) lies inside the Vec's own allocation (its capacity); the advice
        // changes how the kernel backs the range, never its contents or its mapping.
        let r = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        if r != 0 {
            tracing::debug!(
                "MADV_HUGEPAGE on a {} MiB buffer: {}",
                cap >> 20,
                std::io::Error::last_os_error()
            );
        }
    }
    v
}

/// A `Vec` with room for `n` bytes, on transparent huge pages when it is large
/// ([`huge_vec`]): for buffers about to be filled whole (a file read, a plan's spill, a packed
/// stream), whose 4 KiB first-touch faults otherwise cost more than the copy into them.
pub fn with_capacity(n: usize) -> Vec<u8> {
    let mut v = huge_vec(n as u64);
    v.reserve(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_stay_plain_and_large_ones_reserve() {
        assert_eq!(huge_vec(1000).capacity(), 0);
        let v = huge_vec(8 << 20);
        assert!(v.capacity() >= 8 << 20);
        assert!(v.is_empty());
        assert!(huge_vec(u64::MAX).capacity() >= MAX_RESERVE);
    }

    #[test]
    fn the_buffer_holds_what_is_written() {
        let mut v = huge_vec(6 << 20);
        let data: Vec<u8> = (0..(7u32 << 20)).map(|i| (i % 251) as u8).collect();
        v.extend_from_slice(&data);
        assert_eq!(v, data);
    }
}
