//! The file-system sink, the receiver's real output (the protocol in [`crate::proto`] sees only
//! the [`FileSink`] trait and does no I/O): each file is created under a temporary name beside
//! its final name, sized and memory-mapped, written in place by the apply kernels, and renamed
//! to its final name only by `commit` (after the receiver checked its BLAKE3). Dropping the
//! sink, or `discard`, removes every temporary file not yet committed; a killed process leaves
//! only `.NAME.pfs-tmp-PID-TAG` files, never a partial file under a final name, and
//! [`remove_stale_temps`] clears those at the next start.
//!
//! Confinement (docs/security.md). The sink holds a directory file descriptor on its root:
//! the out-dir, or after [`MmapSink::confine`] the authenticated sender's sub-directory of
//! it. Every path below the root is resolved relative to that descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: nothing resolves outside the root, and
//! no symbolic link is followed anywhere on the way (stricter than `RESOLVE_NO_MAGICLINKS`
//! alone, and what this sink did before openat2: a symlink planted in the out-dir is refused
//! even when it points inside). Names pass [`sanitize_name`], the one rule for names and
//! sub-directories. Temporary files are created with `O_CREAT | O_EXCL`, and renamed into
//! place with `renameat2(RENAME_NOREPLACE)` relative to their parent's descriptor unless
//! [`MmapSink::overwrite`] is set: an existing final name is refused when the manifest is
//! accepted (before any byte is written) and again, atomically, at the rename.
//!
//! Kernels without openat2 (Linux < 5.6) are refused with a clear error when the sink is
//! created: there is no silent fallback to a weaker check. The free space is checked before
//! any file is created or sized.
#![allow(unsafe_code)]

use crate::blueprint::Transform;
use crate::flusher::Flusher;
use crate::journal::{self, Journal};
use crate::proto::sink::{
    apply_segment, link_check, sanitize_name, FileSink, Held, SinkError, SinkFile, Skip, SnapSeg,
};
use crate::wire::held::HeldKind;
use crate::wire::payload::{Attrs, EntryKind};
use memmap2::MmapMut;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::Mode;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How every path below the root is resolved: beneath the directory descriptor, no symlinks
/// (which implies no magic links).
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS);

/// The marker in temporary names: `.NAME.pfs-tmp-PID-TAG`.
const TMP_MARK: &str = ".pfs-tmp-";

/// Files up to this size are held in memory while they arrive and written to their
/// temporary file only at `commit` (no file, no size, no map per small file while the
/// session runs: accepting a manifest of many small files creates nothing yet).
const SMALL_FILE: u64 = 256 << 10;
/// Most bytes of small files held in memory at once by one sink; a small file that would
/// pass it gets its temporary file and map at once, as a large one.
const SMALL_BUDGET: u64 = 64 << 20;
/// Small files written at `commit` wait in a batch, their writeback started, for one pass of
/// fsyncs (the first commits the journal for all of them), then their renames, then one
/// fsync per directory: a batch of this many, or whatever is left at `finish`.
const BATCH_FILES: usize = 128;

/// Deepest directory walk [`remove_stale_temps`] makes (names have at most 32 levels; the
/// senders' sub-directories add a few).
const MAX_WALK_DEPTH: usize = 64;

/// `openat2(dir, name, flags, mode)` resolved with [`RESOLVE`].
fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(RESOLVE);
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), name, how)?;
    // Safety: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `name` beneath `dir` (no symlink, nothing outside).
fn open_dir_beneath(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    open_beneath(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
}

/// The directory `name` beneath `dir`, created (mode 0755) when missing.
fn ensure_dir_beneath(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    match open_dir_beneath(dir, name) {
        Err(Errno::ENOENT) => {
            match nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            open_dir_beneath(dir, name)
        }
        r => r,
    }
}

/// Whether an openat2 error means "this path would leave the root or follow a link" (as
/// opposed to an I/O failure).
fn is_escape(e: Errno) -> bool {
    matches!(
        e,
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR | Errno::EAGAIN
    )
}

/// A path error of file `fi`: an escape from the output directory is a bad name, a kernel
/// without openat2 says so, anything else is I/O.
fn sink_errno(fi: u32, e: Errno) -> SinkError {
    match e {
        e if is_escape(e) => SinkError::BadName(fi),
        Errno::ENOSYS => SinkError::Io(no_openat2()),
        e => SinkError::Io(e.into()),
    }
}

fn no_openat2() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this kernel has no openat2 (Linux >= 5.6 is needed): pfs recv confines files to the \
         out-dir with openat2(RESOLVE_BENEATH) and refuses to run without it",
    )
}

/// Open `path` as a root directory: the out-dir itself (a symlink to it is resolved once,
/// here, by the administrator's choice of path), then probe openat2 on it.
fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR => io::Error::other(format!("{} is not a directory", path.display())),
        e => io::Error::from(e),
    })?;
    // Safety: open returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match open_dir_beneath(fd.as_fd(), OsStr::new(".")) {
        Ok(_) => Ok(fd),
        Err(Errno::ENOSYS) => Err(no_openat2()),
        Err(e) => Err(e.into()),
    }
}

struct Out {
    /// The final name, as in the manifest (for messages).
    name: String,
    /// Display path of the final name.
    dst: PathBuf,
    /// The parent directory, beneath the root: both names are relative to it (one descriptor
    /// per directory, shared by the files in it).
    dir: Arc<OwnedFd>,
    dst_name: OsString,
    tmp_name: OsString,
    file: Option<File>,
    map: Option<MmapMut>,
    /// A small file's bytes, in memory until `commit`.
    buf: Option<Vec<u8>>,
    /// A small file whose temporary file is not created yet.
    lazy: bool,
    size: u64,
    /// Bytes `[0, written_back)` were handed to early writeback (`prefix_final`).
    written_back: u64,
    /// Some of its bytes were written with `pwrite` (`write_at`): no more populating ahead.
    pwritten: bool,
    /// The map's pages below this offset were populated ahead of the writes
    /// ([`populate_ahead`]); `u64::MAX` once the kernel refused (no MADV_POPULATE_WRITE).
    populated: u64,
    /// Committed, or discarded: nothing left to clean up.
    settled: bool,
    kind: EntryKind,
    attrs: Option<Attrs>,
    /// A link's target.
    target: String,
    /// Resumable ([`MmapSink::resume`]): the temporary file is `.NAME.pfs-part-H`, locked,
    /// with its journal.
    part: Option<Part>,
    /// A final file of this name and size exists (resume on): offered whole.
    final_same_size: bool,
    /// The sender kept the final file (skip): `commit` removes the temporary file only.
    keep_final: bool,
}

/// `attrs`' mtime as the times argument of futimens/utimensat (the access time is left).
fn mtime_of(a: &Attrs) -> (nix::sys::time::TimeSpec, nix::sys::time::TimeSpec) {
    (
        nix::sys::time::TimeSpec::UTIME_OMIT,
        nix::sys::time::TimeSpec::new(a.mtime_s, a.mtime_ns as _),
    )
}

/// A resumable temporary file's journal state.
struct Part {
    journal: OsString,
    /// The durable prefix its journal recorded at open (0: none, or no longer valid).
    offered: u64,
    /// Written since open (or adopted): the journal is rewritten from `verified` when the
    /// session breaks; untouched, it stays as it was.
    dirty: bool,
    /// The final prefix (hashed by the receiver) since then.
    verified: u64,
    /// What the journal on disk says now.
    journaled: u64,
}

/// A part file's journal is rewritten (after msync + fdatasync) each time the durable prefix
/// grew by this much during a session, and when the session breaks.
pub const JOURNAL_STEP: u64 = 32 << 20;
/// Resumable files whose journal is older than this are removed at start (7 days).
pub const RESUME_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// At start, resumable files beyond this many bytes in all (newest kept first) are removed.
pub const RESUME_MAX_TOTAL: u64 = 64 << 30;

/// Writes received files into an output directory through memory maps.
pub struct MmapSink {
    /// The root for display (the out-dir, or the confined sub-directory).
    root: PathBuf,
    /// The root every name is resolved beneath.
    root_fd: Arc<OwnedFd>,
    tag: String,
    /// Bytes of free space to leave untouched (default 64 MiB).
    pub reserve: u64,
    /// Populate each output map ahead of the writes (`MADV_POPULATE_WRITE`, a bounded
    /// window, see [`POPULATE_AHEAD`]; default on). Off, every fresh page faults on first
    /// write (benchmarks compare the two).
    pub populate: bool,
    /// Make each file durable (msync + fsync) before renaming it into place (default). Off,
    /// a crash right after the rename may leave a file whose pages never reached the disk;
    /// the BLAKE3 check has still passed on the bytes in memory.
    pub durable: bool,
    /// Replace files that already exist under a final name (`pfs recv --overwrite`). Off (the
    /// default), such a file is refused with [`SinkError::Exists`] and left unchanged.
    pub overwrite: bool,
    /// Keep the setuid, setgid and sticky bits the sender asks for (`pfs recv
    /// --keep-setid`). Off (the default), only the 0o777 bits are applied.
    pub keep_setid: bool,
    /// Files up to this size are held in memory until verified and written then (default
    /// 256 KiB); they are never resumable part files (a broken session sends them again).
    pub small_file: u64,
    /// Keep broken sessions' files resumable (`.NAME.pfs-part-H` and a journal) and offer
    /// what the output holds (`pfs recv --no-resume` turns it off). Off, temporary files
    /// are per session and removed when it fails.
    pub resume: bool,
    /// The sender's identity, recorded in journals: a file is resumed only by the same
    /// sender (empty: none known).
    pub owner: String,
    outs: Vec<Out>,
    /// Bytes of small files held in memory.
    buffered: u64,
    /// Small files written, waiting for their fsync and rename (indices into `outs`).
    batch: Vec<usize>,
    /// Flushes a durable sink's files while their later bytes arrive ([`prefix_final`]),
    /// so that `commit` finds little left to flush.
    ///
    /// [`prefix_final`]: FileSink::prefix_final
    flusher: Flusher,
}

