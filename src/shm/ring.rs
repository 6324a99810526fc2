//! A lock-free single-producer/single-consumer ring over shared memory.
//!
//! Layout (all `#[repr(C)]`, so two processes mapping the same bytes agree):
//! `[producer cursor | consumer cursor | meta]`, each on its own 128-byte line (two cache
//! lines, against the adjacent-line prefetcher), then `2^pow2` slots of `T`.
//!
//! Cursors are free-running `u64` counts (never wrap in practice); the slot of cursor `c` is
//! `c & mask`. The producer writes slots, then stores its cursor with `Release`; the consumer
//! loads it with `Acquire`, reads the slots, then stores its own cursor with `Release`, which
//! the producer loads with `Acquire` before reusing those slots. Each side keeps a *cached*
//! copy of the other's cursor and reloads it only when the cache says the ring is full (or
//! empty), so in steady state a batch costs one shared load at most and one store.
//!
//! Publishing and consuming are batched: [`Producer::try_publish_with`] writes `n` slots and
//! publishes them with a single store (all or nothing), so a frame of descriptors becomes
//! visible at once; [`Consumer::consume_frames`] takes whole frames only.
//!
//! One producer and one consumer per ring, also across processes: the handles are claimed
//! with a compare-and-swap on flags stored in the ring itself, so a second claim (from any
//! process) gets `None`.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One 128-byte line.
#[repr(C, align(128))]
struct Line<T>(T);

#[repr(C)]
struct Meta {
    magic: u64,
    pow2: u32,
    slot_size: u32,
    producer_claimed: AtomicU32,
    consumer_claimed: AtomicU32,
}

#[repr(C)]
struct Header {
    prod: Line<AtomicU64>,
    cons: Line<AtomicU64>,
    meta: Line<Meta>,
}

const MAGIC: u64 = u64::from_le_bytes(*b"pfsring1");

/// The largest ring: `2^32` slots.
pub const MAX_POW2: u32 = 32;

/// The ring could not be laid out in the given memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring memory must be aligned to 128 bytes")]
    Misaligned,
    #[error("ring of 2^{pow2} slots needs {need} bytes, got {got}")]
    TooSmall { pow2: u32, need: usize, got: usize },
    #[error("ring size 2^{0} is out of range (0..={MAX_POW2})")]
    Pow2(u32),
}

/// A handle to a ring laid out in borrowed memory. `Copy`: all shared state is atomic, and
/// slot access goes through the claimed [`Producer`] and [`Consumer`].
pub struct RingRef<'a, T> {
    hdr: *const Header,
    slots: *mut T,
    mask: u64,
    _mem: PhantomData<&'a mut [u8]>,
    _t: PhantomData<T>,
}

impl<T> Clone for RingRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RingRef<'_, T> {}

// Safety: the header is atomics only; slots are written only by the one claimed producer and
// read only by the one claimed consumer, ordered by the Release/Acquire cursor protocol.
unsafe impl<T: Copy + Send> Send for RingRef<'_, T> {}
// Safety: as above.
unsafe impl<T: Copy + Send> Sync for RingRef<'_, T> {}

impl<'a, T: Copy> RingRef<'a, T> {
    /// Bytes needed for a ring of `2^pow2` slots (a multiple of 128).
    pub fn bytes_for(pow2: u32) -> usize {
        let slots = (1usize << pow2) * std::mem::size_of::<T>();
        (std::mem::size_of::<Header>() + slots).next_multiple_of(128)
    }

    /// Lay out an empty ring of `2^pow2` slots at the start of `mem`, which must be 128-byte
    /// aligned and at least [`RingRef::bytes_for`] long. The borrow keeps every other safe
    /// use of those bytes away for `'a`; a forked child keeps its copy of the handle.
    pub fn init(mem: &'a mut [u8], pow2: u32) -> Result<Self, RingError> {
        if pow2 > MAX_POW2 {
            return Err(RingError::Pow2(pow2));
        }
        assert!(std::mem::align_of::<T>() <= 128, "slot type over-aligned");
        if !(mem.as_ptr() as usize).is_multiple_of(128) {
            return Err(RingError::Misaligned);
        }
        let need = Self::bytes_for(pow2);
        if mem.len() < need {
            return Err(RingError::TooSmall {
                pow2,
                need,
                got: mem.len(),
            });
        }
        let hdr = mem.as_mut_ptr().cast::<Header>();
        // Safety: `mem` is exclusively borrowed, 128-aligned and large enough for the header;
        // writing a fresh header initialises it whatever the bytes held.
        unsafe {
            hdr.write(Header {
                prod: Line(AtomicU64::new(0)),
                cons: Line(AtomicU64::new(0)),
                meta: Line(Meta {
                    magic: MAGIC,
                    pow2,
                    slot_size: std::mem::size_of::<T>() as u32,
                    producer_claimed: AtomicU32::new(0),
                    consumer_claimed: AtomicU32::new(0),
                }),
            })
        };
        // Safety: the slots start right after the header, inside `mem` (checked above), and
        // the header size is a multiple of 128, so they are aligned for `T`.
        let slots = unsafe { mem.as_mut_ptr().add(std::mem::size_of::<Header>()) }.cast::<T>();
        Ok(RingRef {
            hdr,
            slots,
            mask: (1u64 << pow2) - 1,
            _mem: PhantomData,
            _t: PhantomData,
        })
    }

