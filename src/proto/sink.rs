//! Where received bytes go: the [`FileSink`] trait, an in-memory sink for tests, and name
//! sanitising. The sink for real output directories (mmap, fsync, rename) is
//! [`crate::fsink::MmapSink`], outside the protocol: nothing here does I/O.

use crate::blueprint::{apply, Transform};
use crate::wire::payload::{Attrs, EntryKind};

/// One output entry, as accepted: its sanitised relative name and size, what it is (a regular
/// file, a directory, a symbolic link), the attributes to apply and a link's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkFile {
    pub name: String,
    pub size: u64,
    pub kind: EntryKind,
    pub attrs: Option<Attrs>,
    /// A link's target (empty otherwise).
    pub target: String,
}

impl SinkFile {
    /// A regular file with no attributes.
    pub fn file(name: impl Into<String>, size: u64) -> Self {
        SinkFile {
            name: name.into(),
            size,
            kind: EntryKind::File,
            attrs: None,
            target: String::new(),
        }
    }
}

/// Why [`FileSink::finish`] did not create an entry (the session still succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("a symbolic link with an absolute target")]
    AbsoluteLink,
    #[error(
        "a symbolic link whose target climbs out of the received tree (or has `..` after a name)"
    )]
    LinkClimbsOut,
}

/// Whether a link named `name` (a sanitised manifest name) may point at `target`: the
/// target is relative, its `..` components all come first and never climb out of the
/// received tree the link belongs to (the top-level entry of its name: `t/a/l` may climb at
/// most to `t`), and the rest are plain names (`.` and empty components are ignored).
/// Stricter than rsync's `--safe-links`, which also admits `a/../b`: a `..` after a name
/// could step out through a link that resolves upwards (`c -> .`, then `c/c/../..`). Each
/// link this rule admits resolves inside its tree as long as the links it passes through
/// were admitted by it too.
pub fn link_check(name: &str, target: &str) -> Result<(), Skip> {
    if target.starts_with('/') {
        return Err(Skip::AbsoluteLink);
    }
    let depth = name.matches('/').count();
    let mut up = 0usize;
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return Err(Skip::LinkClimbsOut),
            ".." => up += 1,
            _ => named = true,
        }
    }
    // `depth` directories above the link; the top one is the received tree's root
    if up > depth.saturating_sub(1) {
        return Err(Skip::LinkClimbsOut);
    }
    Ok(())
}

