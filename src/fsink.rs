//! The file-system sink, the receiver's real output (the protocol in [`crate::proto`] sees only
//! the [`FileSink`] trait and does no I/O):  each file is created under a temporary name beside its final
//! name, sized and memory-mapped, written in place by the apply kernels, and renamed to its
//! final name only by `commit` (after the receiver checked its BLAKE3). Dropping the sink, or
//! `discard`, removes every temporary file not yet committed; a killed process leaves only
//! `.NAME.pfs-tmp-*` files, never a partial file under a final name.
//!
//! Safety of the output paths: names arrive sanitised (no absolute paths, no `..`); here every
//! directory on the way down from the output directory must be a real directory (a symlink is
//! refused, so nothing escapes through one), temporary files are created with `O_EXCL` and
//! `O_NOFOLLOW`, and the free space is checked before any file is created or sized.
#![allow(unsafe_code)]

use crate::proto::sink::{FileSink, SinkError, SinkFile};
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

struct Out {
    dst: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    map: Option<MmapMut>,
    size: u64,
    /// Bytes `[0, written_back)` were handed to early writeback (`prefix_final`).
    written_back: u64,
    /// Committed, or discarded: nothing left to clean up.
    settled: bool,
}

/// Writes received files into an output directory through memory maps.
pub struct MmapSink {
    root: PathBuf,
    tag: String,
    /// Bytes of free space to leave untouched (default 64 MiB).
    pub reserve: u64,
    /// Make each file durable (msync + fsync) before renaming it into place (default). Off,
    /// a crash right after the rename may leave a file whose pages never reached the disk;
    /// the BLAKE3 check has still passed on the bytes in memory.
    pub durable: bool,
    outs: Vec<Out>,
}

impl MmapSink {
    /// A sink writing under `out_dir`, which must exist. `tag` makes the temporary names
    /// unique (e.g. the session id in hex).
    pub fn new(out_dir: &Path, tag: &str) -> io::Result<Self> {
        let root = out_dir.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(MmapSink {
            root,
            tag: tag.to_owned(),
            durable: true,
            reserve: 64 << 20,
            outs: Vec::new(),
        })
    }

    /// The final path of file `i`.
    pub fn path(&self, i: usize) -> Option<&Path> {
        self.outs.get(i).map(|o| o.dst.as_path())
    }

    /// Free bytes on the output file system.
    pub fn free_space(&self) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Create the directories of `rel` under the root, refusing anything that is not a real
    /// directory on the way (symlinks included).
    fn safe_parent(&self, rel: &Path) -> Option<PathBuf> {
        let mut cur = self.root.clone();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                let Component::Normal(c) = c else {
                    return None;
                };
                cur.push(c);
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => return None,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        std::fs::create_dir(&cur).ok()?;
                    }
                    Err(_) => return None,
                }
            }
        }
        Some(cur)
    }

    fn open_one(&self, i: usize, f: &SinkFile) -> Result<Out, SinkError> {
        let rel = Path::new(&f.name);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(SinkError::BadName(i as u32));
        }
        let parent = self.safe_parent(rel).ok_or(SinkError::BadName(i as u32))?;
        let fname = rel.file_name().ok_or(SinkError::BadName(i as u32))?;
        let dst = parent.join(fname);
        if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
            return Err(SinkError::BadName(i as u32));
        }
        let tmp = parent.join(format!(
            ".{}.pfs-tmp-{}-{}",
            fname.to_string_lossy(),
            std::process::id(),
            self.tag
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let mut out = Out {
            dst,
            tmp,
            file: Some(file),
            map: None,
            size: f.size,
            written_back: 0,
            settled: false,
        };
        let file = out.file.as_ref().unwrap();
        file.set_len(f.size)?;
        if f.size > 0 {
            // Safety: the file was just created by us with O_EXCL under a name no one else
            // uses, and sized to `f.size`; nothing else truncates it while the map lives (a
            // process that did would make accesses fault, which is the documented mmap
            // hazard of a hostile local user, not of the peer). The map is dropped before the
            // file is renamed or removed.
            out.map = Some(unsafe { MmapMut::map_mut(file)? });
        }
        Ok(out)
    }
}

