//! Helpers shared by the integration tests: a seeded generator and hand-made blueprints.
#![allow(dead_code)]

pub mod cli;
pub mod keys;
pub mod netns;
pub mod privileged;
pub mod service;

use packetfs::blueprint::{apply, Blueprint, Segment, Source, Transform};
use packetfs::proto::SendFile;

/// splitmix64: small, seeded, good enough for test schedules.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Like [`Rng::bytes`], eight bytes a step (another stream: for benchmarks' large files).
    pub fn words(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// The protocol timing the benchmarks use (50 ms first RTT guess, 5-500 ms probe timeout,
/// 10 s idle timeout, 2 ms ACK delay).
pub fn bench_timing() -> packetfs::proto::Timing {
    packetfs::proto::Timing {
        initial_rtt: std::time::Duration::from_millis(50),
        min_pto: std::time::Duration::from_millis(5),
        max_pto: std::time::Duration::from_millis(500),
        idle_timeout: std::time::Duration::from_secs(10),
        ack_delay: std::time::Duration::from_millis(2),
    }
}

/// The usize in environment variable `name`, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub const SNAP_ID: [u8; 32] = [0x5a; 32];

/// A file of `len` bytes and its blueprint: a mix of snapshot segments (id/xor/add) and raw
/// spill, in proportions drawn from `rng`.
pub fn make_file(rng: &mut Rng, snap: &[u8], len: usize) -> (Vec<u8>, Blueprint) {
    make_file_with(rng, snap, len, false)
}

/// [`make_file`], with raw spill of low-entropy text when `text` (so that packing pays).
pub fn make_file_with(rng: &mut Rng, snap: &[u8], len: usize, text: bool) -> (Vec<u8>, Blueprint) {
    let raw_share = rng.below(101);
    let mut content = Vec::with_capacity(len);
    let mut segments = Vec::new();
    let mut spill = Vec::new();
    while content.len() < len {
        let n = (1 + rng.below(3000) as usize).min(len - content.len());
        if rng.below(100) < raw_share {
            let b = if text {
                (0..n)
                    .map(|_| b"the quick brown fox "[rng.below(20) as usize])
                    .collect()
            } else {
                rng.bytes(n)
            };
            content.extend_from_slice(&b);
            spill.extend_from_slice(&b);
            segments.push(Segment {
                len: n as u32,
                src: Source::Raw,
            });
        } else {
            let off = rng.below((snap.len() - n) as u64 + 1) as usize;
            segments.push(random_op_segment(rng, snap, off, n, &mut content));
        }
    }
    let bp = blueprint_of(&content, segments, spill);
    bp.validate(snap.len() as u64).unwrap();
    (content, bp)
}

/// A snapshot segment of `n` bytes at `off` with a random op (id/xor/add) and imm8, its bytes
/// appended to `content`.
fn random_op_segment(
    rng: &mut Rng,
    snap: &[u8],
    off: usize,
    n: usize,
    content: &mut Vec<u8>,
) -> Segment {
    let op = Transform::ALL[rng.below(3) as usize];
    let imm = if op == Transform::Id {
        0
    } else {
        rng.next() as u8
    };
    apply::push_snap_segment(snap, op, off, imm, n, content)
}

/// The blueprint of `content` made of `segments` and `spill` against the tests' snapshot id.
fn blueprint_of(content: &[u8], segments: Vec<Segment>, spill: Vec<u8>) -> Blueprint {
    Blueprint {
        snapshot_id: SNAP_ID,
        file_len: content.len() as u64,
        file_hash: *blake3::hash(content).as_bytes(),
        segments,
        spill,
    }
}

/// A file of `len` bytes made of 4 KiB snapshot segments (id/xor/add), no spill: what the
/// snapshot covers whole.
pub fn covered_file(rng: &mut Rng, snap: &[u8], len: usize) -> (Vec<u8>, Blueprint) {
    let mut content = Vec::with_capacity(len);
    let mut segments = Vec::new();
    while content.len() < len {
        let n = 4096.min(len - content.len());
        let off = rng.below((snap.len() - n) as u64) as usize;
        segments.push(random_op_segment(rng, snap, off, n, &mut content));
    }
    let bp = blueprint_of(&content, segments, vec![]);
    (content, bp)
}

/// The blueprint that sends `content` whole as raw spill (one raw segment per 4 GiB).
pub fn raw_blueprint(content: Vec<u8>) -> Blueprint {
    Blueprint {
        snapshot_id: SNAP_ID,
        file_len: content.len() as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments: packetfs::blueprint::raw_segments(content.len() as u64),
        spill: content,
    }
}

/// A file of `len` random bytes sent entirely as raw spill (every byte travels).
pub fn raw_file(rng: &mut Rng, name: &str, len: usize) -> (Vec<u8>, SendFile) {
    let content = rng.bytes(len);
    let bp = Blueprint {
        snapshot_id: SNAP_ID,
        file_len: len as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments: content
            .chunks(60_000)
            .map(|c| Segment {
                len: c.len() as u32,
                src: Source::Raw,
            })
            .collect(),
        spill: content.clone(),
    };
    (
        content,
        SendFile {
            name: name.into(),
            blueprint: bp,
        },
    )
}