/// A snapshot piece to apply: `len` bytes of the snapshot at `snap_off` through `op`.
/// The receiver has checked the bounds against the snapshot and the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapSeg {
    pub op: Transform,
    pub imm: u8,
    pub snap_off: u64,
    pub len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("not enough free space: {need} bytes needed, {avail} available beyond the free-space reserve")]
    NoSpace { need: u64, avail: u64 },
    #[error("file #{0} would leave the output directory")]
    BadName(u32),
    #[error("file #{file}: `{name}` already exists in the output directory (pfs recv --overwrite replaces files, never directories)")]
    Exists { file: u32, name: String },
    #[error("sender directory {}: {reason}", dir.display())]
    BadSubdir {
        dir: std::path::PathBuf,
        reason: String,
    },
    #[error("no output file #{0}")]
    NoSuchFile(u32),
    #[error("{len} bytes at offset {off} lie outside output file #{file}")]
    OutOfRange { file: u32, off: u64, len: usize },
    #[error("file #{file}: a self copy reads bytes this output cannot show")]
    NoReadBack { file: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The receiver's output. Calls come in this order: `open` once, then writes (any order,
/// possibly overlapping with identical bytes), `hash` and `commit` per complete file, and
/// `discard` when the session fails (also on drop for real sinks).
pub trait FileSink {
    /// Prepare the outputs; check free space and names *before* allocating anything.
    fn open(&mut self, files: &[SinkFile]) -> Result<(), SinkError>;
    /// Put every file of this session under the sub-directory `sub` of the output (an
    /// authorized sender's `dir=`), before `open`. In-memory sinks have nothing to confine.
    fn confine_to(&mut self, _sub: &std::path::Path) -> Result<(), SinkError> {
        Ok(())
    }
    /// The authenticated sender's identity (before `open`): a sink that keeps resumable
    /// files resumes only that sender's.
    fn set_owner(&mut self, _owner: &str) {}
    /// The `len` bytes at `off` of `file`, to be written in place: the one primitive every
    /// write goes through ([`SinkError::OutOfRange`] past the file's end).
    fn span_mut(&mut self, file: u32, off: u64, len: usize) -> Result<&mut [u8], SinkError>;
    /// Apply a snapshot piece at `off` of `file` (through [`apply_segment`]).
    fn write_segment(
        &mut self,
        file: u32,
        off: u64,
        seg: SnapSeg,
        snapshot: &[u8],
    ) -> Result<(), SinkError> {
        apply_segment(self.span_mut(file, off, seg.len as usize)?, seg, snapshot);
        Ok(())
    }
    /// Apply an approximate cover at `off` of `file`: the snapshot bytes at `snap_off` plus
    /// `diff` (one difference byte per output byte, through [`apply::add_bytes`]).
    fn write_cover(
        &mut self,
        file: u32,
        off: u64,
        snap_off: u64,
        diff: &[u8],
        snapshot: &[u8],
    ) -> Result<(), SinkError> {
        let s = usize::try_from(snap_off).unwrap_or(usize::MAX);
        let src = s
            .checked_add(diff.len())
            .and_then(|e| snapshot.get(s..e))
            .ok_or(SinkError::OutOfRange {
                file,
                off,
                len: diff.len(),
            })?;
        apply::add_bytes(src, diff, self.span_mut(file, off, diff.len())?);
        Ok(())
    }
    /// Write raw bytes at `off` of `file`.
    fn write_raw(&mut self, file: u32, off: u64, bytes: &[u8]) -> Result<(), SinkError> {
        self.span_mut(file, off, bytes.len())?
            .copy_from_slice(bytes);
        Ok(())
    }
    /// BLAKE3 of the file's current contents.
    fn hash(&mut self, file: u32) -> Result<[u8; 32], SinkError>;
    /// The file's current contents, if the sink can show them (the receiver then hashes each
    /// file incrementally, in order, as its contiguous prefix completes; otherwise it calls
    /// `hash` once at the end).
    ///
    /// A sink that shows them lets the receiver's hashing thread read the file's final bytes
    /// (below what `prefix_final` reported, and the range handed off with it) while the
    /// receiver writes others: its memory for a file must stay where it is until `commit`
    /// or `discard` of the file (or the sink's drop), and `span_mut` must hand out exactly
    /// the range asked for, never a `&mut` over the whole file.
    fn contents(&self, _file: u32) -> Option<&[u8]> {
        None
    }
    /// Bytes `[0, upto)` of `file` are final (handed to the file's hash, which may still be
    /// reading them on the hashing thread; never written again): a sink may start writing
    /// them back now, so that `commit` has less left to wait for.
    fn prefix_final(&mut self, _file: u32, _upto: u64) {}
    /// Make the file durable under its final name.
    fn commit(&mut self, file: u32) -> Result<(), SinkError>;
    /// Every regular file is committed: create the session's links, then apply what is
    /// still due (links' mtimes, directories' permission bits and mtimes, deepest first).
    /// Returns the entries not created, each with why. Called once, before the receiver
    /// reports the session done; sinks without a tree have nothing to do.
    fn finish(&mut self) -> Result<Vec<(u32, Skip)>, SinkError> {
        Ok(Vec::new())
    }
    /// Remove every output not yet committed (a sink that keeps resumable temporary files
    /// keeps those with their journal instead).
    fn discard(&mut self);
    /// What the sink already holds of `file` (after `open`): a final file of that name and
    /// size, or a resumable temporary file's durable prefix, with the BLAKE3 state over
    /// those bytes. `None` (the default): nothing, the file starts over.
    fn held(&mut self, _file: u32) -> Option<Held> {
        None
    }
    /// The sender's choice for a file `held` offered: continue after the `at` bytes held
    /// (the offer's length; the file's size keeps the final file as it is), or start over
    /// (`at` = 0, the held bytes are void).
    fn adopt(&mut self, file: u32, at: u64) -> Result<(), SinkError> {
        match at {
            0 => Ok(()),
            _ => Err(SinkError::OutOfRange {
                file,
                off: at,
                len: 0,
            }),
        }
    }
}

/// What a sink holds of one file ([`FileSink::held`]).
#[derive(Debug, Clone)]
pub struct Held {
    pub kind: crate::wire::held::HeldKind,
    /// Bytes held: the file's size (whole) or the durable prefix.
    pub len: u64,
    /// BLAKE3 state after those bytes: the receiver continues from it, so the kept prefix
    /// is not read again.
    pub hasher: blake3::Hasher,
}

impl Held {
    pub fn hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// Apply `seg` from `snapshot` into `dst` (which is `seg.len` bytes) with the apply kernels:
/// the one place a receiver turns descriptors into bytes.
#[inline]
pub fn apply_segment(dst: &mut [u8], seg: SnapSeg, snapshot: &[u8]) {
    let s = seg.snap_off as usize;
    apply::transform(seg.op, seg.imm, &snapshot[s..s + seg.len as usize], dst);
}

/// Check a manifest name: a relative `/`-separated path of normal components. The one rule
/// for every path a peer or a policy names below the output directory (manifest names, the
/// senders' `dir=` sub-directories). Refused: empty
/// names, absolute paths, empty, `.` or `..` components, NUL, backslashes and other control
/// characters, more than 32 levels. Returns the name as it will be used.
pub fn sanitize_name(name: &str) -> Option<String> {
    if name.is_empty() || name.starts_with('/') || name.len() > crate::wire::payload::MAX_NAME_LEN {
        return None;
    }
    let mut parts = 0;
    for c in name.split('/') {
        parts += 1;
        if c.is_empty()
            || c == "."
            || c == ".."
            || c.chars().any(|ch| ch.is_control() || ch == '\\')
            || parts > 32
        {
            return None;
        }
    }
    Some(name.to_owned())
}

/// An in-memory sink (tests, and `--dry-run` style uses).
#[derive(Debug, Default)]
pub struct MemSink {
    pub files: Vec<SinkFile>,
    bufs: Vec<Vec<u8>>,
    committed: Vec<bool>,
    /// Refuse `open` if the session is larger than this (simulates free space).
    pub free_space: Option<u64>,
    pub opened: bool,
    /// What this sink holds before the session (resume tests): by name, a whole file or a
    /// prefix of one; `open` puts those bytes in place and `held` offers them.
    pub preheld: Vec<(String, crate::wire::held::HeldKind, Vec<u8>)>,
    offered: Vec<Option<(crate::wire::held::HeldKind, u64)>>,
    /// `adopt` calls: (file, at).
    pub adopted: Vec<(u32, u64)>,
    /// Touch every page of the buffers at `open`, so that no page fault is left for the
    /// writes (benchmarks: the receiver's per-frame cost without first-touch faults).
    pub populate: bool,
}

impl MemSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// The contents of a committed file.
    pub fn committed(&self, file: usize) -> Option<&[u8]> {
        self.committed
            .get(file)
            .copied()
            .unwrap_or(false)
            .then(|| &self.bufs[file][..])
    }

    /// Number of files committed.
    pub fn committed_count(&self) -> usize {
        self.committed.iter().filter(|c| **c).count()
    }
}

impl FileSink for MemSink {
    fn open(&mut self, files: &[SinkFile]) -> Result<(), SinkError> {
        let need: u64 = files.iter().map(|f| f.size).sum();
        if let Some(avail) = self.free_space {
            if need > avail {
                return Err(SinkError::NoSpace { need, avail });
            }
        }
        self.files = files.to_vec();
        self.bufs = files.iter().map(|f| vec![0u8; f.size as usize]).collect();
        if self.populate {
            for b in &mut self.bufs {
                // A zeroed allocation may be untouched pages: write one byte per page.
                for i in (0..b.len()).step_by(4096) {
                    // black_box keeps the store of a zero into a zeroed buffer.
                    b[i] = std::hint::black_box(0);
                }
            }
        }
        self.committed = vec![false; files.len()];
        self.offered = vec![None; files.len()];
        for (i, f) in files.iter().enumerate() {
            let held = self
                .preheld
                .iter()
                .find(|(n, _, b)| *n == f.name && !b.is_empty() && b.len() as u64 <= f.size);
            if let Some((_, kind, b)) = held {
                self.bufs[i][..b.len()].copy_from_slice(b);
                self.offered[i] = Some((*kind, b.len() as u64));
            }
        }
        self.opened = true;
        Ok(())
    }

    fn held(&mut self, file: u32) -> Option<Held> {
        let (kind, len) = (*self.offered.get(file as usize)?)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.bufs[file as usize][..len as usize]);
        Some(Held { kind, len, hasher })
    }

    fn adopt(&mut self, file: u32, at: u64) -> Result<(), SinkError> {
        let offered = self.offered.get(file as usize).copied().flatten();
        self.adopted.push((file, at));
        match offered {
            _ if at == 0 => Ok(()),
            Some((_, len)) if len == at => Ok(()),
            _ => Err(SinkError::OutOfRange {
                file,
                off: at,
                len: 0,
            }),
        }
    }

    #[allow(unsafe_code)]
    fn span_mut(&mut self, file: u32, off: u64, len: usize) -> Result<&mut [u8], SinkError> {
        let b = self
            .bufs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        let start = usize::try_from(off)
            .ok()
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= b.len()))
            .ok_or(SinkError::OutOfRange { file, off, len })?;
        // Safety: `[start, start + len)` lies inside the buffer (checked above), which this
        // borrow of `self` keeps alive and unaliased by other writers. Built from the raw
        // pointer so that no `&mut` covers the rest of the buffer, whose final bytes the
        // hashing thread may be reading (`FileSink::contents`).
        Ok(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().add(start), len) })
    }

    fn hash(&mut self, file: u32) -> Result<[u8; 32], SinkError> {
        Ok(*blake3::hash(&self.bufs[file as usize]).as_bytes())
    }

    fn contents(&self, file: u32) -> Option<&[u8]> {
        self.bufs.get(file as usize).map(|b| &b[..])
    }

    fn commit(&mut self, file: u32) -> Result<(), SinkError> {
        self.committed[file as usize] = true;
        Ok(())
    }

    fn discard(&mut self) {
        for (i, c) in self.committed.iter().enumerate() {
            if !*c {
                self.bufs[i] = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_inside_their_tree_or_are_refused() {
        for (name, target) in [
            ("t/l", "f"),
            ("t/l", "./f"),
            ("t/a/l", "../f"),
            ("t/a/b/l", "../../f"),
            ("t/a/l", "b/c/"),
            ("l", "x"),
        ] {
            assert_eq!(link_check(name, target), Ok(()), "{name} -> {target}");
        }
        for (name, target, why) in [
            ("t/l", "/etc/passwd", Skip::AbsoluteLink),
            ("t/l", "../x", Skip::LinkClimbsOut),
            ("t/a/l", "../../x", Skip::LinkClimbsOut),
            ("l", "..", Skip::LinkClimbsOut),
            ("t/a/l", "c/../../..", Skip::LinkClimbsOut),
            ("t/a/l", "c/..", Skip::LinkClimbsOut),
        ] {
            assert_eq!(link_check(name, target), Err(why), "{name} -> {target}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "a/b", "dir/file.txt", ".hidden", "a..b", "ünï/ç"] {
            assert_eq!(sanitize_name(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\0b",
            "a\nb",
        ] {
            assert_eq!(sanitize_name(bad), None, "{bad:?}");
        }
        assert_eq!(sanitize_name("d/".repeat(40).trim_end_matches('/')), None);
    }
}