    fn hdr(&self) -> &Header {
        // Safety: `hdr` points to the header written by `init`, alive for `'a`.
        unsafe { &*self.hdr }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Slots published so far (the producer cursor).
    pub fn published(&self) -> u64 {
        self.hdr().prod.0.load(Ordering::Acquire)
    }

    /// Slots consumed so far (the consumer cursor).
    pub fn consumed(&self) -> u64 {
        self.hdr().cons.0.load(Ordering::Acquire)
    }

    /// Claim the producer side; `None` if some process already holds it.
    pub fn take_producer(&self) -> Option<Producer<'a, T>> {
        let m = &self.hdr().meta.0;
        debug_assert_eq!(m.magic, MAGIC);
        m.producer_claimed
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let head = self.hdr().prod.0.load(Ordering::Acquire);
        Some(Producer {
            ring: *self,
            head,
            cached_cons: self.hdr().cons.0.load(Ordering::Acquire),
        })
    }

    /// Claim the consumer side; `None` if some process already holds it.
    pub fn take_consumer(&self) -> Option<Consumer<'a, T>> {
        let m = &self.hdr().meta.0;
        debug_assert_eq!(m.magic, MAGIC);
        m.consumer_claimed
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let tail = self.hdr().cons.0.load(Ordering::Acquire);
        Some(Consumer {
            ring: *self,
            tail,
            cached_prod: self.hdr().prod.0.load(Ordering::Acquire),
        })
    }
}

/// The producer side of a ring: writes slots, publishes them in batches.
pub struct Producer<'a, T: Copy> {
    ring: RingRef<'a, T>,
    /// Next cursor to write (equals the published cursor between calls).
    head: u64,
    /// Last seen consumer cursor.
    cached_cons: u64,
}

// Safety: the handle is the unique producer; moving it to another thread moves that role.
unsafe impl<T: Copy + Send> Send for Producer<'_, T> {}

impl<T: Copy> Producer<'_, T> {
    /// Free slots, reloading the consumer cursor.
    pub fn free(&mut self) -> u64 {
        self.cached_cons = self.ring.hdr().cons.0.load(Ordering::Acquire);
        self.ring.capacity() - (self.head - self.cached_cons)
    }

    /// Write `n` slots with `f(0..n)` and publish them with one store, if `n` slots are free;
    /// otherwise write nothing and return `false`. The consumer cursor is reloaded only when
    /// the cached copy says there is no room.
    #[inline]
    pub fn try_publish_with(&mut self, n: usize, mut f: impl FnMut(usize) -> T) -> bool {
        let n64 = n as u64;
        let cap = self.ring.capacity();
        if cap - (self.head - self.cached_cons) < n64 {
            self.cached_cons = self.ring.hdr().cons.0.load(Ordering::Acquire);
            if cap - (self.head - self.cached_cons) < n64 {
                return false;
            }
        }
        for i in 0..n {
            let idx = (self.head + i as u64) & self.ring.mask;
            // Safety: `idx <= mask`, inside the slot array. Slots `head..head+n` are free: the
            // consumer released them (its cursor, loaded with Acquire, is >= head+n-cap), and
            // only this unique producer writes slots.
            unsafe { self.ring.slots.add(idx as usize).write(f(i)) };
        }
        self.head += n64;
        self.ring.hdr().prod.0.store(self.head, Ordering::Release);
        true
    }

    /// Publish all of `items` as one batch, if they fit.
    pub fn try_publish(&mut self, items: &[T]) -> bool {
        self.try_publish_with(items.len(), |i| items[i])
    }

    /// The ring this producer writes.
    pub fn ring(&self) -> RingRef<'_, T> {
        self.ring
    }
}

