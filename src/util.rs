//! Small shared helpers: atomic file output, human-readable sizes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file written under a temporary name beside its final path and renamed into place only by
/// [`AtomicFile::commit`]. Dropping it without committing removes the temporary file, so a
/// failed run never leaves a partial file under the final name.
pub struct AtomicFile {
    tmp: PathBuf,
    dst: PathBuf,
    file: Option<std::fs::File>,
}

impl AtomicFile {
    /// Create `.<name>.pfs-tmp-<pid>` beside `dst`.
    pub fn create(dst: &Path) -> std::io::Result<Self> {
        let dir = match dst.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dst
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{} has no file name", dst.display())))?;
        let tmp = dir.join(format!(
            ".{}.pfs-tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok(AtomicFile {
            tmp,
            dst: dst.to_path_buf(),
            file: Some(file),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("AtomicFile used after commit")
    }

    /// The open temporary file, shared (positioned reads and writes from several threads).
    pub fn get(&self) -> &std::fs::File {
        self.file.as_ref().expect("AtomicFile used after commit")
    }

    /// The temporary path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flush, fsync and rename over the final name.
    pub fn commit(mut self) -> std::io::Result<()> {
        let mut f = self.file.take().expect("AtomicFile committed twice");
        f.flush()?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dst)
    }
}

impl AtomicFile {
    /// Rename over the final name without flushing to disk first: for derived data whose
    /// reader checks what a crash may leave (an index's header and length).
    pub fn commit_unsynced(mut self) -> std::io::Result<()> {
        drop(self.file.take().expect("AtomicFile committed twice"));
        let res = std::fs::rename(&self.tmp, &self.dst);
        if res.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        res
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `dst` atomically.
pub fn write_atomic(dst: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_parts(dst, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts` (without concatenating them).
pub fn write_atomic_parts(dst: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(dst)?;
    for p in parts {
        f.file().write_all(p)?;
    }
    f.commit()
}

/// `1.23 MB` style (decimal units).
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse 64 hex digits into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// BLAKE3 of `data`, its two halves of the hash tree on two threads (and so on, `depth`
/// levels deep), merged with [`blake3::hazmat`]; equal to `blake3::hash(data)`.
pub fn parallel_blake3(data: &[u8], depth: u32) -> [u8; 32] {
    use blake3::hazmat::{
        left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt,
        Mode,
    };
    // below this a split buys nothing
    const MIN: usize = 1 << 20;
    if depth == 0 || data.len() < MIN {
        return *blake3::hash(data).as_bytes();
    }
    fn cv(data: &[u8], offset: u64, depth: u32) -> ChainingValue {
        if depth == 0 || data.len() < MIN {
            return blake3::Hasher::new()
                .set_input_offset(offset)
                .update(data)
                .finalize_non_root();
        }
        let l = left_subtree_len(data.len() as u64) as usize;
        let (a, b) = data.split_at(l);
        let (ca, cb) = std::thread::scope(|s| {
            let h = s.spawn(|| cv(b, offset + l as u64, depth - 1));
            (
                cv(a, offset, depth - 1),
                h.join().expect("hash thread panicked"),
            )
        });
        merge_subtrees_non_root(&ca, &cb, Mode::Hash)
    }
    let l = left_subtree_len(data.len() as u64) as usize;
    let (a, b) = data.split_at(l);
    let (ca, cb) = std::thread::scope(|s| {
        let h = s.spawn(|| cv(b, l as u64, depth - 1));
        (cv(a, 0, depth - 1), h.join().expect("hash thread panicked"))
    });
    *merge_subtrees_root(&ca, &cb, Mode::Hash).as_bytes()
}

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup
/// files on each call, which shows where it is asked per block or per small file.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The split depth of [`parallel_blake3`] for the cores this process may use.
pub fn hash_depth() -> u32 {
    usize::BITS - 1 - cores().leading_zeros()
}

// Zero and non-zero bytes, a word (8 bytes) at a time: difference streams are mostly zeros.

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is not zero (exact for every byte).
#[inline(always)]
fn nonzero_bits(w: u64) -> u64 {
    (((w & LO7) + LO7) | w) & HI
}

#[inline(always)]
fn word(d: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"))
}

/// The first index at or after `from` whose byte is not zero (`d.len()` if none).
pub fn next_nonzero(d: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 8 <= d.len() {
        let w = word(d, i);
        if w != 0 {
            return i + (w.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < d.len() && d[i] == 0 {
        i += 1;
    }
    i
}

/// The first index at or after `from` whose byte is zero (`d.len()` if none).
pub fn next_zero(d: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 8 <= d.len() {
        let z = !nonzero_bits(word(d, i)) & HI;
        if z != 0 {
            return i + (z.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < d.len() && d[i] != 0 {
        i += 1;
    }
    i
}

/// How many bytes of `d` are not zero.
pub fn count_nonzero(d: &[u8]) -> usize {
    let mut words = d.chunks_exact(8);
    let mut n = 0usize;
    for w in words.by_ref() {
        n += nonzero_bits(u64::from_le_bytes(w.try_into().expect("8 bytes"))).count_ones() as usize;
    }
    n + words.remainder().iter().filter(|&&b| b != 0).count()
}

#[cfg(test)]
mod zero_tests {
    use super::*;

    /// Against the byte-by-byte answers, on buffers of every length up to 40 with zeros and
    /// non-zero bytes (0x80 and 0x01 among them: the word trick's edge values) anywhere.
    #[test]
    fn zero_scans_equal_a_byte_by_byte_scan() {
        let vals = [0u8, 0, 0, 1, 0x80, 0x7f, 0xff];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 41) as usize;
            let d: Vec<u8> = (0..len)
                .map(|k| vals[((x >> (k % 60)) as usize + k * 3) % vals.len()])
                .collect();
            assert_eq!(
                count_nonzero(&d),
                d.iter().filter(|&&b| b != 0).count(),
                "{d:?}"
            );
            for from in 0..=len {
                let nz = d[from..]
                    .iter()
                    .position(|&b| b != 0)
                    .map_or(len, |p| from + p);
                let z = d[from..]
                    .iter()
                    .position(|&b| b == 0)
                    .map_or(len, |p| from + p);
                assert_eq!(next_nonzero(&d, from), nz, "{d:?} from {from}");
                assert_eq!(next_zero(&d, from), z, "{d:?} from {from}");
            }
        }
    }
}