impl FileSink for MmapSink {
    /// Joins the sub-directory (created if missing; it must stay beneath the output
    /// directory). The sec-fs branch replaces this with `MmapSink::confine` (openat2
    /// RESOLVE_BENEATH); call that here once merged.
    fn confine_to(&mut self, sub: &Path) -> Result<(), SinkError> {
        use std::path::Component;
        if sub
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(SinkError::Io(io::Error::other(format!(
                "{}: a sender's directory must be relative and without `..`",
                sub.display()
            ))));
        }
        let dir = self.root.join(sub);
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        if !dir.starts_with(&self.root) {
            return Err(SinkError::Io(io::Error::other(format!(
                "{} leaves the output directory",
                dir.display()
            ))));
        }
        self.root = dir;
        Ok(())
    }

    fn open(&mut self, files: &[SinkFile]) -> Result<(), SinkError> {
        let need = files.iter().fold(0u64, |a, f| a.saturating_add(f.size));
        let avail = self.free_space()?.saturating_sub(self.reserve);
        if need > avail {
            return Err(SinkError::NoSpace { need, avail });
        }
        for (i, f) in files.iter().enumerate() {
            match self.open_one(i, f) {
                Ok(o) => self.outs.push(o),
                Err(e) => {
                    self.discard();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn span_mut(&mut self, file: u32, off: u64, len: usize) -> Result<&mut [u8], SinkError> {
        let o = self
            .outs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        let out_of_range = SinkError::OutOfRange { file, off, len };
        let Some(m) = o.map.as_mut() else {
            return if len == 0 {
                Ok(&mut [])
            } else {
                Err(out_of_range)
            };
        };
        let range = usize::try_from(off)
            .ok()
            .and_then(|s| Some(s..s.checked_add(len)?));
        match range {
            Some(r) if r.end <= m.len() => Ok(&mut m[r]),
            _ => Err(out_of_range),
        }
    }

    fn hash(&mut self, file: u32) -> Result<[u8; 32], SinkError> {
        let o = self
            .outs
            .get(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        let bytes: &[u8] = o.map.as_deref().unwrap_or(&[]);
        Ok(*blake3::hash(bytes).as_bytes())
    }

    fn contents(&self, file: u32) -> Option<&[u8]> {
        let o = self.outs.get(file as usize)?;
        if o.settled {
            return None;
        }
        Some(o.map.as_deref().unwrap_or(&[]))
    }

    fn prefix_final(&mut self, file: u32, upto: u64) {
        /// Start writeback in steps of this many bytes.
        const STEP: u64 = 4 << 20;
        if !self.durable {
            return;
        }
        let Some(o) = self.outs.get_mut(file as usize) else {
            return;
        };
        let Some(f) = o.file.as_ref() else {
            return;
        };
        let upto = upto.min(o.size);
        if upto < o.written_back + STEP {
            return;
        }
        // Start (not wait for) writeback of the final range; `commit`'s fsync then finds most
        // of the file on its way to the disk. A failure here only loses the head start.
        use std::os::fd::AsRawFd;
        // Safety: a plain syscall on a file descriptor we own; no memory is passed.
        let _ = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                o.written_back as libc::off64_t,
                (upto - o.written_back) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        o.written_back = upto;
    }

    fn commit(&mut self, file: u32) -> Result<(), SinkError> {
        let o = self
            .outs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        if let Some(m) = o.map.take() {
            if self.durable {
                m.flush()?;
            }
        }
        if let Some(f) = o.file.take() {
            if self.durable {
                f.sync_all()?;
            }
        }
        debug_assert!(o.size == 0 || std::fs::metadata(&o.tmp)?.len() == o.size);
        std::fs::rename(&o.tmp, &o.dst)?;
        o.settled = true;
        Ok(())
    }

    fn discard(&mut self) {
        for o in &mut self.outs {
            if !o.settled {
                o.map = None;
                o.file = None;
                let _ = std::fs::remove_file(&o.tmp);
                o.settled = true;
            }
        }
    }
}

impl Drop for MmapSink {
    fn drop(&mut self) {
        self.discard();
    }
}
