//! Background `fdatasync` of files still being received.
//!
//! A durable receiver ([`crate::fsink::MmapSink`] with `durable`) makes each file durable
//! before renaming it into place. Flushed only then, a file's every dirty page waits for that
//! one flush: on this project's 2-core VM, 32 MiB written over 90 ms and flushed at the end
//! took 139-161 ms in all, the flush alone 43-64 ms, early `sync_file_range(WRITE)` or not
//! (the virtual disk's cost is in the flush of its write cache, which only `fsync` orders);
//! flushed by a second thread while the later bytes still arrived, 87-95 ms, the last flush
//! 0.1-0.2 ms. The [`Flusher`] is that thread: the sink asks it to flush a file as its final
//! prefix grows ([`Flusher::request`], coalesced: one queued flush per file at most), and
//! waits for it at commit ([`Flusher::settle`]) before its own flush, which then finds little
//! left.
//!
//! Errors: a writeback error is reported once per open file description, and the flusher
//! flushes a duplicate of the sink's descriptor (the same description), so an error its
//! flush met would not be seen again by the commit's `fsync`. The flusher keeps the first
//! error of each file and [`Flusher::settle`] returns it: the commit fails as if its own
//! flush had.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

#[derive(Default)]
struct State {
    /// Files with bytes written since their last flush began: (key, a duplicate descriptor).
    queued: Vec<(u64, File)>,
    /// The key whose flush is running.
    running: Option<u64>,
    /// The first error each key's flushes met, until [`Flusher::settle`] takes it.
    errors: HashMap<u64, io::Error>,
    stop: bool,
    /// Flushes done (tests, diagnostics).
    done: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The thread holds the lock only around bookkeeping that cannot panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One flushing thread, started at the first [`Flusher::request`]; stopped and joined on drop
/// (after the flush it is running, if any).
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The thread could not start: [`Flusher::request`] says so and the caller falls back.
    broken: bool,
}

impl Default for Flusher {
    fn default() -> Self {
        Self::new()
    }
}

impl Flusher {
    pub fn new() -> Self {
        Flusher {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
            thread: None,
            broken: false,
        }
    }

    /// Flush `file` (known as `key`) soon, on the flushing thread: queued unless a flush of
    /// `key` is queued already (one running does not count: it may have started before the
    /// latest bytes). `false` when no flush could be queued (no thread, no descriptor to
    /// duplicate): the caller does without.
    pub fn request(&mut self, key: u64, file: &File) -> bool {
        self.start() && self.enqueue(key, file)
    }

    /// [`Flusher::request`]'s queueing: one queued flush per key.
    fn enqueue(&self, key: u64, file: &File) -> bool {
        let mut st = self.shared.lock();
        if st.queued.iter().any(|(k, _)| *k == key) {
            return true;
        }
        let Ok(dup) = file.try_clone() else {
            return false;
        };
        st.queued.push((key, dup));
        self.shared.cv.notify_all();
        true
    }

    /// Wait until no flush of `key` is queued or running (a queued one is dropped: the
    /// caller flushes next), then return the first error that `key`'s flushes met.
    pub fn settle(&self, key: u64) -> io::Result<()> {
        let mut st = self.shared.lock();
        st.queued.retain(|(k, _)| *k != key);
        while st.running == Some(key) {
            st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.errors.remove(&key) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes done so far.
    pub fn done(&self) -> u64 {
        self.shared.lock().done
    }

    /// No thread was started (nothing was ever requested).
    pub fn idle(&self) -> bool {
        self.thread.is_none()
    }

    fn start(&mut self) -> bool {
        if self.thread.is_some() {
            return true;
        }
        if self.broken {
            return false;
        }
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("pfs-flush".into())
            .spawn(move || run(&shared))
        {
            Ok(h) => {
                self.thread = Some(h);
                true
            }
            Err(e) => {
                tracing::debug!("no flushing thread ({e}): files are flushed at commit only");
                self.broken = true;
                false
            }
        }
    }
}

fn run(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        while st.queued.is_empty() && !st.stop {
            st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.stop {
            return;
        }
        let (key, file) = st.queued.remove(0);
        st.running = Some(key);
        drop(st);
        let r = file.sync_data();
        drop(file);
        st = shared.lock();
        st.running = None;
        st.done += 1;
        if let Err(e) = r {
            st.errors.entry(key).or_insert(e);
        }
        shared.cv.notify_all();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            st.queued.clear();
        }
        self.shared.cv.notify_all();
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(dir: &tempfile::TempDir, name: &str, bytes: usize) -> File {
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap();
        f.write_all(&vec![7u8; bytes]).unwrap();
        f
    }

    #[test]
    fn requested_files_are_flushed_and_settle_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = temp_file(&dir, "a", 1 << 20);
        let b = temp_file(&dir, "b", 1 << 20);
        let mut fl = Flusher::new();
        assert_eq!(fl.done(), 0);
        assert!(fl.request(1, &a));
        assert!(fl.request(2, &b));
        fl.settle(1).unwrap();
        fl.settle(2).unwrap();
        // nothing of either is queued or running after settle; at most one flush each ran
        let st = fl.shared.lock();
        assert!(st.queued.is_empty() && st.running.is_none());
        assert!(st.done <= 2, "{}", st.done);
    }

    #[test]
    fn a_queued_file_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = temp_file(&dir, "a", 4096);
        let b = temp_file(&dir, "b", 4096);
        // no thread started: the queue is what `request` leaves for it
        let fl = Flusher::new();
        for _ in 0..50 {
            assert!(fl.enqueue(9, &a));
        }
        assert!(fl.enqueue(8, &b));
        let keys: Vec<u64> = fl.shared.lock().queued.iter().map(|q| q.0).collect();
        assert_eq!(keys, [9, 8]);
        // settle drops what is queued for its key only
        fl.settle(9).unwrap();
        let keys: Vec<u64> = fl.shared.lock().queued.iter().map(|q| q.0).collect();
        assert_eq!(keys, [8]);
        assert_eq!(fl.done(), 0);
    }

    #[test]
    fn an_error_of_a_background_flush_is_returned_by_settle_once() {
        // fdatasync of a pipe fails (EINVAL): the flusher keeps the error for the commit
        let (r, _w) = nix::unistd::pipe().unwrap();
        let pipe = File::from(r);
        let mut fl = Flusher::new();
        assert!(fl.request(3, &pipe));
        // wait for the flush to have run
        while fl.done() == 0 {
            std::thread::yield_now();
        }
        let e = fl.settle(3).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        fl.settle(3).unwrap();
        // other keys are not affected
        fl.settle(4).unwrap();
    }

    #[test]
    fn drop_stops_the_thread_with_flushes_queued() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<File> = (0..8)
            .map(|i| temp_file(&dir, &format!("f{i}"), 64 << 10))
            .collect();
        let mut fl = Flusher::new();
        for (i, f) in files.iter().enumerate() {
            assert!(fl.request(i as u64, f));
        }
        drop(fl); // joins: returns once the running flush (if any) is done
    }
}
