//! The receiver's manifest: Hello chunks collected into the file list, refused against the
//! limits before anything is allocated, and the accepted files with their stream offsets.

use super::sink::{sanitize_name, SinkFile};
use super::{Reason, ReceiverConfig};
use crate::blueprint::block;
use crate::wire::payload::{Attrs, EntryKind, FileEntry, FileMode, Hello};
use std::collections::HashMap;

/// The most stream bytes a streamed file's reassembly window holds: twice the largest block
/// the limits allow (64 MiB by default). Bytes further ahead are dropped and come again as
/// repairs, so a streamed file of any size needs this much memory at most.
pub fn stream_window(lim: &block::Limits) -> u64 {
    lim.max_body.saturating_mul(2) + 2 * block::PREFIX as u64
}

/// Reassembly memory a file needs.
pub fn held_bytes(mode: FileMode, slen: u64, lim: &block::Limits) -> u64 {
    match mode {
        FileMode::Direct => 0,
        FileMode::Packed => slen,
        FileMode::Streamed => slen.min(stream_window(lim)),
    }
}

/// The largest stream bound a streamed file of `size` bytes may declare: its size, 1/64 of
/// it and 1 MiB.
pub fn max_stream_bound(size: u64) -> u64 {
    size.saturating_add(size / 64).saturating_add(1 << 20)
}

/// One accepted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvFile {
    /// The sanitised name, relative to the output.
    pub name: String,
    pub size: u64,
    /// The BLAKE3 to match: from the manifest, or from a streamed file's end record.
    pub hash: [u8; 32],
    /// Stream offset.
    pub start: u64,
    pub mode: FileMode,
    /// Bytes the file takes in the stream (its size, its packed length, or the bound a
    /// streamed file reserves).
    pub slen: u64,
    /// Verified and committed (a directory or a link: at once, created by the sink's
    /// `finish`).
    pub done: bool,
    pub kind: EntryKind,
    pub attrs: Option<Attrs>,
    /// A link's target.
    pub target: String,
    /// Not created, and why (a link the receiver refuses).
    pub skipped: Option<super::sink::Skip>,
}

/// The manifest, while it is collected and once accepted.
#[derive(Default)]
pub(crate) struct Manifest {
    pub nfiles: u32,
    entries: Vec<Option<FileEntry>>,
    have: u32,
    /// The accepted files (empty before).
    pub files: Vec<RecvFile>,
    /// Stream length.
    pub total: u64,
    /// Sum of the file sizes.
    pub file_total: u64,
    pub files_done: u32,
}

impl Manifest {
    /// Take one Hello chunk (`first` says whether it is the session's first frame). Returns
    /// true once every entry is there.
    pub fn on_hello(
        &mut self,
        h: Hello,
        first: bool,
        cfg: &ReceiverConfig,
    ) -> Result<bool, Reason> {
        if first {
            if h.nfiles > cfg.max_files {
                return Err(Reason::TooManyFiles {
                    count: h.nfiles as u64,
                    limit: cfg.max_files as u64,
                });
            }
            self.nfiles = h.nfiles;
            self.entries = vec![None; h.nfiles as usize];
        } else if h.nfiles != self.nfiles {
            return Err(Reason::Protocol);
        }
        for (k, e) in h.entries.into_iter().enumerate() {
            let i = h.first + k as u32;
            if self.entries[i as usize].is_some() {
                continue;
            }
            if e.size > cfg.max_file_size {
                return Err(Reason::FileTooLarge {
                    file: i,
                    size: e.size,
                    limit: cfg.max_file_size,
                });
            }
            let Some(name) = sanitize_name(&e.name) else {
                return Err(Reason::BadName { file: i });
            };
            self.entries[i as usize] = Some(FileEntry { name, ..e });
            self.have += 1;
        }
        Ok(self.have == self.nfiles)
    }

    /// The manifest is complete: check the session limits and the names; returns what the
    /// sink must open. The files are laid out in the stream after this.
    pub fn accept(&mut self, cfg: &ReceiverConfig) -> Result<Vec<SinkFile>, Reason> {
        let entries: Vec<FileEntry> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|e| e.expect("complete manifest"))
            .collect();
        let mut total = 0u64;
        for e in &entries {
            total = match total.checked_add(e.size) {
                Some(t) if t <= cfg.max_total_size => t,
                _ => {
                    let total = entries.iter().fold(0u64, |a, e| a.saturating_add(e.size));
                    return Err(Reason::SessionTooLarge {
                        total,
                        limit: cfg.max_total_size,
                    });
                }
            };
        }
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(&other) = seen.get(e.name.as_str()) {
                return Err(Reason::DuplicateName {
                    file: i as u32,
                    other,
                });
            }
            seen.insert(&e.name, i as u32);
        }
        // No entry may lie beneath a file or a link of the session: its parent would have to
        // be a directory (and a path through a link the session creates is never taken).
        for (i, e) in entries.iter().enumerate() {
            let mut at = 0;
            while let Some(k) = e.name[at..].find('/') {
                at += k;
                if let Some(&other) = seen.get(&e.name[..at]) {
                    if entries[other as usize].kind != EntryKind::Dir {
                        return Err(Reason::PathConflict {
                            file: i as u32,
                            other,
                        });
                    }
                }
                at += 1;
            }
        }
        // A streamed file's bound covers its blocks, which are never much larger than the
        // file: anything beyond [`max_stream_bound`] is not a sender of this protocol.
        if entries
            .iter()
            .any(|e| e.mode == FileMode::Streamed && e.stream_len > max_stream_bound(e.size))
        {
            return Err(Reason::Protocol);
        }
        let mut packed_total = 0u64;
        for (i, e) in entries.iter().enumerate() {
            if e.mode.is_packed() {
                let held = held_bytes(e.mode, e.stream_len, &cfg.block_limits);
                packed_total = packed_total.saturating_add(held);
                if packed_total > cfg.max_packed_total {
                    return Err(Reason::PackedTooLarge {
                        file: i as u32,
                        len: e.stream_len,
                        limit: cfg.max_packed_total,
                    });
                }
            }
        }
        let sink_files = entries
            .iter()
            .map(|e| SinkFile {
                name: e.name.clone(),
                size: e.size,
                kind: e.kind,
                attrs: e.attrs,
                target: e.target.clone(),
            })
            .collect();
        let mut start = 0u64;
        self.files = entries
            .into_iter()
            .map(|e| {
                let f = RecvFile {
                    name: e.name,
                    size: e.size,
                    hash: e.hash,
                    start,
                    mode: e.mode,
                    slen: e.stream_len,
                    done: false,
                    kind: e.kind,
                    attrs: e.attrs,
                    target: e.target,
                    skipped: None,
                };
                start = start.saturating_add(e.stream_len);
                f
            })
            .collect();
        self.total = start;
        self.file_total = total;
        Ok(sink_files)
    }

    /// Every file verified.
    pub fn all_done(&self) -> bool {
        self.files_done == self.nfiles
    }

    /// BLAKE3 over the files' hashes in order (the Done frame's digest).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for f in &self.files {
            h.update(&f.hash);
        }
        *h.finalize().as_bytes()
    }
}