impl MmapSink {
    /// A sink writing under `out_dir`, which must exist. `tag` makes the temporary names
    /// unique (e.g. the session id in hex). Fails on kernels without openat2.
    pub fn new(out_dir: &Path, tag: &str) -> io::Result<Self> {
        let root = out_dir.canonicalize()?;
        let root_fd = Arc::new(open_root(&root)?);
        Ok(MmapSink {
            root,
            root_fd,
            tag: tag.to_owned(),
            durable: true,
            overwrite: false,
            keep_setid: false,
            small_file: SMALL_FILE,
            resume: false,
            owner: String::new(),
            reserve: 64 << 20,
            populate: true,
            outs: Vec::new(),
            buffered: 0,
            batch: Vec::new(),
            flusher: Flusher::new(),
        })
    }

    /// Confine every file of the session to `sub`, a sub-directory of the current root (the
    /// authenticated sender's `dir=` in the authorized-senders file), created when missing.
    /// `sub` must be relative, of plain names (no `..`, no `.`, nothing absolute: the rule of
    /// [`sanitize_name`]), and no symbolic link may lie on the way. Call before `open`.
    pub fn confine(&mut self, sub: &Path) -> Result<(), SinkError> {
        let bad = |reason: &str| SinkError::BadSubdir {
            dir: sub.to_path_buf(),
            reason: reason.to_owned(),
        };
        if !self.outs.is_empty() {
            return Err(bad("the session's files are already open"));
        }
        let Some(rel) = sub.to_str().and_then(sanitize_name) else {
            return Err(bad(
                "must be a relative path of plain names (no `..`, `.`, empty or absolute parts)",
            ));
        };
        let mut cur: Option<OwnedFd> = None;
        for part in rel.split('/') {
            let base = cur.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
            cur = Some(
                ensure_dir_beneath(base, OsStr::new(part)).map_err(|e| match e {
                    e if is_escape(e) => bad("a symbolic link or a non-directory lies on the way"),
                    Errno::ENOSYS => SinkError::Io(no_openat2()),
                    e => SinkError::Io(e.into()),
                })?,
            );
        }
        self.root_fd = Arc::new(cur.expect("sanitize_name returns at least one part"));
        self.root.push(rel);
        Ok(())
    }

    /// The directory files are written beneath (the out-dir, or the confined sub-directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The final path of file `i`.
    pub fn path(&self, i: usize) -> Option<&Path> {
        self.outs.get(i).map(|o| o.dst.as_path())
    }