impl<T: Copy> Drop for Producer<'_, T> {
    fn drop(&mut self) {
        self.ring
            .hdr()
            .meta
            .0
            .producer_claimed
            .store(0, Ordering::Release);
    }
}

/// The consumer side of a ring: reads published slots, releases them in batches.
pub struct Consumer<'a, T: Copy> {
    ring: RingRef<'a, T>,
    /// Next cursor to read (equals the consumed cursor between calls).
    tail: u64,
    /// Last seen producer cursor.
    cached_prod: u64,
}

// Safety: the handle is the unique consumer; moving it to another thread moves that role.
unsafe impl<T: Copy + Send> Send for Consumer<'_, T> {}

impl<T: Copy> Consumer<'_, T> {
    /// Published slots not yet consumed, reloading the producer cursor.
    pub fn available(&mut self) -> u64 {
        self.cached_prod = self.ring.hdr().prod.0.load(Ordering::Acquire);
        self.cached_prod - self.tail
    }

    /// Read up to `max` published slots (a multiple of `frame` of them: whole frames only),
    /// pass each to `f` in order, then release them with one store. Returns how many were
    /// consumed. The producer cursor is reloaded only when the cached copy has too few.
    #[inline]
    pub fn consume_frames(&mut self, frame: usize, max: usize, mut f: impl FnMut(T)) -> usize {
        let frame = frame.max(1) as u64;
        let max = max as u64 / frame * frame;
        let mut avail = (self.cached_prod - self.tail) / frame * frame;
        if avail < max {
            self.cached_prod = self.ring.hdr().prod.0.load(Ordering::Acquire);
            avail = (self.cached_prod - self.tail) / frame * frame;
        }
        let n = avail.min(max);
        for i in 0..n {
            let idx = (self.tail + i) & self.ring.mask;
            // Safety: `idx <= mask`; cursor `tail+i` < the producer cursor loaded with Acquire,
            // so the slot was fully written before publication, and the producer does not
            // overwrite it until this consumer's cursor passes it.
            f(unsafe { self.ring.slots.add(idx as usize).read() });
        }
        if n > 0 {
            self.tail += n;
            self.ring.hdr().cons.0.store(self.tail, Ordering::Release);
        }
        n as usize
    }

    /// Read up to `max` slots one by one (frames of 1).
    pub fn consume_with(&mut self, max: usize, f: impl FnMut(T)) -> usize {
        self.consume_frames(1, max, f)
    }

    /// The ring this consumer reads.
    pub fn ring(&self) -> RingRef<'_, T> {
        self.ring
    }
}

impl<T: Copy> Drop for Consumer<'_, T> {
    fn drop(&mut self) {
        self.ring
            .hdr()
            .meta
            .0
            .consumer_claimed
            .store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::region::SharedRegion;

    #[test]
    fn layout_is_three_lines_then_slots() {
        assert_eq!(std::mem::size_of::<Header>(), 384);
        assert_eq!(RingRef::<u64>::bytes_for(4), 384 + 128);
        assert_eq!(RingRef::<[u8; 16]>::bytes_for(0), 384 + 128);
    }

    #[test]
    fn init_checks_memory() {
        let mut r = SharedRegion::normal("pfs-ring-test", 4096, false).unwrap();
        let mem = r.bytes_mut();
        assert_eq!(
            RingRef::<u64>::init(&mut mem[8..], 2).err(),
            Some(RingError::Misaligned)
        );
        assert!(matches!(
            RingRef::<u64>::init(&mut mem[..600], 10).err(),
            Some(RingError::TooSmall { .. })
        ));
        assert_eq!(
            RingRef::<u64>::init(mem, 33).err(),
            Some(RingError::Pow2(33))
        );
    }

    #[test]
    fn claims_are_unique_until_dropped() {
        let mut r = SharedRegion::normal("pfs-ring-test", 4096, false).unwrap();
        let ring = RingRef::<u64>::init(r.bytes_mut(), 3).unwrap();
        let p = ring.take_producer().unwrap();
        assert!(ring.take_producer().is_none());
        let c = ring.take_consumer().unwrap();
        assert!(ring.take_consumer().is_none());
        drop(p);
        drop(c);
        assert!(ring.take_producer().is_some());
        assert!(ring.take_consumer().is_some());
    }
}
