//! Input files of the codec commands (`pfs plan`, `pfs unplan`): a large regular file is
//! mapped, a small one (or anything else) read into memory.
//!
//! Why map: reading 32 MiB copies it into fresh anonymous pages, and on a VM fresh pages are
//! the dearest part of planning a file (the kernel zeroes each one first, often after the
//! host takes it back): `pfs plan` of random 32 MiB spent 13.6 ms reading it (strace -T) of a
//! whole process of ~70 ms. The mapping shares the page cache's pages.
//!
//! The risk of a mapping: a file truncated while it is mapped raises SIGBUS on the next read
//! of a page past its new end. [`open`] installs a handler for that, which writes one error
//! line naming the file (and the snapshot and indexes, mapped too) and exits with status 1
//! (a signal handler cannot unwind; outputs are renamed into place only when complete, so
//! nothing is left under a final name).
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::ops::Deref;
use std::path::Path;
use std::sync::OnceLock;

/// Files of at least this many bytes are mapped.
pub const MAP_MIN: u64 = 1 << 20;

/// An input file's bytes.
pub enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Deref for Input {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

/// The error line the SIGBUS handler writes (set before the first mapping).
static SIGBUS_LINE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_sigbus(_: c_int) {
    // only async-signal-safe calls: write(2) and _exit(2)
    if let Some(line) = SIGBUS_LINE.get() {
        // Safety: writing a live byte buffer to stderr
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
    // Safety: ends the process without running anything else
    unsafe { libc::_exit(1) }
}

fn install_sigbus(path: &Path) {
    // the signal does not say which mapping faulted: the snapshot and its indexes are
    // mapped too
    let line = format!(
        "pfs: error: a mapped file shrank while it was being read ({}, or another input, the \
         snapshot or an index): stopped; nothing was renamed into place\n",
        path.display()
    );
    if SIGBUS_LINE.set(line.into_bytes()).is_ok() {
        // Safety: the handler only calls async-signal-safe functions
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    }
}

/// `file` (opened from `path`) mapped read-only, without reading it ahead: for a reader
/// that goes through it once in order (the streamed sender's windows). `None` when it is
/// not a regular file of at least [`MAP_MIN`] bytes or cannot be mapped (read it instead).
/// A file that shrinks while mapped ends the process as [`open`] says.
pub fn map_file(file: &std::fs::File, path: &Path) -> Option<memmap2::Mmap> {
    let m = map_large(file, &file.metadata().ok()?, path, false)?;
    let _ = m.advise(memmap2::Advice::Sequential);
    Some(m)
}

/// `file` (opened from `path`, metadata `md`) mapped read-only if it is a regular file of at
/// least [`MAP_MIN`] bytes, with the SIGBUS handler installed; its pages read in at once with
/// `populate`.
fn map_large(
    file: &std::fs::File,
    md: &std::fs::Metadata,
    path: &Path,
    populate: bool,
) -> Option<memmap2::Mmap> {
    if !md.is_file() || md.len() < MAP_MIN || usize::try_from(md.len()).is_err() {
        return None;
    }
    install_sigbus(path);
    let mut o = memmap2::MmapOptions::new();
    if populate {
        o.populate();
    }
    // Safety: a read-only private mapping; a concurrent truncation ends the process
    // through the SIGBUS handler instead of undefined reads
    unsafe { o.map(file) }.ok()
}

/// The bytes of `path`: mapped when it is a regular file of at least [`MAP_MIN`] bytes,
/// read otherwise (the caller names the file in an error).
pub fn open(path: &Path) -> std::io::Result<Input> {
    let f = std::fs::File::open(path)?;
    let md = f.metadata()?;
    if md.is_dir() {
        return Err(std::io::Error::other("is a directory, not a file"));
    }
    if let Some(m) = map_large(&f, &md, path, true) {
        return Ok(Input::Mapped(m));
    }
    let mut buf = crate::bigbuf::with_capacity(md.len() as usize + 1);
    std::io::Read::read_to_end(&mut &f, &mut buf)?;
    Ok(Input::Read(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_are_mapped_small_ones_read_and_both_hold_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        for (n, mapped) in [(0usize, false), (4096, false), (MAP_MIN as usize + 7, true)] {
            let p = d.path().join(format!("f{n}"));
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&p, &data).unwrap();
            let got = open(&p).unwrap();
            assert_eq!(matches!(got, Input::Mapped(_)), mapped, "{n} bytes");
            assert_eq!(&got[..], &data[..]);
        }
        assert!(open(d.path()).is_err(), "a directory");
        assert!(open(&d.path().join("missing")).is_err());
    }

    /// A mapped file that shrinks under the reader: one error line naming it, exit status 1,
    /// no panic (run in a child process: the handler ends the process).
    #[test]
    fn a_mapped_file_that_shrinks_ends_the_process_with_one_error_line() {
        if let Some(p) = std::env::var_os("PFS_INPUT_SIGBUS_CHILD") {
            let p = std::path::PathBuf::from(p);
            let m = open(&p).unwrap();
            assert!(matches!(m, Input::Mapped(_)));
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(4096)
                .unwrap();
            // past the new end: SIGBUS, and the handler exits with 1
            let x = std::hint::black_box(m[m.len() - 1]);
            println!("read {x} past the end without a signal");
            std::process::exit(3);
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shrinks.bin");
        std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "input::tests::a_mapped_file_that_shrinks_ends_the_process_with_one_error_line",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PFS_INPUT_SIGBUS_CHILD", &p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("pfs: error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("shrinks.bin") && lines[0].contains("shrank"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
