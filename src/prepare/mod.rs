//! The prepare step, outside the transfer state machine: the codec work that turns planned
//! files into what [`crate::proto::Sender`] sends. Whole files ([`prepare`]): each blueprint
//! is checked against the snapshot, then packed into a block stream (`blueprint::block`) when
//! that pays, or lowered to a direct blueprint without self copies. Streamed files
//! ([`stream`]): a producer thread plans a file window by window, packs each window into
//! blocks and hands them over a bounded channel while the sender already transmits.

pub mod stream;

use crate::blueprint::{block, Blueprint, Source};
use crate::proto::sender::{OutgoingFile, SendError, SendFile};
use crate::proto::PackPolicy;
use crate::wire::payload::{FileMode, RAW_PIECE, SNAP_PIECE};

/// Payload bytes the direct mode spends on a blueprint (pieces and their headers; the
/// run and frame headers are about the same per datagram in both modes).
pub fn direct_payload_estimate(bp: &Blueprint) -> u64 {
    bp.segments
        .iter()
        .map(|s| match s.src {
            Source::Snap { .. } => SNAP_PIECE as u64,
            // self copies and covers go as the raw bytes they stand for in direct mode
            Source::Raw | Source::SelfCopy { .. } | Source::Cover { .. } => {
                RAW_PIECE as u64 + s.len as u64
            }
        })
        .sum()
}

/// True when the blueprint is mostly spill (90% of the direct bytes, at least 1 MiB) and
/// samples of it do not compress (97% or more at zstd level 1): packing cannot pay, so the
/// sender does not spend the time to encode it.
fn incompressible_spill(bp: &Blueprint, direct: u64) -> bool {
    const SAMPLE: usize = 64 << 10;
    let n = bp.spill.len();
    if n < (1 << 20) || (n as u64) * 10 < direct * 9 {
        return false;
    }
    let (mut raw, mut packed) = (0usize, 0usize);
    for k in 0..4 {
        let at = (n - SAMPLE) / 3 * k;
        let s = &bp.spill[at..at + SAMPLE];
        match zstd::bulk::compress(s, 1) {
            Ok(z) => packed += z.len(),
            Err(_) => return false,
        }
        raw += SAMPLE;
    }
    packed * 100 >= raw * 97
}

/// Decide how a file travels and pack it if it goes packed: `(mode, packed stream)`.
/// `Auto` packs when the packed stream is below 95% of the direct estimate.
pub fn choose_mode(
    bp: &Blueprint,
    policy: PackPolicy,
    opts: &block::EncodeOptions,
) -> Result<(FileMode, Vec<u8>), std::io::Error> {
    if bp.file_len == 0 || policy == PackPolicy::Never {
        return Ok((FileMode::Direct, Vec::new()));
    }
    let direct = direct_payload_estimate(bp);
    if policy == PackPolicy::Auto && incompressible_spill(bp, direct) {
        return Ok((FileMode::Direct, Vec::new()));
    }
    let packed = block::encode(bp, opts)?;
    let pays = (packed.len() as u128) * 100 < (direct as u128) * 95;
    if policy == PackPolicy::Always || pays {
        Ok((FileMode::Packed, packed))
    } else {
        Ok((FileMode::Direct, Vec::new()))
    }
}

/// Prepare whole `files` (blueprints into the snapshot `snapshot_id`, whose bytes are
/// `snapshot`) for [`crate::proto::Sender::new`]: validate each against the snapshot, pack
/// it per `pack`, lower a direct one's self copies (direct pieces land in any order, so a
/// copy could be applied before its source; packed blocks are applied in file order and
/// keep them).
///
/// `coded` may hold, per file (by index; missing = none), a packed stream to send as it is
/// instead of packing the blueprint: a `.pbb` sent as itself ([`crate::blueprint::block::from_pbb`];
/// the blueprint, which must be what the stream decodes to, is still validated). It is used
/// unless the pack policy is `Never`.
pub fn prepare(
    files: Vec<SendFile>,
    mut coded: Vec<Option<Vec<u8>>>,
    snapshot_id: [u8; 32],
    snapshot: &[u8],
    pack: PackPolicy,
    opts: &block::EncodeOptions,
) -> Result<Vec<OutgoingFile>, SendError> {
    let mut out = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        if f.blueprint.snapshot_id != snapshot_id {
            return Err(SendError::MixedSnapshots {
                file: i,
                expected: snapshot_id,
                found: f.blueprint.snapshot_id,
            });
        }
        f.blueprint
            .validate(snapshot.len() as u64)
            .map_err(|source| SendError::InvalidBlueprint { file: i, source })?;
        let given = coded
            .get_mut(i)
            .and_then(Option::take)
            .filter(|_| pack != PackPolicy::Never && f.blueprint.file_len > 0);
        let (mode, packed) = match given {
            Some(stream) => (FileMode::Packed, stream),
            None => choose_mode(&f.blueprint, pack, opts)
                .map_err(|source| SendError::Pack { file: i, source })?,
        };
        out.push(match mode {
            FileMode::Direct => {
                let blueprint = if f.blueprint.has_self_copies() || f.blueprint.has_covers() {
                    f.blueprint
                        .lower_basic(snapshot)
                        .map_err(|source| SendError::InvalidBlueprint { file: i, source })?
                } else {
                    f.blueprint
                };
                OutgoingFile::Direct {
                    name: f.name,
                    blueprint,
                }
            }
            _ => OutgoingFile::Packed {
                name: f.name,
                size: f.blueprint.file_len,
                hash: f.blueprint.file_hash,
                stream: packed,
            },
        });
    }
    Ok(out)
}

