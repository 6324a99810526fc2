//! A stream's bytes on the sender ([`StreamBuf`]): appended block by block, read at any
//! position still held, and released below the receiver's cumulative acknowledgement.
//!
//! A streamed file's bytes used to be kept whole until the session ended (for repairs), in
//! one buffer the size of the file: a 64 MiB random file meant 64 MiB of fresh pages to
//! fault in and zero on the session thread (a fifth of its time in a profile,
//! docs/profile.md) and a sender whose memory grew with the file. Held in chunks instead,
//! the bytes the receiver has acknowledged go back to a [`ChunkPool`] and carry later
//! bytes: the sender holds what is in flight and what the producer has handed over ahead
//! of the wire, and a long stream reuses the same pages.

use std::collections::VecDeque;

/// Bytes per chunk of a growing stream.
pub const CHUNK: usize = 1 << 20;
/// Released chunks kept for reuse (beyond this they are freed).
const POOL_MAX: usize = 64;

/// Released chunks (empty, with their capacity) for the next bytes of any stream.
#[derive(Default)]
pub struct ChunkPool {
    free: Vec<Vec<u8>>,
}

impl ChunkPool {
    fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn give(&mut self, mut c: Vec<u8>) {
        if self.free.len() < POOL_MAX && c.capacity() == CHUNK {
            c.clear();
            self.free.push(c);
        }
    }

    /// Chunks waiting for reuse.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.len()
    }
}

/// The bytes of one stream: `[0, len)` pushed so far, `[released, len)` still held.
#[derive(Default)]
pub struct StreamBuf {
    /// Held chunks in order, each with the stream offset of its first byte; contiguous.
    chunks: VecDeque<(u64, Vec<u8>)>,
    len: u64,
    /// Bytes below this were released (never read again).
    released: u64,
}

impl StreamBuf {
    /// A stream whose bytes are all known already (a packed file), in one chunk.
    pub fn whole(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        let mut chunks = VecDeque::new();
        if len > 0 {
            chunks.push_back((0, bytes));
        }
        StreamBuf {
            chunks,
            len,
            released: 0,
        }
    }

    /// Bytes pushed so far (released ones included).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The first position still held.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Bytes held now (what this stream costs in memory, less chunk slack).
    pub fn held(&self) -> u64 {
        self.len - self.released
    }

