//! The receiver's BLAKE3 of each file, fed in file order as the file's final prefix grows:
//! on the receiving thread (inline), or on a hashing thread the session owns, so that the
//! state machine's thread only hands off spans and goes on applying frames.
//!
//! The thread computes hashes and nothing else (no sockets, no files). It takes jobs from a
//! bounded channel, in order: a file's hash state, a span of a file's final bytes, "finish
//! this file" (answered with its BLAKE3 once every earlier job is done), a barrier. The spans
//! are the sink's own memory ([`super::FileSink::contents`]: an output map or buffer), read
//! in place, not copied: see [`Hashes::feed`] for what the caller keeps valid, and
//! [`Hashes::settle`] for the one way to stop reading it early (an aborted session). Dropping
//! [`Hashes`] stops and joins the thread.
//!
//! Policy ([`HashThread`], `ReceiverConfig::hash_thread`): by default the thread runs when
//! the machine has at least two cores and the session at least [`THREAD_MIN`] file bytes;
//! otherwise, or when the thread cannot be started, the hashes are fed inline as before.
//!
//! Unsafe code here: the spans handed to the thread, read in place (see [`Hashes::feed`]).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Final bytes fed at once from this many on are hashed on every core (BLAKE3's own
/// subtree split over rayon's pool: the same hash, in order): a covered file's decoded
/// blocks and long snapshot pieces arrive in megabytes at a time.
const PAR_HASH_MIN: usize = 1 << 20;

/// Sessions with fewer file bytes than this hash inline: starting a thread (tens of
/// microseconds) is not worth it for a few small files.
pub const THREAD_MIN: u64 = 1 << 20;

/// Jobs queued at most before the state machine waits for the thread: the spans are the
/// sink's memory, not copies, so a deep queue costs no memory, only how far the hashes may
/// trail the writes (64 spans of 256 KiB, 16 MiB).
const DEPTH: usize = 64;

/// The thread hashes a span in pieces of this many bytes, checking between them whether the
/// session was abandoned (a whole file's span may come at once when its first hole fills).
const PIECE: usize = 4 << 20;

/// Feed `bytes` to `h`: on every core when they are many and `par`, else on this thread.
pub fn feed(h: &mut blake3::Hasher, bytes: &[u8], par: bool) {
    if par && bytes.len() >= PAR_HASH_MIN {
        h.update_rayon(bytes);
    } else {
        h.update(bytes);
    }
}

/// Where a receiver computes each file's BLAKE3 (`ReceiverConfig::hash_thread`; `pfs recv
/// --hash-thread auto|on|off`, config key `hash-thread`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HashThread {
    /// Inline, on the receiving thread.
    Off,
    /// On a thread of the session's own with two cores or more and [`THREAD_MIN`] file
    /// bytes or more in the session; inline otherwise.
    #[default]
    Auto,
    /// On a thread of the session's own whatever the cores and sizes.
    #[serde(rename = "on")]
    #[value(name = "on")]
    Always,
}

/// Whether a session of `bytes` file bytes hashes on a thread of its own.
pub fn use_thread(policy: HashThread, bytes: u64) -> bool {
    match policy {
        HashThread::Off => false,
        HashThread::Auto => crate::util::cores() >= 2 && bytes >= THREAD_MIN,
        HashThread::Always => true,
    }
}

/// A span of a file's final bytes, read by the thread in place.
struct Span {
    ptr: *const u8,
    len: usize,
}

// Safety: a `Span` is only created by `Hashes::feed`, whose caller keeps the bytes allocated
// and unwritten until the thread is done with them (its contract); the thread only reads.
unsafe impl Send for Span {}

enum Job {
    /// The file's hash starts from this state (a fresh one, or a held prefix's).
    Seed(u32, Box<blake3::Hasher>),
    Span(u32, Span),
    /// The file's hash is dropped (its bytes cannot be shown): nothing is answered for it.
    Forget(u32),
    /// Answer the file's BLAKE3 (or `None` without a state).
    Finish(u32),
    /// Answer `None`: every earlier job is done.
    Barrier,
}

