//! Forked consumer processes and the stop signals.
//!
//! Children die with the parent (`PR_SET_PDEATHSIG` = `SIGKILL`, checked against a race with
//! the parent's exit), ignore SIGINT/SIGTERM (the parent asks them to stop through shared
//! memory, so a terminal's Ctrl-C reaches the whole group without tearing anything down
//! half-way), and are always reaped: [`Children`] kills and waits for any child still alive
//! when it is dropped, on every error path.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived since [`StopSignals::install`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// SIGINT/SIGTERM set a flag ([`stop_requested`]) while this guard lives; the previous
/// handlers come back when it is dropped.
pub struct StopSignals {
    old: [(libc::c_int, libc::sigaction); 2],
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        STOP.store(false, Ordering::SeqCst);
        let mut old = [(0, zeroed_sigaction()), (0, zeroed_sigaction())];
        for (i, sig) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
            let mut sa = zeroed_sigaction();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            // Safety: `sa.sa_mask` is a valid sigset_t owned here.
            unsafe { libc::sigemptyset(&mut sa.sa_mask) };
            sa.sa_flags = libc::SA_RESTART;
            old[i].0 = sig;
            // Safety: the handler only stores to an atomic (async-signal-safe); both
            // pointers are to valid sigaction values.
            if unsafe { libc::sigaction(sig, &sa, &mut old[i].1) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(StopSignals { old })
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (sig, sa) in &self.old {
            // Safety: restoring the handler saved by `install`.
            unsafe { libc::sigaction(*sig, sa, std::ptr::null_mut()) };
        }
    }
}

fn zeroed_sigaction() -> libc::sigaction {
    // Safety: sigaction is a plain C struct for which all-zero is a valid value (SIG_DFL).
    unsafe { std::mem::zeroed() }
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes on the machine.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling process in nanoseconds (all its threads).
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: `ts` is a valid timespec to write; the clock ids are standard.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(st: libc::c_int) -> Exit {
        if libc::WIFEXITED(st) {
            Exit::Code(libc::WEXITSTATUS(st))
        } else {
            Exit::Signal(libc::WTERMSIG(st))
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Exit code of a child whose function panicked.
pub const EXIT_PANIC: i32 = 101;

/// Fork a child that runs `f` and `_exit`s with its return value (101 if it panics). The
/// child gets SIGKILL when the parent dies, and ignores SIGINT and SIGTERM.
///
/// # Safety
/// Forking copies only the calling thread. If other threads exist, they may hold locks
/// (the allocator's among them) that stay locked forever in the child: `f` must then not
/// allocate or take locks. A single-threaded caller has no such limit.
pub unsafe fn fork_child(f: impl FnOnce() -> i32) -> std::io::Result<libc::pid_t> {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Safety: reading our own pid.
    let parent = unsafe { libc::getpid() };
    // Safety: the caller upholds the threading contract above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // In the child.
    // Safety: prctl/signal/getppid are async-signal-safe syscalls with valid arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            // The parent died before the prctl took effect.
            libc::_exit(1);
        }
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(EXIT_PANIC);
    // Safety: leave at once, without running the parent's atexit handlers or destructors
    // of values the child only has copies of.
    unsafe { libc::_exit(code) }
}

/// Forked children not yet reaped. Dropping it kills (SIGKILL) and reaps every one left.
#[derive(Debug, Default)]
pub struct Children {
    live: Vec<libc::pid_t>,
}

impl Children {
    pub fn new() -> Self {
        Children::default()
    }

    /// Track a forked child.
    pub fn push(&mut self, pid: libc::pid_t) {
        self.live.push(pid);
    }

    /// Pids not yet reaped.
    pub fn pids(&self) -> &[libc::pid_t] {
        &self.live
    }

    /// Reap children that have exited, without blocking.
    pub fn try_reap(&mut self) -> Vec<(libc::pid_t, Exit)> {
        let mut done = Vec::new();
        self.live.retain(|&pid| {
            let mut st = 0;
            // Safety: waiting for our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            if r == pid {
                done.push((pid, Exit::from_status(st)));
                false
            } else {
                r == 0
            }
        });
        done
    }

    /// Wait for every child, up to `timeout`; children still alive then are killed. Returns
    /// each child's exit.
    pub fn wait_all(&mut self, timeout: std::time::Duration) -> Vec<(libc::pid_t, Exit)> {
        let until = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while !self.live.is_empty() {
            out.extend(self.try_reap());
            if self.live.is_empty() {
                break;
            }
            if std::time::Instant::now() >= until {
                out.extend(self.kill_all());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        out
    }

    /// SIGKILL and reap every child left.
    pub fn kill_all(&mut self) -> Vec<(libc::pid_t, Exit)> {
        let mut out = Vec::new();
        for pid in self.live.drain(..) {
            let mut st = 0;
            // Safety: signalling and waiting for our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                if libc::waitpid(pid, &mut st, 0) == pid {
                    out.push((pid, Exit::from_status(st)));
                }
            }
        }
        out
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}