    /// Append `bytes`, filling the last chunk before taking another from `pool`.
    pub fn push(&mut self, mut bytes: &[u8], pool: &mut ChunkPool) {
        while !bytes.is_empty() {
            let room = match self.chunks.back() {
                Some((_, c)) if c.capacity() == CHUNK => CHUNK - c.len(),
                _ => 0,
            };
            if room == 0 {
                self.chunks.push_back((self.len, pool.take()));
                continue;
            }
            let n = room.min(bytes.len());
            let (_, c) = self.chunks.back_mut().expect("a chunk with room");
            c.extend_from_slice(&bytes[..n]);
            self.len += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// The held bytes from `pos` on, up to `end` or the end of `pos`'s chunk, whichever
    /// comes first (so a range is read in one or more calls). Empty when `pos` was
    /// released or is not below both `end` and the pushed length.
    pub fn slice(&self, pos: u64, end: u64) -> &[u8] {
        let end = end.min(self.len);
        if pos < self.released || pos >= end {
            return &[];
        }
        let i = self.chunks.partition_point(|(s, _)| *s <= pos) - 1;
        let (s, c) = &self.chunks[i];
        let a = (pos - s) as usize;
        let b = ((end - s) as usize).min(c.len());
        &c[a..b]
    }

    /// Release the bytes below `upto` (at most what was pushed): whole chunks below it go
    /// back to `pool`.
    pub fn release(&mut self, upto: u64, pool: &mut ChunkPool) {
        let upto = upto.min(self.len);
        if upto <= self.released {
            return;
        }
        self.released = upto;
        while let Some((s, c)) = self.chunks.front() {
            if s + c.len() as u64 > upto {
                break;
            }
            // Wholly below `upto`: never read again (a later push starts a new chunk at
            // the pushed end, so the chunks stay contiguous).
            let (_, c) = self.chunks.pop_front().expect("front exists");
            pool.give(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &StreamBuf, mut s: u64, e: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while s < e {
            let part = b.slice(s, e);
            if part.is_empty() {
                break;
            }
            out.extend_from_slice(part);
            s += part.len() as u64;
        }
        out
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 131 % 251) as u8).collect()
    }

    /// Pushed in uneven blocks across chunk boundaries, any range reads back as pushed;
    /// a read stops at the pushed end.
    #[test]
    fn ranges_read_back_as_pushed_across_chunks() {
        let d = data(3 * CHUNK + 12345);
        let mut pool = ChunkPool::default();
        let mut b = StreamBuf::default();
        let mut at = 0;
        for step in [1, 7000, CHUNK - 7001, CHUNK + 3, 999_999, usize::MAX] {
            let n = step.min(d.len() - at);
            b.push(&d[at..at + n], &mut pool);
            at += n;
        }
        assert_eq!(b.len(), d.len() as u64);
        for (s, e) in [
            (0, d.len()),
            (CHUNK - 5, CHUNK + 5),
            (2 * CHUNK, 2 * CHUNK + 1),
            (17, 3 * CHUNK),
        ] {
            assert_eq!(read(&b, s as u64, e as u64), &d[s..e], "{s}..{e}");
        }
        assert_eq!(
            b.slice(CHUNK as u64 - 5, u64::MAX).len(),
            5,
            "a slice ends at its chunk"
        );
        assert!(b.slice(d.len() as u64, u64::MAX).is_empty());
        assert_eq!(read(&b, 10, u64::MAX), &d[10..]);
    }

    /// Released bytes read as nothing; what is above stays readable; whole chunks below go
    /// to the pool and carry the next bytes, which read back right.
    #[test]
    fn released_chunks_carry_later_bytes() {
        let d = data(6 * CHUNK);
        let mut pool = ChunkPool::default();
        let mut b = StreamBuf::default();
        b.push(&d[..3 * CHUNK], &mut pool);
        b.release(CHUNK as u64 + 10, &mut pool);
        assert_eq!(b.released(), CHUNK as u64 + 10);
        assert_eq!(pool.len(), 1, "only the first chunk is wholly below");
        assert!(b.slice(5, u64::MAX).is_empty());
        assert!(b.slice(CHUNK as u64 + 9, u64::MAX).is_empty());
        let at = CHUNK as u64 + 10;
        assert_eq!(read(&b, at, 3 * CHUNK as u64), &d[at as usize..3 * CHUNK]);
        b.push(&d[3 * CHUNK..], &mut pool);
        assert_eq!(pool.len(), 0, "the released chunk was taken again");
        assert_eq!(read(&b, at, u64::MAX), &d[at as usize..]);
        // Beyond the pushed length: only what was pushed; a second, lower release: nothing.
        b.release(u64::MAX, &mut pool);
        assert_eq!(b.held(), 0);
        assert_eq!(b.len(), d.len() as u64);
        b.release(3, &mut pool);
        assert_eq!(b.released(), d.len() as u64);
        assert!(pool.len() >= 5);
    }

    /// A whole stream (a packed file) is one chunk: read anywhere, released at once when
    /// acknowledged, and not put in the pool (its size is not a chunk's).
    #[test]
    fn a_whole_stream_reads_and_releases() {
        let d = data(CHUNK + 77);
        let mut pool = ChunkPool::default();
        let mut b = StreamBuf::whole(d.clone());
        assert_eq!(read(&b, 0, u64::MAX), d);
        b.release(100, &mut pool);
        assert_eq!(read(&b, 100, u64::MAX), &d[100..]);
        b.release(d.len() as u64, &mut pool);
        assert_eq!(pool.len(), 0);
        assert_eq!(StreamBuf::whole(Vec::new()).len(), 0);
    }
}