/// The hashing thread's end of the pipe.
struct Pipe {
    jobs: SyncSender<Job>,
    answers: Receiver<Option<[u8; 32]>>,
    /// Set when the session is abandoned: queued spans are skipped, the one being hashed is
    /// left between two pieces.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pipe {
    fn start(files: usize, par: bool) -> std::io::Result<Pipe> {
        let (jobs, rx) = mpsc::sync_channel(DEPTH);
        let (tx, answers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("pfs-hash".into())
            .spawn(move || work(files, par, rx, tx, s))?;
        Ok(Pipe {
            jobs,
            answers,
            stop,
            thread: Some(thread),
        })
    }

    /// Send `job` and, if `answer`, wait for the thread's answer. `Err` when the thread is
    /// gone (it only ends early by a panic): then it reads nothing any more.
    fn call(&self, job: Job, answer: bool) -> Result<Option<[u8; 32]>, ()> {
        self.jobs.send(job).map_err(|_| ())?;
        if answer {
            self.answers.recv().map_err(|_| ())
        } else {
            Ok(None)
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel ends the thread's loop once the queue is drained (skipped).
        let (dead, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hashing thread: jobs in order until the channel closes.
fn work(
    files: usize,
    par: bool,
    jobs: Receiver<Job>,
    answers: mpsc::Sender<Option<[u8; 32]>>,
    stop: Arc<AtomicBool>,
) {
    let mut state: Vec<Option<Box<blake3::Hasher>>> = (0..files).map(|_| None).collect();
    for job in jobs {
        match job {
            Job::Seed(f, h) => state[f as usize] = Some(h),
            Job::Forget(f) => state[f as usize] = None,
            Job::Span(f, s) => {
                let Some(h) = state[f as usize].as_mut() else {
                    continue;
                };
                if stop.load(Ordering::Relaxed) {
                    state[f as usize] = None;
                    continue;
                }
                // Safety: `Hashes::feed`'s caller keeps these bytes allocated and unwritten
                // until this job is done: until a later `Finish` of the file or a `Barrier`
                // is answered, or the thread is joined; all of those come after this job.
                let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
                for p in bytes.chunks(PIECE) {
                    if stop.load(Ordering::Relaxed) {
                        state[f as usize] = None;
                        break;
                    }
                    feed(h, p, par);
                }
            }
            Job::Finish(f) => {
                let h = state[f as usize].take();
                let _ = answers.send(h.map(|h| *h.finalize().as_bytes()));
            }
            Job::Barrier => {
                let _ = answers.send(None);
            }
        }
    }
}

/// Where one file's hash stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing fed yet: the first span starts a fresh hash (it starts at offset 0).
    Fresh,
    /// Being fed.
    Live,
    /// Dropped: the sink hashes the file at the end.
    Lost,
}

/// Every file's hash of one session, inline or on the hashing thread.
pub(crate) struct Hashes {
    state: Vec<State>,
    /// The states, when hashed inline.
    inline: Vec<Option<Box<blake3::Hasher>>>,
    pipe: Option<Pipe>,
}

impl Default for Hashes {
    fn default() -> Self {
        Hashes::new(0, false)
    }
}

impl Hashes {
    /// Hashes for `files` files, on a thread of their own if `thread` (and it starts).
    pub fn new(files: usize, thread: bool) -> Self {
        // On the thread, rayon's pool is used only with a core to spare beyond the state
        // machine's and the thread's own.
        let pipe = thread
            .then(|| Pipe::start(files, crate::util::cores() > 2))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "no hashing thread: hashing inline"))
                    .ok()
            });
        Hashes {
            state: vec![State::Fresh; files],
            inline: if pipe.is_some() {
                Vec::new()
            } else {
                (0..files).map(|_| None).collect()
            },
            pipe,
        }
    }

    /// Whether the hashes run on the thread.
    #[cfg(test)]
    pub fn threaded(&self) -> bool {
        self.pipe.is_some()
    }

    /// Whether file `fi`'s hash is being fed (or not started: the next span starts it).
    #[cfg(test)]
    pub fn feeding(&self, fi: usize) -> bool {
        self.state[fi] != State::Lost
    }

    /// File `fi`'s hash continues from `h` (a held prefix's state).
    pub fn seed(&mut self, fi: usize, h: blake3::Hasher) {
        self.state[fi] = State::Live;
        let h = Box::new(h);
        match &self.pipe {
            Some(p) => {
                if p.call(Job::Seed(fi as u32, h), false).is_err() {
                    self.state[fi] = State::Lost;
                }
            }
            None => self.inline[fi] = Some(h),
        }
    }

    /// Feed the next `bytes` of file `fi` (they follow what was fed before, in file order).
    ///
    /// # Safety
    /// With the thread on, `bytes` is read after this returns. The caller keeps that memory
    /// allocated and never writes it again until [`Hashes::finish`] of `fi`, or
    /// [`Hashes::settle`], [`Hashes::drain`] or the drop of `self` returned. (Inline, it is
    /// read before this returns.)
    pub unsafe fn feed(&mut self, fi: usize, bytes: &[u8]) {
        match self.state[fi] {
            State::Lost => return,
            State::Fresh => self.seed(fi, blake3::Hasher::new()),
            State::Live => {}
        }
        match &self.pipe {
            Some(p) => {
                let s = Span {
                    ptr: bytes.as_ptr(),
                    len: bytes.len(),
                };
                if p.call(Job::Span(fi as u32, s), false).is_err() {
                    self.state[fi] = State::Lost;
                }
            }
            None => {
                if let Some(h) = self.inline[fi].as_mut() {
                    // inline, spans of a megabyte and more go over every core
                    feed(h, bytes, true);
                }
            }
        }
    }

