//! Resume and skip, both sides' parts (no I/O: the sink and the sender's producer do the file
//! work).
//!
//! The receiver, once the manifest is accepted, asks its sink what it already holds of each
//! streamed file ([`FileSink::held`]): a final file of that name and size (its BLAKE3), or a
//! resumable temporary file's durable prefix (the BLAKE3 of the prefix). The Accept says how
//! many entries follow; [`Offers`] sends them in `Held` frames after each Accept. The sender
//! ([`Expected`]) stays in the handshake until it has them all, checks them against its
//! manifest, and hands them to whoever produces the file's blocks. That producer compares
//! them with its own file and starts the file's block stream with a
//! [`crate::wire::held::ResumeRecord`] when it continues (after the prefix, or at the end:
//! skip), or with a plain block when it starts over; the receiver's assembly then adopts or
//! voids what it held ([`FileSink::adopt`]). The whole file's BLAKE3 still decides: the
//! receiver continues the hash state of the held bytes, so the prefix is hashed once, when
//! it is offered.

use super::manifest::RecvFile;
use super::sink::{FileSink, Held};
use crate::wire::held::{Held as HeldPayload, HeldEntry, HeldKind};
use crate::wire::payload::FileMode;
use std::collections::{BTreeMap, VecDeque};

/// The receiver's offers for one session.
#[derive(Default)]
pub(crate) struct Offers {
    /// Per file: what was offered (with the hash state), until the file's stream says what
    /// the sender chose.
    pub held: Vec<Option<Held>>,
    frames: Vec<HeldPayload>,
    queue: VecDeque<usize>,
    /// Entries in all (the Accept's `held`).
    pub count: u32,
}

impl Offers {
    /// Ask the sink about every streamed, non-empty file; entries are cut into frames of
    /// `budget` payload bytes.
    pub fn collect<S: FileSink>(sink: &mut S, files: &[RecvFile], budget: usize) -> Self {
        let mut held = Vec::with_capacity(files.len());
        let mut entries = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let h = if f.mode == FileMode::Streamed && f.size > 0 {
                sink.held(i as u32).filter(|h| match h.kind {
                    HeldKind::Whole => h.len == f.size,
                    HeldKind::Prefix => h.len > 0 && h.len < f.size,
                })
            } else {
                None
            };
            if let Some(h) = &h {
                entries.push(HeldEntry {
                    file: i as u32,
                    kind: h.kind,
                    len: h.len,
                    hash: h.hash(),
                });
            }
            held.push(h);
        }
        let per = HeldPayload::capacity(budget).clamp(1, u16::MAX as usize);
        let frames: Vec<HeldPayload> = entries
            .chunks(per)
            .map(|c| HeldPayload {
                entries: c.to_vec(),
            })
            .collect();
        Offers {
            held,
            count: entries.len() as u32,
            frames,
            queue: VecDeque::new(),
        }
    }

    /// An Accept went out: its Held frames follow.
    pub fn queue_all(&mut self) {
        self.queue = (0..self.frames.len()).collect();
    }

    /// The next Held payload to send, if any.
    pub fn next(&mut self) -> Option<&HeldPayload> {
        let k = self.queue.pop_front()?;
        self.frames.get(k)
    }

    /// The offer for `file`, taken once its stream has begun.
    pub fn take(&mut self, file: usize) -> Option<Held> {
        self.held.get_mut(file).and_then(Option::take)
    }
}

/// Why the sender refuses the receiver's Held entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHeld;

/// The sender's collection of the receiver's offers.
#[derive(Default)]
pub(crate) struct Expected {
    /// From the Accept, once it arrived.
    pub count: Option<u32>,
    pub entries: BTreeMap<u32, HeldEntry>,
}

impl Expected {
    /// Take one Held frame; each entry must name a streamed file of the manifest
    /// (`files[i] = (mode, size)`), a whole file its exact size, a prefix less than it.
    pub fn on_held(
        &mut self,
        entries: &[HeldEntry],
        files: &[(FileMode, u64)],
    ) -> Result<(), BadHeld> {
        for e in entries {
            let Some(&(mode, size)) = files.get(e.file as usize) else {
                return Err(BadHeld);
            };
            let ok = mode == FileMode::Streamed
                && match e.kind {
                    HeldKind::Whole => e.len == size,
                    HeldKind::Prefix => e.len > 0 && e.len < size,
                };
            if !ok {
                return Err(BadHeld);
            }
            if let Some(prev) = self.entries.insert(e.file, *e) {
                if prev != *e {
                    return Err(BadHeld);
                }
            }
        }
        if self.count.is_some_and(|c| self.entries.len() > c as usize) {
            return Err(BadHeld);
        }
        Ok(())
    }

    /// The Accept announced `count` entries.
    pub fn on_accept(&mut self, count: u32) -> Result<(), BadHeld> {
        if self.entries.len() > count as usize {
            return Err(BadHeld);
        }
        self.count = Some(count);
        Ok(())
    }

    /// Every announced entry is here.
    pub fn complete(&self) -> bool {
        self.count.is_some_and(|c| self.entries.len() == c as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(file: u32, kind: HeldKind, len: u64) -> HeldEntry {
        HeldEntry {
            file,
            kind,
            len,
            hash: [1; 32],
        }
    }

    #[test]
    fn the_sender_checks_offers_against_its_manifest() {
        let files = [
            (FileMode::Streamed, 100),
            (FileMode::Direct, 100),
            (FileMode::Streamed, 50),
        ];
        let ok = |es: &[HeldEntry]| Expected::default().on_held(es, &files).is_ok();
        assert!(ok(&[
            e(0, HeldKind::Whole, 100),
            e(2, HeldKind::Prefix, 49)
        ]));
        assert!(!ok(&[e(3, HeldKind::Whole, 1)]), "no such file");
        assert!(!ok(&[e(1, HeldKind::Whole, 100)]), "not a streamed file");
        assert!(!ok(&[e(0, HeldKind::Whole, 99)]), "whole but another size");
        assert!(
            !ok(&[e(0, HeldKind::Prefix, 100)]),
            "a prefix as long as the file"
        );
        assert!(
            !ok(&[e(0, HeldKind::Prefix, 101)]),
            "a prefix beyond the file"
        );
        let mut x = Expected::default();
        x.on_held(&[e(0, HeldKind::Prefix, 10)], &files).unwrap();
        assert!(
            x.on_held(&[e(0, HeldKind::Prefix, 10)], &files).is_ok(),
            "a repeat"
        );
        assert!(
            x.on_held(&[e(0, HeldKind::Prefix, 11)], &files).is_err(),
            "a change"
        );
        assert!(!x.complete());
        assert!(x.on_accept(0).is_err(), "more entries than announced");
        x.on_accept(2).unwrap();
        assert!(!x.complete());
        x.on_held(&[e(2, HeldKind::Whole, 50)], &files).unwrap();
        assert!(x.complete());
    }
}