/// `n` bytes of xorshift64 noise from `seed` (incompressible test data).
#[cfg(test)]
pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{Segment, Transform};

    #[test]
    fn auto_packs_compressible_spill_and_keeps_random_data_direct() {
        let mk = |spill: Vec<u8>| Blueprint {
            snapshot_id: [1; 32],
            file_len: spill.len() as u64,
            file_hash: [0; 32],
            segments: crate::blueprint::raw_segments(spill.len() as u64),
            spill,
        };
        let o = block::EncodeOptions::default();
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| b"abcdefgh"[(i % 8) as usize])
            .collect();
        let (m, packed) = choose_mode(&mk(text.clone()), PackPolicy::Auto, &o).unwrap();
        assert_eq!(m, FileMode::Packed);
        assert!(packed.len() < text.len() / 10);
        let random = noise(0x9e3779b97f4a7c15, 200_000);
        let (m, _) = choose_mode(&mk(random.clone()), PackPolicy::Auto, &o).unwrap();
        assert_eq!(m, FileMode::Direct);
        let (m, _) = choose_mode(&mk(random), PackPolicy::Always, &o).unwrap();
        assert_eq!(m, FileMode::Packed);
        let (m, _) = choose_mode(&mk(text.clone()), PackPolicy::Never, &o).unwrap();
        assert_eq!(m, FileMode::Direct);
        // Large incompressible spill is recognised from samples, without encoding it.
        let big = noise(7, 2 << 20);
        let bp = mk(big);
        assert!(incompressible_spill(&bp, direct_payload_estimate(&bp)));
        let bp = mk(text.repeat(11));
        assert!(!incompressible_spill(&bp, direct_payload_estimate(&bp)));
    }

    #[test]
    fn bad_blueprints_are_refused_and_direct_self_copies_lowered() {
        let snap = vec![0u8; 16];
        let bp = |id| Blueprint {
            snapshot_id: id,
            file_len: 20,
            file_hash: [0; 32],
            segments: vec![Segment {
                len: 20,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            }],
            spill: vec![],
        };
        let one = |name: &str, id| {
            vec![SendFile {
                name: name.into(),
                blueprint: bp(id),
            }]
        };
        let o = block::EncodeOptions::default();
        let prep = |files, snap: &[u8], pack| prepare(files, Vec::new(), [1; 32], snap, pack, &o);
        assert!(matches!(
            prep(one("a", [1; 32]), &snap, PackPolicy::Auto),
            Err(SendError::InvalidBlueprint { .. })
        ));
        assert!(matches!(
            prep(one("a", [2; 32]), &[0u8; 64], PackPolicy::Auto),
            Err(SendError::MixedSnapshots { .. })
        ));
        // self copies: a direct file carries the bytes they stand for, a packed file keeps
        // them (blocks are applied in file order)
        let mut selfy = bp([1; 32]);
        selfy.segments = vec![
            Segment {
                len: 4,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            },
            Segment {
                len: 16,
                src: Source::SelfCopy { off: 1 },
            },
        ];
        let files = vec![SendFile {
            name: "s".into(),
            blueprint: selfy.clone(),
        }];
        match &prep(files.clone(), &[0u8; 64], PackPolicy::Never).unwrap()[0] {
            OutgoingFile::Direct { blueprint, .. } => assert!(!blueprint.has_self_copies()),
            f => panic!("{f:?}"),
        }
        match &prep(files, &[0u8; 64], PackPolicy::Always).unwrap()[0] {
            OutgoingFile::Packed { stream, .. } => {
                let bp = block::decode_all(stream, &Default::default(), [1; 32], 64, 20, [0; 32])
                    .expect("decodes");
                assert!(bp
                    .segments
                    .iter()
                    .any(|s| matches!(s.src, Source::SelfCopy { .. })));
            }
            f => panic!("{f:?}"),
        }
    }
}