    /// Drop file `fi`'s hash: its bytes cannot be shown (the sink hashes it at the end).
    pub fn forget(&mut self, fi: usize) {
        if self.state[fi] == State::Live {
            match &self.pipe {
                Some(p) => {
                    let _ = p.call(Job::Forget(fi as u32), false);
                }
                None => self.inline[fi] = None,
            }
        }
        self.state[fi] = State::Lost;
    }

    /// File `fi`'s BLAKE3 over everything fed, once the thread has hashed it (`None`: not
    /// fed, dropped, or the thread is gone). Every span of `fi` is read when this returns.
    pub fn finish(&mut self, fi: usize) -> Option<[u8; 32]> {
        let was = std::mem::replace(&mut self.state[fi], State::Lost);
        if was != State::Live {
            return None;
        }
        match &self.pipe {
            Some(p) => p.call(Job::Finish(fi as u32), true).ok().flatten(),
            None => self.inline[fi].take().map(|h| *h.finalize().as_bytes()),
        }
    }

    /// Wait until the thread has read every span fed so far (the hashes go on).
    pub fn drain(&mut self) {
        if let Some(p) = &self.pipe {
            if p.call(Job::Barrier, true).is_err() {
                self.settle();
            }
        }
    }

    /// The session is abandoned: stop and join the thread (spans still queued are skipped),
    /// drop every hash. Nothing reads the sink's memory once this returns.
    pub fn settle(&mut self) {
        self.pipe = None;
        self.inline.clear();
        self.state.fill(State::Lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| ((i * 2654435761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn feeding_in_pieces_large_and_small_gives_blake3_of_the_whole() {
        let data = data((5 << 20) + 12_345);
        // pieces below and above PAR_HASH_MIN, at offsets that are not chunk-aligned
        let cuts = [
            0,
            1,
            1500,
            300_000,
            300_000 + (1 << 20),
            3 << 20,
            data.len(),
        ];
        for par in [false, true] {
            let mut h = blake3::Hasher::new();
            for w in cuts.windows(2) {
                feed(&mut h, &data[w[0]..w[1]], par);
            }
            assert_eq!(h.finalize(), blake3::hash(&data));
        }
    }

    #[test]
    fn the_thread_gives_the_inline_hashes_for_interleaved_files() {
        let files: Vec<Vec<u8>> = [0usize, 1, 70_000, (9 << 20) + 3]
            .iter()
            .map(|&n| data(n))
            .collect();
        for thread in [false, true] {
            let mut h = Hashes::new(files.len(), thread);
            assert_eq!(h.threaded(), thread);
            let mut at = vec![0usize; files.len()];
            // round-robin steps of different sizes per file
            let mut busy = true;
            while busy {
                busy = false;
                for (i, f) in files.iter().enumerate() {
                    let n = (1000 + i * 300_007).min(f.len() - at[i]);
                    if n > 0 {
                        // Safety: `files` outlives `h` and is never written.
                        unsafe { h.feed(i, &f[at[i]..at[i] + n]) };
                        at[i] += n;
                        busy = true;
                    }
                }
            }
            for (i, f) in files.iter().enumerate() {
                let want = (!f.is_empty()).then(|| *blake3::hash(f).as_bytes());
                assert_eq!(h.finish(i), want, "file {i}, thread {thread}");
                assert_eq!(h.finish(i), None, "finished twice");
            }
        }
    }

    #[test]
    fn a_seeded_hash_continues_and_a_forgotten_one_answers_nothing() {
        let d = data(3 << 20);
        for thread in [false, true] {
            let mut h = Hashes::new(2, thread);
            let mut held = blake3::Hasher::new();
            held.update(&d[..1 << 20]);
            h.seed(0, held);
            // Safety: `d` outlives `h` and is never written.
            unsafe {
                h.feed(0, &d[1 << 20..]);
                h.feed(1, &d);
            }
            h.forget(1);
            unsafe { h.feed(1, &d) }; // dropped: not restarted on a suffix
            assert!(!h.feeding(1));
            h.drain();
            assert_eq!(h.finish(0), Some(*blake3::hash(&d).as_bytes()));
            assert_eq!(h.finish(1), None);
        }
    }

    #[test]
    fn settle_stops_the_thread_and_drops_every_hash() {
        let d = data(64 << 20);
        let mut h = Hashes::new(1, true);
        // Safety: `d` outlives `h` and is never written.
        unsafe { h.feed(0, &d) };
        h.settle();
        assert!(!h.threaded());
        assert!(!h.feeding(0));
        assert_eq!(h.finish(0), None);
        drop(d); // nothing reads it any more
        drop(h);
    }

    #[test]
    fn dropping_joins_the_thread() {
        let h = Hashes::new(1, true);
        let Some(p) = h.pipe.as_ref() else {
            panic!("no thread")
        };
        let t = p.thread.as_ref().expect("running").thread().clone();
        let weak = Arc::downgrade(&p.stop);
        drop(h);
        // The thread held the other reference to `stop`: it is gone once joined.
        assert_eq!(
            weak.strong_count(),
            0,
            "thread {:?} still holds its state",
            t.id()
        );
    }
}