    /// Free bytes on the output file system.
    pub fn free_space(&self) -> io::Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.root_fd).map_err(io::Error::from)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// The parent directory of `name` (a sanitised name) beneath the root, created when
    /// missing, and the last component; `dirs` holds the directories opened so far (by
    /// their path below the root), so that a directory costs one descriptor however many
    /// entries it receives.
    fn parent_of<'n>(
        &self,
        name: &'n str,
        dirs: &mut HashMap<String, Arc<OwnedFd>>,
    ) -> Result<(Arc<OwnedFd>, &'n str), Errno> {
        let (parent, fname) = match name.rsplit_once('/') {
            Some((p, f)) => (p, f),
            None => ("", name),
        };
        let dir = match dirs.get(parent) {
            _ if parent.is_empty() => self.root_fd.clone(),
            Some(d) => d.clone(),
            None => {
                let mut cur: Option<OwnedFd> = None;
                for part in parent.split('/') {
                    let base = cur.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
                    cur = Some(ensure_dir_beneath(base, OsStr::new(part))?);
                }
                let d = Arc::new(cur.expect("a non-empty parent has a part"));
                dirs.insert(parent.to_owned(), d.clone());
                d
            }
        };
        Ok((dir, fname))
    }

    /// Entry `i`'s checked name, its parent directory (created beneath the root) and its base
    /// name: what [`MmapSink::open_node`] and [`MmapSink::open_one`] both start from.
    fn locate(
        &self,
        i: usize,
        f: &SinkFile,
        dirs: &mut HashMap<String, Arc<OwnedFd>>,
    ) -> Result<(u32, String, Arc<OwnedFd>, String), SinkError> {
        let fi = i as u32;
        let name = sanitize_name(&f.name).ok_or(SinkError::BadName(fi))?;
        let (dir, fname) = self.parent_of(&name, dirs).map_err(|e| sink_errno(fi, e))?;
        let fname = fname.to_owned();
        Ok((fi, name, dir, fname))
    }

    /// Entry `i`, a directory or a link: a directory is created now (kept if it exists); a
    /// link is only checked here (its name must be free unless `overwrite`, never a
    /// directory) and created by `finish`, after every file.
    fn open_node(
        &self,
        i: usize,
        f: &SinkFile,
        dirs: &mut HashMap<String, Arc<OwnedFd>>,
    ) -> Result<Out, SinkError> {
        let (fi, name, dir, fname) = self.locate(i, f, dirs)?;
        let errno = |e: Errno| sink_errno(fi, e);
        if f.kind == EntryKind::Dir {
            let fd = ensure_dir_beneath(dir.as_fd(), OsStr::new(&fname)).map_err(|e| match e {
                Errno::ENOTDIR => SinkError::Exists {
                    file: fi,
                    name: name.clone(),
                },
                e => errno(e),
            })?;
            dirs.insert(name.clone(), Arc::new(fd));
        } else {
            match nix::sys::stat::fstatat(
                Some(dir.as_raw_fd()),
                fname.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR || !self.overwrite => {
                    return Err(SinkError::Exists {
                        file: fi,
                        name: name.clone(),
                    })
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(Out {
            dst: self.root.join(&name),
            tmp_name: tmp_name(&fname, &self.tag),
            dst_name: OsString::from(fname),
            name,
            dir,
            file: None,
            map: None,
            buf: None,
            lazy: false,
            size: 0,
            written_back: 0,
            populated: 0,
            pwritten: false,
            settled: true,
            kind: f.kind,
            attrs: f.attrs,
            target: f.target.clone(),
            part: None,
            final_same_size: false,
            keep_final: false,
        })
    }

    /// Open file `i`'s temporary file (its parent through [`MmapSink::parent_of`]).
    fn open_one(
        &self,
        i: usize,
        f: &SinkFile,
        dirs: &mut HashMap<String, Arc<OwnedFd>>,
    ) -> Result<Out, SinkError> {
        let (fi, name, dir, fname) = self.locate(i, f, dirs)?;
        let errno = |e: Errno| sink_errno(fi, e);
        let fname = fname.as_str();
        let exists = || SinkError::Exists {
            file: fi,
            name: name.clone(),
        };
        let mut final_same_size = false;
        match nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            fname,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => {
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let same = st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_size as u64 == f.size
                    && f.size > 0;
                final_same_size = self.resume && same;
                if is_dir || !(self.overwrite || final_same_size) {
                    return Err(exists());
                }
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno(e)),
        }
        let dst_name = OsString::from(fname);
        let dst = self.root.join(&name);
        // Small files are held in memory until verified (no temporary file before that,
        // and none resumable: a broken session sends them again whole).
        let lazy = f.size <= self.small_file;
        let resumable = if self.resume && !lazy {
            self.open_part(&dir, fname, &name, f.size).map_err(errno)?
        } else {
            None
        };
        let (file, tmp_name, part) = match resumable {
            Some((fd, pn, part)) => (Some(File::from(fd)), pn, Some(part)),
            None if lazy => (None, tmp_name(fname, &self.tag), None),
            None => {
                let tmp_name = tmp_name(fname, &self.tag);
                let fd = open_beneath(
                    dir.as_fd(),
                    &tmp_name,
                    OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    0o644,
                )
                .map_err(errno)?;
                (Some(File::from(fd)), tmp_name, None)
            }
        };
        let mut out = Out {
            dst,
            name,
            dir,
            dst_name,
            tmp_name,
            file,
            map: None,
            buf: None,
            lazy,
            size: f.size,
            written_back: 0,
            populated: 0,
            pwritten: false,
            settled: false,
            kind: EntryKind::File,
            attrs: f.attrs,
            target: String::new(),
            final_same_size,
            keep_final: false,
            part,
        };
        if !out.lazy {
            let file = out.file.as_ref().expect("created above");
            // Nothing of an old part file is kept: start from zeros. A part file just
            // created is empty already, and truncating an empty file on ext4 marks it for
            // writeback at close (auto_da_alloc), which would put a flush of the whole file
            // before its rename even with `--sync off`.
            if out.part.as_ref().is_some_and(|p| p.offered == 0) && file.metadata()?.len() != 0 {
                file.set_len(0)?;
            }
            file.set_len(f.size)?;
            if f.size > 0 {
                // Safety: the file was just created by us with O_EXCL under a name no one
                // else uses (or is a resumable file we hold the exclusive lock of), and sized
                // to `f.size`; nothing else truncates it while the map lives (a process that
                // did would make accesses fault, which is the documented mmap hazard of a
                // hostile local user, not of the peer). The map is last accessed before the
                // file is renamed or removed (`commit` may drop it after the rename, see
                // `retire`: an unmap reads nothing).
                out.map = Some(unsafe { MmapMut::map_mut(file)? });
            }
        }
        Ok(out)
    }

    /// Write small file `i` (held in memory) to its temporary file, apply its attributes
    /// and start its writeback; with `durable` it joins the batch (flushed when full),
    /// else it is renamed at once.
    fn commit_small(&mut self, i: usize) -> Result<(), SinkError> {
        use std::io::Write;
        let fi = i as u32;
        let (keep_setid, durable) = (self.keep_setid, self.durable);
        let o = &mut self.outs[i];
        let fd = open_beneath(
            o.dir.as_fd(),
            &o.tmp_name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            0o644,
        )
        .map_err(|e| tmp_errno(e, fi))?;
        o.lazy = false;
        let mut f = File::from(fd);
        if let Some(b) = o.buf.take() {
            f.write_all(&b)?;
            self.buffered -= b.len() as u64;
        }
        apply_attrs(&f, o.attrs.as_ref(), keep_setid)?;
        if !durable {
            drop(f);
            return rename_into_place(o, fi, self.overwrite);
        }
        // Start (not wait for) the writeback now; the batch's fsyncs wait for it.
        // Safety: a plain syscall on a file descriptor we own; no memory is passed.
        let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        o.file = Some(f);
        self.batch.push(i);
        if self.batch.len() >= BATCH_FILES {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// The batch: fsync each file, rename each into place, fsync each directory once.
    fn flush_batch(&mut self) -> Result<(), SinkError> {
        let batch = std::mem::take(&mut self.batch);
        for &i in &batch {
            if let Some(f) = &self.outs[i].file {
                f.sync_all()?;
            }
        }
        let mut dirs: Vec<Arc<OwnedFd>> = Vec::new();
        for &i in &batch {
            let o = &mut self.outs[i];
            o.file = None;
            rename_into_place(o, i as u32, self.overwrite)?;
            if !dirs.iter().any(|d| Arc::ptr_eq(d, &o.dir)) {
                dirs.push(o.dir.clone());
            }
        }
        for d in dirs {
            nix::unistd::fsync(d.as_raw_fd()).map_err(io::Error::from)?;
        }
        Ok(())
    }
}

/// What an errno from creating file `fi`'s temporary file means.
fn tmp_errno(e: Errno, fi: u32) -> SinkError {
    match e {
        e if is_escape(e) => SinkError::BadName(fi),
        Errno::ENOSYS => SinkError::Io(no_openat2()),
        e => SinkError::Io(e.into()),
    }
}

/// Create `o`'s temporary file, sized, and map it (a large file at `open`, a small one once
/// the memory budget is spent).
fn create_mapped(o: &mut Out, fi: u32) -> Result<(), SinkError> {
    let fd = open_beneath(
        o.dir.as_fd(),
        &o.tmp_name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
        0o644,
    )
    .map_err(|e| tmp_errno(e, fi))?;
    o.lazy = false;
    let file = File::from(fd);
    file.set_len(o.size)?;
    if o.size > 0 {
        // Safety: the file was just created by us with O_EXCL under a name no one else
        // uses, and sized to `o.size`; nothing else truncates it while the map lives (a
        // process that did would make accesses fault, which is the documented mmap
        // hazard of a hostile local user, not of the peer). The map is last accessed
        // before the file is renamed or removed (see `retire`).
        o.map = Some(unsafe { MmapMut::map_mut(&file)? });
    }
    o.file = Some(file);
    Ok(())
}

/// `o` is being written: a resumable file written without adopting its held prefix loses
/// the journal that vouched for that prefix.
fn mark_written(o: &mut Out) {
    if let Some(p) = o.part.as_mut().filter(|p| !p.dirty) {
        if p.offered > 0 {
            unlink_quiet(o.dir.as_fd(), &p.journal);
            p.offered = 0;
            p.journaled = 0;
        }
        p.dirty = true;
    }
}

/// Writes at least this long that reach past the populated part of the output map go to
/// the file with `pwrite` instead of through the map.
///
/// A page written through a fresh shared file map is first faulted in: allocated, zeroed
/// and prepared for writing one page at a time (`MADV_POPULATE_WRITE` batches the faults,
/// not the work), then copied into, then unmapped at commit; `pwrite` copies into fresh
/// page-cache pages without zeroing them or mapping them. Measured on ext4 (this project's
/// 2-core VM, 32 MiB in 2 MiB steps): 16-17 ms to populate plus the copy and 2 ms to
/// unmap, against 6-7 ms of `pwrite`. A file the snapshot covers arrives in such long
/// pieces; frames' raw bytes (1.4 KB) stay on the map, where a write is a `memcpy`.
const PWRITE_MIN: usize = 64 << 10;

/// Write `bytes` at `off` of `o`'s file with `pwrite` if they are long and not all on
/// populated pages of its map; `Ok(false)` when the map should take them instead.
fn write_at(o: &mut Out, fi: u32, off: u64, bytes: &[u8]) -> Result<bool, SinkError> {
    use std::os::unix::fs::FileExt;
    let len = bytes.len();
    let end = off.checked_add(len as u64);
    let mapped = o.file.is_some() && o.map.is_some() && o.buf.is_none() && !o.lazy;
    if !mapped || len < PWRITE_MIN || end.is_some_and(|e| e <= o.populated) {
        return Ok(false);
    }
    if end.is_none_or(|e| e > o.size) {
        return Err(SinkError::OutOfRange { file: fi, off, len });
    }
    // The journal goes before the bytes change (as in `span_mut`): a crash between the two
    // must not leave a journal vouching for a prefix this write altered.
    mark_written(o);
    let file = o.file.as_ref().expect("checked above");
    file.write_all_at(bytes, off)?;
    o.pwritten = true;
    Ok(true)
}

/// How far ahead of the highest byte written the output map is populated, and in steps of
/// how much at least: the page faults of a fresh map (page-cache allocation, zeroing, block
/// reservation) happen in one `madvise` per step instead of one fault per page on the data
/// path, and at most this much memory is populated before the data arrives.
const POPULATE_AHEAD: u64 = 8 << 20;
const POPULATE_STEP: u64 = 2 << 20;

/// Populate the pages of `o`'s map from the populated mark to `POPULATE_AHEAD` past `end`,
/// the end of a write about to happen (unless that write lies beyond the window), with `MADV_POPULATE_WRITE` (Linux 5.14). Where the kernel refuses, the writes
/// fault their pages in as before; a failed step (no memory, no space) only loses the head
/// start: the write's own fault reports what it must.
fn populate_ahead(o: &mut Out, end: u64) {
    const PAGE: u64 = 4096;
    let Some(m) = o.map.as_mut() else {
        return;
    };
    let size = m.len() as u64;
    if o.populated == u64::MAX || o.populated >= size {
        return;
    }
    let target = end
        .saturating_add(POPULATE_AHEAD)
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .min(size);
    if target < size && target < o.populated + POPULATE_STEP {
        return;
    }
    let from = o.populated;
    if end.saturating_sub(1) > from + POPULATE_AHEAD {
        // A write far past the populated mark (out of order): it faults its own pages; the
        // mark moves on with the writes that follow it in order.
        return;
    }
    // Safety: `[from, target)` lies inside the map (`target <= size`, `from` page-aligned
    // below it); MADV_POPULATE_WRITE only faults those pages in writable, as a write to them
    // would, and changes no contents.
    let r = unsafe {
        libc::madvise(
            m.as_mut_ptr().add(from as usize).cast(),
            (target - from) as usize,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        o.populated = u64::MAX; // an older kernel: the writes fault as before
        return;
    }
    o.populated = target;
}

/// Apply the sender's permission bits (0o777 of them unless `keep_setid`) and mtime.
fn apply_attrs(f: &File, attrs: Option<&Attrs>, keep_setid: bool) -> Result<(), SinkError> {
    if let Some(a) = attrs {
        let mask = if keep_setid { 0o7777 } else { 0o777 };
        let perm = Mode::from_bits_truncate((a.perm & mask) as libc::mode_t);
        nix::sys::stat::fchmod(f.as_raw_fd(), perm).map_err(io::Error::from)?;
        let (at, mt) = mtime_of(a);
        nix::sys::stat::futimens(f.as_raw_fd(), &at, &mt).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Rename `o`'s temporary file to its final name (refusing an existing one unless
/// `overwrite`).
fn rename_into_place(o: &mut Out, file: u32, overwrite: bool) -> Result<(), SinkError> {
    let flags = if overwrite {
        RenameFlags::empty()
    } else {
        RenameFlags::RENAME_NOREPLACE
    };
    let d = Some(o.dir.as_raw_fd());
    match nix::fcntl::renameat2(d, o.tmp_name.as_os_str(), d, o.dst_name.as_os_str(), flags) {
        Ok(()) => {
            o.settled = true;
            if let Some(p) = &o.part {
                unlink_quiet(o.dir.as_fd(), &p.journal);
            }
            Ok(())
        }
        // The name appeared after the manifest was accepted: the existing file stays.
        Err(Errno::EEXIST) | Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) => Err(SinkError::Exists {
            file,
            name: o.name.clone(),
        }),
        Err(e) => Err(SinkError::Io(e.into())),
    }
}

/// Maps at least this large are unmapped on a thread of their own after their commit.
const RETIRE_THREAD_MIN: usize = 1 << 20;

/// Drop a committed file's map and descriptor. Unmapping a large map (its page tables, the
/// reverse mappings of every page) takes milliseconds: a map of `RETIRE_THREAD_MIN` or more
/// is dropped on a short-lived thread, so the file's rename and the receiver's confirmation
/// do not wait for it. Nothing reads or writes the map after its commit (the hash was
/// checked, the hashing thread holds no span of it), so dropping it later, after the
/// rename, only releases memory; the descriptor is closed with it (a part file's lock goes
/// then).
fn retire(map: Option<MmapMut>, file: Option<File>) {
    if map.as_ref().is_some_and(|m| m.len() >= RETIRE_THREAD_MIN) {
        let held = (map, file);
        // A thread that cannot start drops its closure, and with it the map, here.
        if let Err(e) = std::thread::Builder::new()
            .name("pfs-unmap".into())
            .spawn(move || drop(held))
        {
            tracing::debug!("unmapped inline: {e}");
        }
        return;
    }
    drop((map, file));
}

/// The temporary name of `fname`: `.FNAME.pfs-tmp-PID-TAG`, with FNAME cut to 200 bytes so
/// that the whole name stays under the 255-byte limit of file names.
fn tmp_name(fname: &str, tag: &str) -> OsString {
    let b = fname.as_bytes();
    let cut = &b[..b.len().min(200)];
    let mut v = Vec::with_capacity(cut.len() + 48);
    v.push(b'.');
    v.extend_from_slice(cut);
    v.extend_from_slice(format!("{TMP_MARK}{}-{tag}", std::process::id()).as_bytes());
    OsStr::from_bytes(&v).to_owned()
}

/// The process id in a temporary name this sink makes, if `name` is one.
fn tmp_pid(name: &[u8]) -> Option<Option<u32>> {
    if name.first() != Some(&b'.') {
        return None;
    }
    let mark = TMP_MARK.as_bytes();
    let at = name.windows(mark.len()).rposition(|w| w == mark)?;
    let rest = &name[at + mark.len()..];
    let pid = rest
        .split(|&c| c == b'-')
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| p.parse::<u32>().ok());
    Some(pid)
}

/// What [`remove_stale_temps`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleTemps {
    /// Temporary files of processes that are gone, removed.
    pub removed: u64,
    /// Temporary files of a live process (another receiver on the same out-dir), kept.
    pub kept: u64,
    /// Resumable files kept (a valid journal, younger than [`RESUME_MAX_AGE`], within
    /// [`RESUME_MAX_TOTAL`]), and their bytes.
    pub resumable: u64,
    pub resumable_bytes: u64,
}

/// A resumable file found by the walk, kept unless the total is too large.
struct Resumable {
    dir: OwnedFd,
    part: OsString,
    journal: OsString,
    mtime: i64,
    size: u64,
}

/// Remove the temporary files (`.NAME.pfs-tmp-PID-TAG`) that earlier runs left in `out_dir`
/// and its sub-directories (a killed receiver). A file whose PID is a live process other
/// than this one is kept: another receiver may be writing it. Symbolic links are neither
/// followed nor removed.
///
/// Resumable files (`.NAME.pfs-part-H` with the journal `.NAME.pfs-jrnl-H`) are kept when
/// their journal is valid, vouches for a non-empty prefix of a file of the part's length,
/// was written less than [`RESUME_MAX_AGE`] ago, and the kept ones stay within
/// [`RESUME_MAX_TOTAL`] bytes (the newest are kept first); a part file another process holds
/// locked is kept as it is. Every other part file and every journal without its part file
/// is removed.
pub fn remove_stale_temps(out_dir: &Path) -> io::Result<StaleTemps> {
    let root = open_root(out_dir)?;
    let mut st = StaleTemps::default();
    let mut found = Vec::new();
    walk_temps(root.as_fd(), 0, &mut st, &mut found)?;
    found.sort_by_key(|r| std::cmp::Reverse(r.mtime));
    for r in found {
        if st.resumable_bytes.saturating_add(r.size) <= RESUME_MAX_TOTAL {
            st.resumable += 1;
            st.resumable_bytes += r.size;
        } else {
            unlink_quiet(r.dir.as_fd(), &r.part);
            unlink_quiet(r.dir.as_fd(), &r.journal);
            st.removed += 1;
        }
    }
    Ok(st)
}

/// Part file `part` (journal `journal`) beneath `dir`: `Some` if it is worth keeping.
fn check_part(
    dir: BorrowedFd<'_>,
    part: &OsStr,
    journal: &OsStr,
    st: &mut StaleTemps,
) -> io::Result<Option<Resumable>> {
    let Ok(fd) = open_beneath(dir, part, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0) else {
        return Ok(None);
    };
    if !try_lock(fd.as_fd())? {
        st.kept += 1; // a session is writing it
        return Ok(Some(Resumable {
            dir: dir.try_clone_to_owned()?,
            part: part.to_owned(),
            journal: journal.to_owned(),
            mtime: i64::MAX,
            size: 0,
        }));
    }
    let len = File::from(fd).metadata()?.len();
    let Some(j) = read_journal(dir, journal) else {
        return Ok(None);
    };
    let Ok(jst) = nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        journal,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) else {
        return Ok(None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let age = now.saturating_sub(jst.st_mtime);
    if j.size != len || j.prefix == 0 || age < 0 || age as u64 > RESUME_MAX_AGE.as_secs() {
        return Ok(None);
    }
    Ok(Some(Resumable {
        dir: dir.try_clone_to_owned()?,
        part: part.to_owned(),
        journal: journal.to_owned(),
        mtime: jst.st_mtime,
        size: len,
    }))
}

fn walk_temps(
    dir: BorrowedFd<'_>,
    depth: usize,
    st: &mut StaleTemps,
    found: &mut Vec<Resumable>,
) -> io::Result<()> {
    use nix::dir::{Dir, Type};
    let mut d = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries: Vec<(OsString, Option<Type>)> = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        entries.push((OsStr::from_bytes(name).to_owned(), e.file_type()));
    }
    let me = std::process::id();
    for (name, ty) in entries {
        let ty = match ty {
            Some(t) => t,
            None => {
                let s = nix::sys::stat::fstatat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                match s.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => Type::Directory,
                    libc::S_IFREG => Type::File,
                    _ => Type::Symlink,
                }
            }
        };
        match ty {
            Type::Directory if depth < MAX_WALK_DEPTH => {
                // A directory that vanished or turned into a link meanwhile is skipped.
                if let Ok(sub) = open_dir_beneath(dir, &name) {
                    walk_temps(sub.as_fd(), depth + 1, st, found)?;
                }
            }
            Type::File => {
                if let Some((journal, is_journal)) = journal::classify(name.as_bytes()) {
                    if is_journal {
                        // Kept with its part file, else an orphan.
                        let part = journal::part_of(&journal);
                        let has_part = nix::sys::stat::fstatat(
                            Some(dir.as_raw_fd()),
                            OsStr::from_bytes(&part),
                            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .is_ok();
                        if !has_part {
                            unlink_quiet(dir, &name);
                            st.removed += 1;
                        }
                        continue;
                    }
                    let journal = OsStr::from_bytes(&journal);
                    match check_part(dir, &name, journal, st)? {
                        Some(r) if r.mtime == i64::MAX => {} // locked: counted as kept
                        Some(r) => found.push(r),
                        None => {
                            unlink_quiet(dir, &name);
                            unlink_quiet(dir, journal);
                            st.removed += 1;
                        }
                    }
                    continue;
                }
                let Some(pid) = tmp_pid(name.as_bytes()) else {
                    continue;
                };
                if let Some(pid) = pid.filter(|&p| p != me && p > 0 && p <= i32::MAX as u32) {
                    let alive = match nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        None,
                    ) {
                        Ok(()) | Err(Errno::EPERM) => true,
                        Err(_) => false,
                    };
                    if alive {
                        st.kept += 1;
                        continue;
                    }
                }
                match nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) => st.removed += 1,
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Take `fd`'s exclusive advisory lock without waiting; false if another holds it.
fn try_lock(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    // Safety: a plain syscall on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    match Errno::result(r) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Read the journal `name` beneath `dir`: at most [`journal::MAX_LEN`] bytes, parsed; `None`
/// if there is none or it is not valid.
fn read_journal(dir: BorrowedFd<'_>, name: &OsStr) -> Option<Journal> {
    let fd = open_beneath(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0).ok()?;
    let mut f = File::from(fd);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut b = Vec::with_capacity(journal::MAX_LEN + 1);
    (&mut f)
        .take(journal::MAX_LEN as u64 + 1)
        .read_to_end(&mut b)
        .ok()?;
    match Journal::parse(&b) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(journal = ?name, error = %e, "ignoring a journal that is not valid");
            None
        }
    }
}

/// Write journal `name` beneath `dir` atomically: a temporary name, fdatasync, rename.
fn write_journal(dir: BorrowedFd<'_>, name: &OsStr, j: &Journal) -> io::Result<()> {
    let tmp = tmp_name(&name.to_string_lossy(), "j");
    let fd = open_beneath(
        dir,
        &tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
        0o600,
    )?;
    let mut f = File::from(fd);
    let r = f.write_all(&j.to_bytes()).and_then(|()| f.sync_data());
    let r = r.and_then(|()| {
        nix::fcntl::renameat(
            Some(dir.as_raw_fd()),
            tmp.as_os_str(),
            Some(dir.as_raw_fd()),
            name,
        )
        .map_err(io::Error::from)
    });
    if r.is_err() {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            tmp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    r
}

fn unlink_quiet(dir: BorrowedFd<'_>, name: &OsStr) {
    let _ = nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
}

/// BLAKE3 state over the first `len` bytes read from `f` (read, not mapped: a file another
/// process truncates meanwhile gives a short read, not a fault), hashed on every core.
fn hash_prefix(f: &mut File, len: u64) -> io::Result<blake3::Hasher> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; (8 << 20).min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n])?;
        h.update_rayon(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

impl MmapSink {
    /// File `fname` (relative name `name`, `size` bytes)'s resumable temporary file, created
    /// when missing, locked, with the durable prefix its journal vouches for. `None` when
    /// another session holds it (this one then starts over under a per-session name).
    fn open_part(
        &self,
        dir: &OwnedFd,
        fname: &str,
        name: &str,
        size: u64,
    ) -> Result<Option<(OwnedFd, OsString, Part)>, Errno> {
        let (pn, jn) = journal::names(fname, name);
        let fd = open_beneath(
            dir.as_fd(),
            &pn,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW,
            0o644,
        )?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(None);
        }
        if !try_lock(fd.as_fd())? {
            tracing::warn!(file = name, "another session is resuming this file: starting it over under a temporary name of this session");
            return Ok(None);
        }
        let offered = read_journal(dir.as_fd(), &jn)
            .filter(|j| {
                j.name == name
                    && j.size == size
                    && j.owner == self.owner
                    && st.st_size as u64 == size
                    && j.prefix < size
            })
            .map_or(0, |j| j.prefix);
        if offered == 0 {
            unlink_quiet(dir.as_fd(), &jn);
        }
        Ok(Some((
            fd,
            pn,
            Part {
                journal: jn,
                offered,
                dirty: false,
                verified: 0,
                journaled: offered,
            },
        )))
    }

    /// Make part file `i`'s bytes `[0, verified)` durable and record them in its journal.
    fn checkpoint(&mut self, i: usize) -> io::Result<()> {
        let owner = self.owner.clone();
        let o = &mut self.outs[i];
        let Some(p) = o.part.as_mut() else {
            return Ok(());
        };
        // the background flushes' errors are this flush's (see `flusher`)
        self.flusher.settle(i as u64)?;
        if let Some(m) = o.map.as_ref() {
            m.flush_range(0, p.verified as usize)?;
        }
        if let Some(f) = o.file.as_ref() {
            f.sync_data()?;
        }
        let j = Journal {
            name: o.name.clone(),
            size: o.size,
            prefix: p.verified,
            owner,
        };
        write_journal(o.dir.as_fd(), &p.journal, &j)?;
        p.journaled = p.verified;
        Ok(())
    }
}

impl FileSink for MmapSink {
    /// [`MmapSink::confine`]: beneath the current root, no symlink on the way.
    fn confine_to(&mut self, sub: &Path) -> Result<(), SinkError> {
        self.confine(sub)
    }

    fn set_owner(&mut self, owner: &str) {
        self.owner = owner.chars().take(crate::journal::MAX_OWNER).collect();
    }

    fn open(&mut self, files: &[SinkFile]) -> Result<(), SinkError> {
        let need = files.iter().fold(0u64, |a, f| a.saturating_add(f.size));
        let avail = self.free_space()?.saturating_sub(self.reserve);
        if need > avail {
            return Err(SinkError::NoSpace { need, avail });
        }
        let mut dirs = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let o = match f.kind {
                EntryKind::File => self.open_one(i, f, &mut dirs),
                EntryKind::Dir | EntryKind::Symlink => self.open_node(i, f, &mut dirs),
            };
            match o {
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
        mark_written(o);
        if o.lazy && o.buf.is_none() && o.size > 0 {
            if self.buffered + o.size <= SMALL_BUDGET {
                o.buf = Some(vec![0u8; o.size as usize]);
                self.buffered += o.size;
            } else {
                create_mapped(o, file)?;
            }
        }
        // A file that takes long pieces with `pwrite` (`write_at`) is not populated ahead:
        // its pages come with those, and its few short pieces fault their own.
        if self.populate && !o.pwritten {
            populate_ahead(o, off.saturating_add(len as u64));
        }
        // The map's or buffer's start and length, through raw pointers: no `&mut` covers the
        // whole file, whose final bytes the hashing thread may be reading
        // (`FileSink::contents`).
        let (base, size) = match (o.map.as_mut(), o.buf.as_mut()) {
            (Some(m), _) => (m.as_mut_ptr(), m.len()),
            (None, Some(b)) => (b.as_mut_ptr(), b.len()),
            _ => {
                return if len == 0 {
                    Ok(&mut [])
                } else {
                    Err(out_of_range)
                }
            }
        };
        let start = usize::try_from(off)
            .ok()
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= size))
            .ok_or(out_of_range)?;
        // Safety: `[start, start + len)` lies inside the map or buffer (checked above), which
        // this borrow of `self` keeps alive (neither is dropped or remapped while borrowed)
        // and which nothing else writes.
        Ok(unsafe { std::slice::from_raw_parts_mut(base.add(start), len) })
    }

    /// A long identity piece goes from the snapshot to the file with `pwrite` (`write_at`).
    fn write_segment(
        &mut self,
        file: u32,
        off: u64,
        seg: SnapSeg,
        snapshot: &[u8],
    ) -> Result<(), SinkError> {
        if seg.op == Transform::Id {
            let s = usize::try_from(seg.snap_off).unwrap_or(usize::MAX);
            let src = s
                .checked_add(seg.len as usize)
                .and_then(|e| snapshot.get(s..e));
            let o = self
                .outs
                .get_mut(file as usize)
                .ok_or(SinkError::NoSuchFile(file))?;
            if let Some(src) = src {
                if write_at(o, file, off, src)? {
                    return Ok(());
                }
            }
        }
        apply_segment(self.span_mut(file, off, seg.len as usize)?, seg, snapshot);
        Ok(())
    }

    /// Long raw bytes go to the file with `pwrite` (`write_at`).
    fn write_raw(&mut self, file: u32, off: u64, bytes: &[u8]) -> Result<(), SinkError> {
        let o = self
            .outs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        if !write_at(o, file, off, bytes)? {
            self.span_mut(file, off, bytes.len())?
                .copy_from_slice(bytes);
        }
        Ok(())
    }

    fn hash(&mut self, file: u32) -> Result<[u8; 32], SinkError> {
        let o = self
            .outs
            .get(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        let bytes: &[u8] = o.map.as_deref().or(o.buf.as_deref()).unwrap_or(&[]);
        Ok(*blake3::hash(bytes).as_bytes())
    }

    fn contents(&self, file: u32) -> Option<&[u8]> {
        let o = self.outs.get(file as usize)?;
        if o.settled {
            return None;
        }
        Some(o.map.as_deref().or(o.buf.as_deref()).unwrap_or(&[]))
    }

    fn prefix_final(&mut self, file: u32, upto: u64) {
        /// Flush in steps of this many bytes (fewer while a flush runs: one is queued at most).
        const STEP: u64 = 1 << 20;
        if let Some((p, size)) = self
            .outs
            .get_mut(file as usize)
            .and_then(|o| Some((o.part.as_mut()?, o.size)))
            .filter(|(p, _)| p.dirty)
        {
            p.verified = p.verified.max(upto);
            // a whole file is committed next (its journal would be removed right after)
            if self.durable && p.verified >= p.journaled + JOURNAL_STEP && p.verified < size {
                if let Err(e) = self.checkpoint(file as usize) {
                    tracing::warn!(file, error = %e, "writing the resume journal failed");
                }
            }
        }
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
        // Flush the file on the flushing thread while the rest arrives; `commit`'s flush then
        // finds little left. Without that thread, start (not wait for) writeback of the final
        // range: a failure here only loses the head start.
        if !self.flusher.request(file as u64, f) {
            // Safety: a plain syscall on a file descriptor we own; no memory is passed.
            let _ = unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    o.written_back as libc::off64_t,
                    (upto - o.written_back) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        o.written_back = upto;
    }

    fn commit(&mut self, file: u32) -> Result<(), SinkError> {
        if self
            .outs
            .get(file as usize)
            .is_some_and(|o| o.lazy && !o.keep_final)
        {
            return self.commit_small(file as usize);
        }
        let o = self
            .outs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        if o.keep_final {
            // Skip: the final file matched; the temporary one goes.
            o.map = None;
            o.file = None;
            unlink_quiet(o.dir.as_fd(), &o.tmp_name);
            if let Some(p) = &o.part {
                unlink_quiet(o.dir.as_fd(), &p.journal);
            }
            o.settled = true;
            return Ok(());
        }
        if self.durable {
            // its background flushes done, their errors this commit's (see `flusher`)
            self.flusher.settle(file as u64)?;
        }
        let map = o.map.take();
        if let Some(m) = &map {
            if self.durable {
                m.flush()?;
            }
        }
        let f = o.file.take();
        if let Some(f) = &f {
            apply_attrs(f, o.attrs.as_ref(), self.keep_setid)?;
            if self.durable {
                f.sync_all()?;
            }
        }
        let r = rename_into_place(o, file, self.overwrite);
        retire(map, f);
        r
    }

    /// Links (each checked by [`link_check`], created under a temporary name, its mtime
    /// set, renamed into place), then the directories' permission bits and mtimes, deepest
    /// first.
    fn finish(&mut self) -> Result<Vec<(u32, Skip)>, SinkError> {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        self.flush_batch()?;
        let mut skipped = Vec::new();
        let flags = if self.overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        for (i, o) in self.outs.iter_mut().enumerate() {
            if o.kind != EntryKind::Symlink {
                continue;
            }
            if let Err(why) = link_check(&o.name, &o.target) {
                skipped.push((i as u32, why));
                continue;
            }
            let d = Some(o.dir.as_raw_fd());
            nix::unistd::symlinkat(o.target.as_str(), d, o.tmp_name.as_os_str())
                .map_err(io::Error::from)?;
            o.settled = false;
            if let Some(a) = &o.attrs {
                let (at, mt) = mtime_of(a);
                utimensat(
                    d,
                    o.tmp_name.as_os_str(),
                    &at,
                    &mt,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(io::Error::from)?;
            }
            match nix::fcntl::renameat2(d, o.tmp_name.as_os_str(), d, o.dst_name.as_os_str(), flags)
            {
                Ok(()) => o.settled = true,
                Err(Errno::EEXIST) | Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) => {
                    return Err(SinkError::Exists {
                        file: i as u32,
                        name: o.name.clone(),
                    })
                }
                Err(e) => return Err(SinkError::Io(e.into())),
            }
        }
        let mut dirs: Vec<&Out> = self
            .outs
            .iter()
            .filter(|o| o.kind == EntryKind::Dir && o.attrs.is_some())
            .collect();
        dirs.sort_by_key(|o| std::cmp::Reverse(o.name.matches('/').count()));
        let mask = if self.keep_setid { 0o7777 } else { 0o777 };
        for o in dirs {
            let a = o.attrs.as_ref().expect("filtered");
            let fd = open_dir_beneath(o.dir.as_fd(), &o.dst_name).map_err(io::Error::from)?;
            let perm = Mode::from_bits_truncate((a.perm & mask) as libc::mode_t);
            nix::sys::stat::fchmod(fd.as_raw_fd(), perm).map_err(io::Error::from)?;
            let (at, mt) = mtime_of(a);
            nix::sys::stat::futimens(fd.as_raw_fd(), &at, &mt).map_err(io::Error::from)?;
        }
        Ok(skipped)
    }

    fn discard(&mut self) {
        self.batch.clear();
        self.buffered = 0;
        for i in 0..self.outs.len() {
            if self.outs[i].settled {
                continue;
            }
            // Resumable: keep the file with a journal of its durable prefix.
            let keep = match self.outs[i].part.as_ref() {
                Some(p) if self.resume && p.dirty && p.verified > 0 => match self.checkpoint(i) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(file = i, error = %e, "writing the resume journal failed: the file is removed");
                        false
                    }
                },
                Some(p) => self.resume && !p.dirty && p.offered > 0,
                None => false,
            };
            // no flush of it left running (it holds a duplicate descriptor: a part file's lock
            // too); the checkpoint above took a failed one's error, else the file goes anyway
            let _ = self.flusher.settle(i as u64);
            let o = &mut self.outs[i];
            if keep {
                o.map = None;
                o.file = None;
                o.settled = true;
                continue;
            }
            if let Some(p) = &o.part {
                unlink_quiet(o.dir.as_fd(), &p.journal);
            }
            {
                o.map = None;
                o.file = None;
                o.buf = None;
                if !o.lazy {
                    let _ = nix::unistd::unlinkat(
                        Some(o.dir.as_raw_fd()),
                        o.tmp_name.as_os_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                }
                o.settled = true;
            }
        }
    }

    /// A final file of the same size (hashed now, on every core), else a resumable file's
    /// durable prefix (hashed now from the file: the journal is not trusted for the bytes).
    fn held(&mut self, file: u32) -> Option<Held> {
        let o = self.outs.get_mut(file as usize)?;
        if o.final_same_size {
            let hashed = open_beneath(
                o.dir.as_fd(),
                &o.dst_name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
                0,
            )
            .map_err(io::Error::from)
            .and_then(|fd| {
                let mut f = File::from(fd);
                let m = f.metadata()?;
                if !m.is_file() || m.len() != o.size {
                    return Err(io::Error::other("changed"));
                }
                hash_prefix(&mut f, o.size)
            });
            match hashed {
                Ok(hasher) => {
                    return Some(Held {
                        kind: HeldKind::Whole,
                        len: o.size,
                        hasher,
                    })
                }
                Err(_) => o.final_same_size = false,
            }
        }
        let p = o.part.as_ref().filter(|p| p.offered > 0 && !p.dirty)?;
        let len = p.offered;
        let fd = o.file.as_ref()?.as_fd().try_clone_to_owned().ok()?;
        // A second description of the same file, read from the start (pread would do too).
        let mut f = File::from(fd);
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(0)).ok()?;
        let hasher = hash_prefix(&mut f, len).ok()?;
        Some(Held {
            kind: HeldKind::Prefix,
            len,
            hasher,
        })
    }

    fn adopt(&mut self, file: u32, at: u64) -> Result<(), SinkError> {
        let overwrite = self.overwrite;
        let o = self
            .outs
            .get_mut(file as usize)
            .ok_or(SinkError::NoSuchFile(file))?;
        if at == 0 {
            if o.final_same_size && !overwrite {
                // The sender's file differs from the one here: refused as without resume.
                return Err(SinkError::Exists {
                    file,
                    name: o.name.clone(),
                });
            }
            o.final_same_size = false;
            return Ok(());
        }
        if at == o.size && o.final_same_size {
            o.keep_final = true;
            return Ok(());
        }
        match o.part.as_mut() {
            Some(p) if p.offered == at && !p.dirty => {
                p.dirty = true;
                p.verified = at;
                Ok(())
            }
            _ => Err(SinkError::OutOfRange {
                file,
                off: at,
                len: 0,
            }),
        }
    }
}

impl Drop for MmapSink {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(name: &str, size: u64) -> SinkFile {
        SinkFile::file(name, size)
    }

    /// A sink over `dir` with no free-space reserve (tests run on small file systems too).
    fn sink(dir: &Path) -> MmapSink {
        let mut s = MmapSink::new(dir, "t").unwrap();
        s.reserve = 0;
        s.durable = false;
        s
    }

    /// Write `bytes` as the one file `name` and commit it.
    fn receive(s: &mut MmapSink, name: &str, bytes: &[u8]) -> Result<(), SinkError> {
        s.open(&[file(name, bytes.len() as u64)])?;
        s.write_raw(0, 0, bytes)?;
        s.commit(0)
    }

    /// Every entry under `dir`, recursively, as relative paths (links not followed).
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut v = Vec::new();
        walk(dir, dir, &mut v);
        v.sort();
        v
    }

    #[test]
    fn populating_ahead_stays_bounded_and_leaves_the_bytes_as_written() {
        // 40 MiB written in 64 KiB pieces, in order, then a piece far ahead and a gap
        // filled late: the populated mark runs at most POPULATE_AHEAD (plus a step) past
        // the highest write, and the committed file is exactly what was written.
        let len: u64 = 40 << 20;
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.open(&[SinkFile::file("p", len)]).unwrap();
        // each 64 KiB piece in two halves: short writes go through the map (`PWRITE_MIN`)
        let write = |s: &mut MmapSink, off: u64, b: &[u8]| {
            s.write_raw(0, off, &b[..32768]).unwrap();
            s.write_raw(0, off + 32768, &b[32768..]).unwrap();
        };
        let piece = |off: u64| -> Vec<u8> {
            (0..65536u64)
                .map(|i| (((off + i) * 2654435761) >> 13) as u8)
                .collect()
        };
        let mut order: Vec<u64> = (0..len / 65536).map(|i| i * 65536).collect();
        let late = order.remove(100); // the gap, filled last
        let far = order.pop().unwrap(); // the end, written first
        write(&mut s, far, &piece(far));
        for &off in &order[..200] {
            write(&mut s, off, &piece(off));
            let p = s.outs[0].populated;
            if p != u64::MAX {
                assert!(p <= off + 65536 + POPULATE_AHEAD + 4096, "{p}");
            }
        }
        let p = s.outs[0].populated;
        if p != u64::MAX {
            // the write at the end populated nothing; the in-order writes populated from 0,
            // a window past the highest of them
            let top = 200 * 65536 + 65536;
            assert!(p >= top && p <= top + POPULATE_AHEAD + 4096, "{p}");
        }
        for &off in &order[200..] {
            write(&mut s, off, &piece(off));
        }
        write(&mut s, late, &piece(late));
        let mut want = vec![0u8; len as usize];
        for off in (0..len).step_by(65536) {
            want[off as usize..off as usize + 65536].copy_from_slice(&piece(off));
        }
        assert_eq!(s.contents(0).unwrap(), &want[..]);
        s.commit(0).unwrap();
        assert_eq!(std::fs::read(out.path().join("p")).unwrap(), want);
    }

    #[test]
    fn a_durable_file_is_flushed_while_it_arrives_and_committed_whole() {
        // A durable sink hands each final megabyte to its flushing thread (which runs while
        // the rest is written), and the commit after it leaves exactly the bytes written
        // under the final name.
        let len: usize = 4 << 20;
        let bytes: Vec<u8> = (0..len as u64).map(|i| (i * 7 % 251) as u8).collect();
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.durable = true;
        s.open(&[file("big", len as u64)]).unwrap();
        for (k, piece) in bytes.chunks(1 << 20).enumerate() {
            s.write_raw(0, (k << 20) as u64, piece).unwrap();
            s.prefix_final(0, ((k + 1) << 20) as u64);
            if k == 0 {
                // the first megabyte's flush was queued: the thread takes it
                assert!(!s.flusher.idle(), "no flush asked for");
                while s.flusher.done() == 0 {
                    std::thread::yield_now();
                }
            }
        }
        assert_eq!(s.outs[0].written_back, len as u64);
        s.commit(0).unwrap();
        assert_eq!(std::fs::read(out.path().join("big")).unwrap(), bytes);
        assert_eq!(tree(out.path()), ["big"]);
        // not durable: no flush is asked for
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.open(&[file("big", len as u64)]).unwrap();
        s.write_raw(0, 0, &bytes).unwrap();
        s.prefix_final(0, len as u64);
        s.commit(0).unwrap();
        assert_eq!(s.flusher.done(), 0);
        assert!(s.flusher.idle());
    }

    #[test]
    fn long_pieces_are_written_with_pwrite_and_read_back_through_the_map() {
        // A file of long snapshot pieces (pwrite) and short raw pieces (the map), in
        // turn: the map shows every byte (one page cache), nothing is populated ahead once
        // pwrite took a piece, a piece past the end is refused, and the committed file is
        // exactly what was written.
        let len: usize = 3 << 20;
        let snap: Vec<u8> = (0..len as u64)
            .map(|i| ((i * 0x9e37_79b9) >> 11) as u8)
            .collect();
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.open(&[SinkFile::file("q", len as u64)]).unwrap();
        let id = |snap_off: u64, n: usize| SnapSeg {
            op: Transform::Id,
            imm: 0,
            snap_off,
            len: n as u32,
        };
        let mut want = vec![0u8; len];
        let long = PWRITE_MIN * 3;
        // a long piece from the snapshot first, then 1000 raw bytes, alternating (a short
        // piece first would populate the map ahead, and the long ones would go there)
        let mut off = 0usize;
        let mut k = 1u64;
        while off < len {
            if k.is_multiple_of(2) {
                let n = 1000.min(len - off);
                let b: Vec<u8> = (0..n).map(|i| (i as u64 * 7 + k) as u8).collect();
                s.write_raw(0, off as u64, &b).unwrap();
                want[off..off + n].copy_from_slice(&b);
                off += n;
            } else {
                let n = long.min(len - off);
                let so = (len - n) as u64 - k;
                s.write_segment(0, off as u64, id(so, n), &snap).unwrap();
                want[off..off + n].copy_from_slice(&snap[so as usize..so as usize + n]);
                off += n;
            }
            k += 1;
        }
        assert!(s.outs[0].pwritten);
        let p = s.outs[0].populated;
        assert!(p == 0 || p == u64::MAX, "populated ahead to {p}");
        assert!(matches!(
            s.write_segment(0, (len - long + 1) as u64, id(0, long), &snap),
            Err(SinkError::OutOfRange { .. })
        ));
        assert_eq!(s.contents(0).unwrap(), &want[..]);
        assert_eq!(s.hash(0).unwrap(), *blake3::hash(&want).as_bytes());
        s.commit(0).unwrap();
        assert_eq!(std::fs::read(out.path().join("q")).unwrap(), want);
    }

    #[test]
    fn populate_ahead_marks_only_what_lies_within_the_window() {
        let len: u64 = 64 << 20;
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.open(&[SinkFile::file("w", len)]).unwrap();
        s.write_raw(0, 0, &[1; 4096]).unwrap();
        let p = s.outs[0].populated;
        if p == u64::MAX {
            eprintln!("skipped: this kernel refuses MADV_POPULATE_WRITE");
            return;
        }
        assert_eq!(p, 4096 + POPULATE_AHEAD);
        // Within the window, less than a step further: no new populate.
        s.write_raw(0, 4096, &[2; 4096]).unwrap();
        assert_eq!(s.outs[0].populated, p);
        // A write far past the window populates nothing: the mark waits for in-order writes.
        s.write_raw(0, 40 << 20, &[3; 10]).unwrap();
        assert_eq!(s.outs[0].populated, p);
        // Writes that reach into the window move it on, and the file's end bounds it.
        for off in (8192..len).step_by(1 << 20) {
            s.write_raw(0, off, &[4; 10]).unwrap();
            let q = s.outs[0].populated;
            assert!(q >= off + 10 && q <= (off + 10 + POPULATE_AHEAD).min(len) + 4096);
        }
        assert_eq!(s.outs[0].populated, len);
    }

    #[test]
    fn a_file_arrives_under_its_name_in_nested_directories() {
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        receive(&mut s, "a/b/c.bin", b"hello").unwrap();
        assert_eq!(
            std::fs::read(out.path().join("a/b/c.bin")).unwrap(),
            b"hello"
        );
        assert_eq!(tree(out.path()), ["a", "a/b", "a/b/c.bin"]);
    }

    #[test]
    fn files_sharing_directories_arrive_each_under_its_name() {
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        let names = ["a/b/c.bin", "a/b/d.bin", "a/e.bin", "f.bin", "g/h.bin"];
        let files: Vec<SinkFile> = names.iter().map(|n| file(n, n.len() as u64)).collect();
        s.open(&files).unwrap();
        for (i, n) in names.iter().enumerate() {
            s.write_raw(i as u32, 0, n.as_bytes()).unwrap();
        }
        for i in (0..names.len()).rev() {
            s.commit(i as u32).unwrap();
        }
        for n in names {
            assert_eq!(std::fs::read(out.path().join(n)).unwrap(), n.as_bytes());
        }
        assert_eq!(
            tree(out.path()),
            [
                "a",
                "a/b",
                "a/b/c.bin",
                "a/b/d.bin",
                "a/e.bin",
                "f.bin",
                "g",
                "g/h.bin"
            ]
        );
    }

    #[test]
    fn a_symlink_in_the_out_dir_pointing_outside_is_refused_and_nothing_is_created_outside() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), out.path().join("link")).unwrap();
        // A directory symlink pointing inside the out-dir is refused too (no symlinks at all).
        std::fs::create_dir(out.path().join("real")).unwrap();
        symlink("real", out.path().join("inner")).unwrap();
        for name in ["link/x", "link/sub/x", "inner/x"] {
            let mut s = sink(out.path());
            let e = receive(&mut s, name, b"data").unwrap_err();
            assert!(matches!(e, SinkError::BadName(0)), "{name}: {e}");
        }
        // The sender's directory through a link: refused as well.
        let mut s = sink(out.path());
        let e = s.confine(Path::new("link")).unwrap_err();
        assert!(matches!(e, SinkError::BadSubdir { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = s.confine(Path::new("link/alice")).unwrap_err();
        assert!(matches!(e, SinkError::BadSubdir { .. }), "{e}");
        assert!(
            tree(outside.path()).is_empty(),
            "{:?}",
            tree(outside.path())
        );
        assert_eq!(tree(out.path()), ["inner", "link", "real"]);
    }

    #[test]
    fn names_with_dot_dot_or_absolute_parts_are_refused_by_the_one_rule() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for name in [
            "../escape",
            "a/../../escape",
            "/tmp/escape",
            "./a",
            "a//b",
            "",
        ] {
            let mut s = sink(&out);
            let e = receive(&mut s, name, b"x").unwrap_err();
            assert!(matches!(e, SinkError::BadName(0)), "{name:?}: {e}");
        }
        for sub in ["../up", "/abs", "a/../b", ".", ""] {
            let mut s = sink(&out);
            let e = s.confine(Path::new(sub)).unwrap_err();
            assert!(e.to_string().contains("relative path"), "{sub:?}: {e}");
        }
        assert_eq!(tree(parent.path()), ["out"]);
    }

    #[test]
    fn a_confined_sender_writes_only_beneath_its_directory() {
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.confine(Path::new("senders/alice")).unwrap();
        assert_eq!(
            s.root(),
            out.path().canonicalize().unwrap().join("senders/alice")
        );
        receive(&mut s, "f.bin", b"alice's").unwrap();
        assert_eq!(
            std::fs::read(out.path().join("senders/alice/f.bin")).unwrap(),
            b"alice's"
        );
        assert_eq!(s.path(0), Some(s.root().join("f.bin").as_path()));
        // Confining twice nests; after open it is refused.
        let e = s.confine(Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("already open"), "{e}");
        // A symlink planted inside the sender's directory that points at another sender's
        // directory (or anywhere) is not followed.
        std::fs::create_dir(out.path().join("senders/bob")).unwrap();
        symlink("../bob", out.path().join("senders/alice/tobob")).unwrap();
        let mut s = sink(out.path());
        s.confine(Path::new("senders/alice")).unwrap();
        let e = receive(&mut s, "tobob/evil", b"x").unwrap_err();
        assert!(matches!(e, SinkError::BadName(0)), "{e}");
        assert!(tree(&out.path().join("senders/bob")).is_empty());
    }

    #[test]
    fn an_existing_final_name_is_refused_and_left_unchanged_without_overwrite() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("f"), b"original").unwrap();
        let mut s = sink(out.path());
        let e = receive(&mut s, "f", b"replacement").unwrap_err();
        assert!(
            matches!(&e, SinkError::Exists { file: 0, name } if name == "f"),
            "{e}"
        );
        assert!(e.to_string().contains("`f` already exists"), "{e}");
        drop(s);
        assert_eq!(std::fs::read(out.path().join("f")).unwrap(), b"original");
        assert_eq!(tree(out.path()), ["f"], "no temporary file left");
        // A symlink under the final name is an existing name too; its target is untouched.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("t"), b"target").unwrap();
        symlink(outside.path().join("t"), out.path().join("l")).unwrap();
        let mut s = sink(out.path());
        assert!(matches!(
            receive(&mut s, "l", b"new"),
            Err(SinkError::Exists { .. })
        ));
        assert_eq!(std::fs::read(outside.path().join("t")).unwrap(), b"target");
    }

    #[test]
    fn a_name_that_appears_during_the_transfer_is_not_replaced() {
        let out = tempfile::tempdir().unwrap();
        let mut s = sink(out.path());
        s.open(&[file("late", 3)]).unwrap();
        s.write_raw(0, 0, b"new").unwrap();
        std::fs::write(out.path().join("late"), b"first").unwrap();
        let e = s.commit(0).unwrap_err();
        assert!(matches!(e, SinkError::Exists { file: 0, .. }), "{e}");
        s.discard();
        assert_eq!(std::fs::read(out.path().join("late")).unwrap(), b"first");
        assert_eq!(tree(out.path()), ["late"]);
    }

    #[test]
    fn with_overwrite_an_existing_file_is_replaced_but_a_directory_never() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("f"), b"original").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("t"), b"target").unwrap();
        symlink(outside.path().join("t"), out.path().join("l")).unwrap();
        std::fs::create_dir(out.path().join("d")).unwrap();
        let mut s = sink(out.path());
        s.overwrite = true;
        s.open(&[file("f", 11), file("l", 3)]).unwrap();
        s.write_raw(0, 0, b"replacement").unwrap();
        s.write_raw(1, 0, b"new").unwrap();
        s.commit(0).unwrap();
        s.commit(1).unwrap();
        assert_eq!(std::fs::read(out.path().join("f")).unwrap(), b"replacement");
        // The link itself was replaced by a regular file; its old target is unchanged.
        assert!(std::fs::symlink_metadata(out.path().join("l"))
            .unwrap()
            .is_file());
        assert_eq!(std::fs::read(out.path().join("l")).unwrap(), b"new");
        assert_eq!(std::fs::read(outside.path().join("t")).unwrap(), b"target");
        let mut s = sink(out.path());
        s.overwrite = true;
        assert!(matches!(
            receive(&mut s, "d", b"x"),
            Err(SinkError::Exists { .. })
        ));
        assert!(out.path().join("d").is_dir());
    }

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed() {
        let out = tempfile::tempdir().unwrap();
        let o = out.path();
        std::fs::create_dir_all(o.join("alice/deep")).unwrap();
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = 4_194_304 + 7;
        let live = std::process::id(); // this process: its own old temps count as stale
        let parent = nix::unistd::getppid().as_raw(); // a live process other than us
        for p in [
            format!(".a.pfs-tmp-{dead}-00ff"),
            format!("alice/.b.bin.pfs-tmp-{dead}-1"),
            format!("alice/deep/.c.pfs-tmp-{live}-2"),
            format!(".running.pfs-tmp-{parent}-3"),
        ] {
            std::fs::write(o.join(p), b"partial").unwrap();
        }
        // Not temporary names of ours: kept.
        for p in ["a", "pfs-tmp-1-2", ".hidden", "alice/x.pfs-tmp-1-2"] {
            std::fs::write(o.join(p), b"keep").unwrap();
        }
        // A symlink named like a temp, pointing outside: neither followed nor removed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("t"), b"target").unwrap();
        symlink(
            outside.path().join("t"),
            o.join(format!(".l.pfs-tmp-{dead}-9")),
        )
        .unwrap();
        let st = remove_stale_temps(o).unwrap();
        assert_eq!(
            st,
            StaleTemps {
                removed: 3,
                kept: 1,
                ..Default::default()
            }
        );
        let mut want = vec![
            ".hidden".to_string(),
            format!(".l.pfs-tmp-{dead}-9"),
            format!(".running.pfs-tmp-{parent}-3"),
            "a".into(),
            "alice".into(),
            "alice/deep".into(),
            "alice/x.pfs-tmp-1-2".into(),
            "pfs-tmp-1-2".into(),
        ];
        want.sort();
        assert_eq!(tree(o), want);
        assert_eq!(std::fs::read(outside.path().join("t")).unwrap(), b"target");
        assert_eq!(
            remove_stale_temps(o).unwrap(),
            StaleTemps {
                removed: 0,
                kept: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn temporary_names_stay_under_the_file_name_limit_and_are_recognised() {
        let long = "x".repeat(255);
        let t = tmp_name(&long, "0123456789abcdef");
        assert!(t.len() <= 255, "{}", t.len());
        assert_eq!(tmp_pid(t.as_bytes()), Some(Some(std::process::id())));
        assert_eq!(tmp_pid(b"plain"), None);
        let out = tempfile::tempdir().unwrap();
        let mut s = MmapSink::new(out.path(), "0123456789abcdef").unwrap();
        s.reserve = 0;
        s.durable = false;
        receive(&mut s, &long, b"long name").unwrap();
        assert_eq!(std::fs::read(out.path().join(&long)).unwrap(), b"long name");
    }

    /// A resumable sink over `dir` for sender `owner`.
    fn resumable(dir: &Path, owner: &str) -> MmapSink {
        let mut s = MmapSink::new(dir, "00aa").unwrap();
        s.reserve = 0;
        s.resume = true;
        // these tests are about part files: no file is small (held in memory, not resumable)
        s.small_file = 0;
        s.owner = owner.into();
        s
    }

    #[test]
    fn a_broken_session_keeps_its_durable_prefix_and_the_next_resumes_it() {
        let out = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut s = resumable(out.path(), "alice");
        s.open(&[file("d/f.bin", data.len() as u64)]).unwrap();
        assert!(s.held(0).is_none(), "nothing held at first");
        s.write_raw(0, 0, &data[..60_000]).unwrap();
        s.prefix_final(0, 40_000); // only 40 000 bytes are final (hashed)
        s.discard();
        drop(s);
        let (part, jn) = journal::names("f.bin", "d/f.bin");
        let dir = out.path().join("d");
        assert!(dir.join(&part).exists() && dir.join(&jn).exists());
        let j = Journal::parse(&std::fs::read(dir.join(&jn)).unwrap()).unwrap();
        assert_eq!(
            (j.prefix, j.size, j.owner.as_str()),
            (40_000, 100_000, "alice")
        );
        // Start-up keeps it.
        let st = remove_stale_temps(out.path()).unwrap();
        assert_eq!((st.resumable, st.removed), (1, 0));
        let mut s = resumable(out.path(), "alice");
        s.open(&[file("d/f.bin", data.len() as u64)]).unwrap();
        // A second session cannot take the same file while this one holds it.
        let mut busy = resumable(out.path(), "alice");
        busy.open(&[file("d/f.bin", data.len() as u64)]).unwrap();
        assert!(busy.held(0).is_none(), "locked by the first session");
        drop(busy);
        let h = s.held(0).expect("the prefix is offered");
        assert_eq!(h.kind, HeldKind::Prefix);
        assert_eq!(h.len, 40_000);
        assert_eq!(h.hash(), *blake3::hash(&data[..40_000]).as_bytes());
        s.adopt(0, 40_000).unwrap();
        s.write_raw(0, 40_000, &data[40_000..]).unwrap();
        s.prefix_final(0, 100_000);
        s.commit(0).unwrap();
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), data);
        drop(s);
        assert_eq!(
            tree(&dir),
            vec!["f.bin".to_string()],
            "part and journal are gone"
        );
        // The final file is now offered whole; adopting it keeps it as it is.
        let mut s = resumable(out.path(), "alice");
        s.open(&[file("d/f.bin", data.len() as u64)]).unwrap();
        let h = s.held(0).unwrap();
        assert_eq!((h.kind, h.len), (HeldKind::Whole, 100_000));
        assert_eq!(h.hash(), *blake3::hash(&data).as_bytes());
        s.adopt(0, 100_000).unwrap();
        s.commit(0).unwrap();
        drop(s);
        assert_eq!(tree(&dir), vec!["f.bin".to_string()]);
        // Declined (the sender's file differs) without --overwrite: refused by name.
        let mut s = resumable(out.path(), "alice");
        s.open(&[file("d/f.bin", data.len() as u64)]).unwrap();
        assert!(matches!(s.adopt(0, 0), Err(SinkError::Exists { .. })));
        drop(s);
        // Another sender is not offered alice's partial file: its session starts it over.
        let mut s = resumable(out.path(), "alice");
        s.open(&[file("d/g.bin", data.len() as u64)]).unwrap();
        s.write_raw(0, 0, &data).unwrap();
        s.prefix_final(0, 50_000);
        s.discard();
        drop(s);
        let mut other = resumable(out.path(), "mallory");
        other.open(&[file("d/g.bin", data.len() as u64)]).unwrap();
        assert!(other.held(0).is_none());
    }

    #[test]
    fn journals_that_lie_are_ignored_and_their_files_removed() {
        let out = tempfile::tempdir().unwrap();
        let o = out.path();
        let (part, jn) = journal::names("x", "x");
        let lie = |prefix: u64, size: u64| Journal {
            name: "x".into(),
            size,
            prefix,
            owner: String::new(),
        };
        // A prefix beyond the file: refused by the parser; the part file is removed at start.
        std::fs::write(o.join(&part), vec![1u8; 1000]).unwrap();
        let mut b = lie(1000, 1000).to_bytes();
        b[16..24].copy_from_slice(&5000u64.to_le_bytes());
        std::fs::write(o.join(&jn), &b).unwrap();
        let st = remove_stale_temps(o).unwrap();
        assert_eq!((st.resumable, st.removed), (0, 1));
        assert!(!o.join(&part).exists() && !o.join(&jn).exists());
        // A valid journal for another size than the part file has: removed too.
        std::fs::write(o.join(&part), vec![1u8; 1000]).unwrap();
        std::fs::write(o.join(&jn), lie(10, 2000).to_bytes()).unwrap();
        assert_eq!(remove_stale_temps(o).unwrap().removed, 1);
        // Garbage, and an orphan journal.
        std::fs::write(o.join(&part), vec![1u8; 1000]).unwrap();
        std::fs::write(o.join(&jn), b"garbage").unwrap();
        let (_, orphan) = journal::names("y", "y");
        std::fs::write(o.join(&orphan), lie(1, 2).to_bytes()).unwrap();
        assert_eq!(remove_stale_temps(o).unwrap().removed, 2);
        assert!(tree(o).is_empty(), "{:?}", tree(o));
        // A journal that passes but vouches for garbage bytes: offered with the hash of the
        // bytes as they are (the sender compares), never of what the journal claims.
        std::fs::write(o.join(&part), vec![7u8; 1000]).unwrap();
        std::fs::write(o.join(&jn), lie(500, 1000).to_bytes()).unwrap();
        let mut s = resumable(o, "");
        s.open(&[file("x", 1000)]).unwrap();
        let h = s.held(0).unwrap();
        assert_eq!(h.hash(), *blake3::hash(&[7u8; 500]).as_bytes());
        // Started over (the sender's prefix differed): the journal no longer vouches.
        s.adopt(0, 0).unwrap();
        s.write_raw(0, 0, &[1u8; 10]).unwrap();
        assert!(!o.join(&jn).exists());
    }
}
