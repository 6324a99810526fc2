//! Start-up marks: when each set-up step of a side finished, counted from the start of the
//! command (`pfs send` / `pfs recv`), logged at debug level under the target
//! `pfs::startup` (`pfs -vv`, or `PFS_LOG=pfs::startup=debug` for these lines alone).
//!
//! Steps: snapshot mapped (the CLI), program loaded, link attached, socket bound (one per
//! queue, from its own thread), set-up done, first frame (sent or received). They say where
//! the time before the first frame goes (docs/XDP.md, "Start-up").

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The clock origin of one side's marks, and which once-only marks were logged.
#[derive(Debug)]
pub struct StartMarks {
    origin: Instant,
    side: &'static str,
    first_tx: AtomicBool,
    first_rx: AtomicBool,
}

impl StartMarks {
    /// Marks for `side` ("send" or "recv") counted from `origin`.
    pub fn new(side: &'static str, origin: Instant) -> Self {
        StartMarks {
            origin,
            side,
            first_tx: AtomicBool::new(false),
            first_rx: AtomicBool::new(false),
        }
    }

    /// Logs that `step` finished now.
    pub fn mark(&self, step: impl std::fmt::Display) {
        mark(self.side, self.origin, step);
    }

    /// Logs the first frame handed to a tx ring (once).
    pub fn first_tx(&self) {
        if !self.first_tx.swap(true, Ordering::Relaxed) {
            self.mark("first frame sent (on a tx ring)");
        }
    }

    /// Logs the first frame taken off an rx ring (once).
    pub fn first_rx(&self) {
        if !self.first_rx.swap(true, Ordering::Relaxed) {
            self.mark("first frame received (off an rx ring)");
        }
    }
}

/// Logs that `step` of `side` finished now, `origin` being the start of the command.
pub fn mark(side: &str, origin: Instant, step: impl std::fmt::Display) {
    tracing::debug!(
        target: "pfs::startup",
        "{side} +{:.1} ms: {step}",
        origin.elapsed().as_secs_f64() * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_only_marks_fire_once() {
        let m = StartMarks::new("send", Instant::now());
        assert!(!m.first_tx.load(Ordering::Relaxed));
        m.first_tx();
        m.first_tx();
        assert!(m.first_tx.load(Ordering::Relaxed));
        assert!(!m.first_rx.load(Ordering::Relaxed));
    }
}
