//! Codec round trips: snapshot -> index -> plan -> pack -> unpack -> rebuild, bit-exact;
//! golden snapshot id and a golden .pbb kept from an earlier build of the format.

use std::path::Path;
use std::sync::OnceLock;

use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::blueprint::Level;
use packetfs::index::{default_specs, legacy_specs, IndexSet};
use packetfs::plan::{self, hints::Hints, PlanConfig};
use packetfs::pob::{self, prng::SplitMix64, HugePolicy, Recipe, Snapshot};
use proptest::prelude::*;

fn small_recipe(seed: u64) -> Recipe {
    let mut r = Recipe::default_recipe();
    r.size_mb = 1;
    r.seed = seed;
    r
}

struct Fixture {
    _dir: tempfile::TempDir,
    snap: Snapshot,
    idx: IndexSet,
    basis: Vec<u8>,
}

/// A 1 MiB synthetic snapshot plus a 200 kB random "basis" file as a corpus bank.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut basis = vec![0u8; 200_000];
        SplitMix64::new(99).fill(&mut basis);
        // make part of it text-like so short and transformed matches occur too
        for (i, b) in basis.iter_mut().enumerate().skip(100_000) {
            *b = b"the quick brown fox jumps over the lazy dog "[i % 44];
        }
        let bpath = dir.path().join("basis.bin");
        std::fs::write(&bpath, &basis).unwrap();
        let corpus = pob::collect_corpus(&[bpath]).unwrap();
        let sdir = dir.path().join("snap");
        pob::build(&small_recipe(1), &corpus, &sdir, &mut |_, _| {}).unwrap();
        let snap = Snapshot::open(&sdir, HugePolicy::Off).unwrap();
        // the cover engine's index and the segment engine's k-gram set
        let specs = [default_specs(), legacy_specs()].concat();
        let (idx, _) = IndexSet::ensure(&snap, &specs, false).unwrap();
        Fixture {
            _dir: dir,
            snap,
            idx,
            basis,
        }
    })
}

fn roundtrip(file: &[u8], level: Level, threads: usize) -> pbb::PackedSizes {
    let f = fixture();
    let cfg = PlanConfig {
        threads,
        window: 4096,
        ..PlanConfig::default()
    };
    let p = plan::plan(file, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
    p.blueprint.validate(f.snap.bytes().len() as u64).unwrap();
    let (bytes, sizes) = pbb::pack(&p.blueprint, &PackOptions::for_level(level)).unwrap();
    let bp = pbb::unpack(&bytes, &f.snap.id, f.snap.bytes().len() as u64).unwrap();
    assert_eq!(bp, p.blueprint);
    let mut out = vec![0u8; file.len()];
    bp.rebuild_into(f.snap.bytes(), &mut out).unwrap();
    assert!(out == file, "rebuilt file differs");
    assert_eq!(blake3::hash(&out).as_bytes(), &bp.file_hash);
    sizes
}

/// Edits of the basis: (position fraction, kind, length).
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Xor(usize, usize, u8),
    Add(usize, usize, u8),
}

fn apply_edits(basis: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = basis.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(p) => {
                let p = p % n;
                if p < v.len() {
                    v[p] ^= 0x20;
                }
            }
            Edit::Insert(p, b) => {
                let p = p % (v.len() + 1);
                v.splice(p..p, b.iter().copied());
            }
            Edit::Delete(p, l) => {
                let p = p % n;
                let e = (p + l).min(v.len());
                v.drain(p.min(e)..e);
            }
            Edit::Xor(p, l, k) => {
                let p = p % n;
                let e = (p + l).min(v.len());
                v[p.min(e)..e].iter_mut().for_each(|b| *b ^= k);
            }
            Edit::Add(p, l, k) => {
                let p = p % n;
                let e = (p + l).min(v.len());
                v[p.min(e)..e]
                    .iter_mut()
                    .for_each(|b| *b = b.wrapping_add(*k));
            }
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Flip),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 0usize..500).prop_map(|(p, l)| Edit::Delete(p, l)),
        (any::<usize>(), 0usize..3000, any::<u8>()).prop_map(|(p, l, k)| Edit::Xor(p, l, k)),
        (any::<usize>(), 0usize..3000, any::<u8>()).prop_map(|(p, l, k)| Edit::Add(p, l, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn random_files_roundtrip(file in proptest::collection::vec(any::<u8>(), 0..20_000),
                              threads in 1usize..4) {
        roundtrip(&file, Level::Fast, threads);
    }

    #[test]
    fn edits_of_a_corpus_basis_roundtrip_and_shrink(edits in proptest::collection::vec(edit(), 1..12),
                                                     cut in 0usize..150_000,
                                                     codec_i in 0usize..3) {
        let f = fixture();
        let target = apply_edits(&f.basis[cut.min(f.basis.len())..], &edits);
        let codec = [Level::Fast, Level::Default, Level::Max][codec_i];
        let sizes = roundtrip(&target, codec, 2);
        // the basis is in the snapshot: a lightly edited copy costs far less than its size
        if target.len() > 20_000 {
            prop_assert!(sizes.table + sizes.spill < target.len() as u64 / 4,
                         "{} + {} bytes for {} bytes", sizes.table, sizes.spill, target.len());
        }
    }
}

#[test]
fn transformed_copies_of_snapshot_bytes_become_xor_and_add_segments() {
    let f = fixture();
    let s = f.snap.bytes();
    // take a stretch of the elf_text bank, xor it, and a stretch of numeric tables, add to it
    let text = f
        .snap
        .manifest
        .banks
        .iter()
        .find(|b| b.kind == pob::BankKind::ElfText)
        .unwrap();
    let nums = f
        .snap
        .manifest
        .banks
        .iter()
        .find(|b| b.kind == pob::BankKind::NumericTables)
        .unwrap();
    let mut file: Vec<u8> = s[text.offset as usize + 1000..text.offset as usize + 5000]
        .iter()
        .map(|b| b ^ 0x5a)
        .collect();
    file.extend(
        s[nums.offset as usize + 64..nums.offset as usize + 4000]
            .iter()
            .map(|b| b.wrapping_add(17)),
    );
    let p = plan::plan(
        &file,
        &f.snap,
        &f.idx,
        &Hints::default(),
        &PlanConfig::legacy(),
    )
    .unwrap();
    let st = p.blueprint.stats();
    assert!(st.xor >= 1 && st.add >= 1, "{st:?}");
    assert!(st.raw_spill < file.len() as u64 / 10, "{st:?}");
    roundtrip(&file, Level::Fast, 1);
}

#[test]
fn empty_and_larger_than_snapshot_files_roundtrip() {
    roundtrip(&[], Level::Fast, 1);
    let f = fixture();
    let mut big = f.snap.bytes().to_vec();
    big.extend_from_slice(&f.snap.bytes()[..100_000]);
    let sizes = roundtrip(&big, Level::Fast, 2);
    assert!(
        sizes.spill < 10_000,
        "a file made of snapshot bytes spills little: {sizes:?}"
    );
}

/// The snapshot id of a small recipe, pinned: the same recipe must give the same bytes on every
/// machine and architecture. Changing a generator changes this on purpose (and the format
/// version with it).
#[test]
fn golden_snapshot_id_of_a_small_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let rep = pob::build(&small_recipe(42), &[], dir.path(), &mut |_, _| {}).unwrap();
    assert_eq!(rep.manifest.size, 1 << 20);
    assert_eq!(rep.manifest.snapshot_id, GOLDEN_ID);
    // and building twice is byte-identical
    let dir2 = tempfile::tempdir().unwrap();
    pob::build(&small_recipe(42), &[], dir2.path(), &mut |_, _| {}).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("snapshot.bin")).unwrap(),
        std::fs::read(dir2.path().join("snapshot.bin")).unwrap()
    );
}

const GOLDEN_ID: &str = include_str!("data/golden-snapshot-seed42-1mib.id");

/// A .pbb written by an earlier build (tests/data/golden-small.pbb, planned against the seed-42
/// 1 MiB recipe from `golden_file()`): today's reader must still decode it to the same file.
#[test]
fn golden_pbb_still_decodes() {
    let dir = tempfile::tempdir().unwrap();
    pob::build(&small_recipe(42), &[], dir.path(), &mut |_, _| {}).unwrap();
    let snap = Snapshot::open(dir.path(), HugePolicy::Off).unwrap();
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden-small.pbb"))
            .unwrap();
    let bp = pbb::unpack(&bytes, &snap.id, snap.bytes().len() as u64).unwrap();
    let mut out = vec![0u8; bp.file_len as usize];
    bp.rebuild_into(snap.bytes(), &mut out).unwrap();
    assert_eq!(out, golden_file(&snap));
    let st = bp.stats();
    assert!(st.id > 0 && st.raw > 0, "{st:?}");
    // and the v2 golden, written by the first build of format v2
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden-small-v2.pbb"))
            .unwrap();
    assert_eq!(pbb::read_header(&bytes).unwrap().version, 2);
    let bp = pbb::unpack(&bytes, &snap.id, snap.bytes().len() as u64).unwrap();
    let mut out = vec![0u8; bp.file_len as usize];
    bp.rebuild_into(snap.bytes(), &mut out).unwrap();
    assert_eq!(out, golden_file(&snap));
    // and the v3 golden (separate streams), written by the first build of format v3
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden-small-v3.pbb"))
            .unwrap();
    assert_eq!(pbb::read_header(&bytes).unwrap().version, 3);
    let bp = pbb::unpack_with(&bytes, &snap.id, snap.bytes()).unwrap();
    let mut out = vec![0u8; bp.file_len as usize];
    bp.rebuild_into(snap.bytes(), &mut out).unwrap();
    assert_eq!(out, golden_file(&snap));
}

/// The golden file: snapshot pieces (plain and xor'd) with text between them.
fn golden_file(snap: &Snapshot) -> Vec<u8> {
    let s = snap.bytes();
    let mut f = b"PacketFS golden file\n".to_vec();
    f.extend_from_slice(&s[300_000..302_000]);
    f.extend_from_slice(b"-- between --");
    f.extend(s[600_000..601_000].iter().map(|b| b ^ 0x33));
    f.extend_from_slice(b"end\n");
    f
}

/// Writes tests/data/golden-small-v{VERSION}.pbb; run by hand only when the format version
/// changes: `cargo test --test codec -- --ignored write_golden`. (tests/data/golden-small.pbb
/// stays at format v1 on purpose: today's reader must keep reading it.)
#[test]
#[ignore]
fn write_golden() {
    let dir = tempfile::tempdir().unwrap();
    let rep = pob::build(&small_recipe(42), &[], dir.path(), &mut |_, _| {}).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    std::fs::write(
        data.join("golden-snapshot-seed42-1mib.id"),
        &rep.manifest.snapshot_id,
    )
    .unwrap();
    let snap = Snapshot::open(dir.path(), HugePolicy::Off).unwrap();
    let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).unwrap();
    let file = golden_file(&snap);
    let cfg = PlanConfig {
        threads: 1,
        ..PlanConfig::default()
    };
    let p = plan::plan(&file, &snap, &idx, &Hints::default(), &cfg).unwrap();
    let (bytes, _) = pbb::pack(&p.blueprint, &PackOptions::default()).unwrap();
    std::fs::write(
        data.join(format!("golden-small-v{}.pbb", pbb::VERSION)),
        bytes,
    )
    .unwrap();
}

// ---- format v2: soft identity and self segments ----

use packetfs::blueprint::{Blueprint, Segment, Source, Transform};

fn plan_cfg(file: &[u8], cfg: &PlanConfig) -> (Blueprint, pbb::PackedSizes) {
    let f = fixture();
    let p = plan::plan(file, &f.snap, &f.idx, &Hints::default(), cfg).unwrap();
    p.blueprint.validate(f.snap.bytes().len() as u64).unwrap();
    let (bytes, sizes) = pbb::pack(&p.blueprint, &PackOptions::for_level(Level::Fast)).unwrap();
    let bp = pbb::unpack(&bytes, &f.snap.id, f.snap.bytes().len() as u64).unwrap();
    assert_eq!(
        bp, p.blueprint,
        "the v3 streams must decode to the planned segments"
    );
    // and so must the table with soft runs folded into soft records
    let folded = pbb::encode_table_with(&bp.segments, true);
    let records = packetfs::blueprint::varint::Reader::new(&folded)
        .u64()
        .unwrap();
    assert_eq!(pbb::decode_table(&folded, records).unwrap(), bp.segments);
    let mut out = vec![0u8; file.len()];
    bp.rebuild_into(f.snap.bytes(), &mut out).unwrap();
    assert!(out == file, "rebuilt file differs");
    // the transport's form rebuilds the same bytes and holds no self copies
    let low = bp.lower_basic(f.snap.bytes()).unwrap();
    assert!(!low.has_self_copies());
    let mut out2 = vec![0u8; file.len()];
    low.rebuild_into(f.snap.bytes(), &mut out2).unwrap();
    assert!(out2 == file, "lower_basic rebuild differs");
    (bp, sizes)
}

fn v2_cfg(threads: usize) -> PlanConfig {
    PlanConfig {
        threads,
        window: 4096,
        soft: true,
        self_segments: true,
        ..PlanConfig::default()
    }
}

/// Replace about `rate` of the bytes with different ones.
fn smudge(b: &mut [u8], rate: f64, rng: &mut SplitMix64) {
    let t = (rate * (1u64 << 32) as f64) as u64;
    for x in b.iter_mut() {
        if rng.next_u64() >> 32 < t {
            *x ^= 1 + (rng.next_u64() % 255) as u8;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Near-copies of snapshot ranges (8% of bytes edited) and repeats of the file's own
    /// earlier bytes round-trip bit-exactly through plan -> pack -> unpack -> rebuild, and
    /// through lower_basic.
    #[test]
    fn near_copies_and_internal_repeats_roundtrip(seed in any::<u64>(), pieces in 1usize..12,
                                                  threads in 1usize..3) {
        let f = fixture();
        let s = f.snap.bytes();
        let mut rng = SplitMix64::new(seed);
        let mut file = Vec::new();
        for _ in 0..pieces {
            let len = 64 + rng.below(4000) as usize;
            match rng.below(3) {
                0 => {
                    let off = rng.below((s.len() - len) as u64) as usize;
                    let at = file.len();
                    file.extend_from_slice(&s[off..off + len]);
                    smudge(&mut file[at..], 0.08, &mut rng);
                }
                1 if !file.is_empty() => {
                    let from = rng.below(file.len() as u64) as usize;
                    for k in 0..len {
                        let b = file[from + k]; // may read bytes this loop wrote (overlap)
                        file.push(b);
                    }
                }
                _ => {
                    let mut r = vec![0u8; len / 4];
                    rng.fill(&mut r);
                    file.extend_from_slice(&r);
                }
            }
        }
        plan_cfg(&file, &v2_cfg(threads));
    }
}

#[test]
fn self_segments_with_overlapping_source_rebuild_as_forward_copies() {
    // hand-made: "abc" then copy 10 bytes from offset 1 (distance 2): b c b c b c ...
    let spill = b"abcZ".to_vec();
    let mut want = b"abc".to_vec();
    for k in 0..10 {
        let b = want[1 + k];
        want.push(b);
    }
    want.push(b'Z');
    let bp = Blueprint {
        snapshot_id: [3; 32],
        file_len: want.len() as u64,
        file_hash: *blake3::hash(&want).as_bytes(),
        segments: vec![
            Segment {
                len: 3,
                src: Source::Raw,
            },
            Segment {
                len: 10,
                src: Source::SelfCopy { off: 1 },
            },
            Segment {
                len: 1,
                src: Source::Raw,
            },
        ],
        spill,
    };
    let snap = [0u8; 16];
    let mut out = vec![0u8; want.len()];
    bp.rebuild_into(&snap, &mut out).unwrap();
    assert_eq!(out, want);
    assert_eq!(&out[..9], b"abcbcbcbc");
    let (bytes, _) = pbb::pack(&bp, &PackOptions::default()).unwrap();
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        pbb::VERSION,
        "written as the current format"
    );
    let back = pbb::unpack(&bytes, &[3; 32], 16).unwrap();
    assert_eq!(back, bp);
    let low = bp.lower_basic(&snap).unwrap();
    let mut out2 = vec![0u8; want.len()];
    low.rebuild_into(&snap, &mut out2).unwrap();
    assert_eq!(out2, want);

    // the self pass turns a long repeat of a short pattern into one overlapping copy when the
    // pattern's first instance is covered by the snapshot (a copy sourced from raw spill only
    // is left to the spill compressor)
    let f = fixture();
    let sb = f.snap.bytes();
    let a = 500_000;
    let pat = sb[a..a + 37].to_vec();
    let mut file = pat.clone();
    for _ in 0..200 {
        file.extend_from_slice(&pat);
    }
    let segs = vec![
        Segment {
            len: 37,
            src: Source::Snap {
                op: Transform::Id,
                off: a as u64,
                imm: 0,
            },
        },
        Segment {
            len: (file.len() - 37) as u32,
            src: Source::Raw,
        },
    ];
    let segs = plan::selfref::pass(&file, segs, &PlanConfig::default(), 8.0);
    assert_eq!(
        segs[1],
        Segment {
            len: (file.len() - 37) as u32,
            src: Source::SelfCopy { off: 0 }
        },
        "{segs:?}"
    );
    let bp = Blueprint {
        snapshot_id: f.snap.id,
        file_len: file.len() as u64,
        file_hash: *blake3::hash(&file).as_bytes(),
        segments: segs,
        spill: Vec::new(),
    };
    let (bytes, _) = pbb::pack(&bp, &PackOptions::default()).unwrap();
    let back = pbb::unpack(&bytes, &f.snap.id, sb.len() as u64).unwrap();
    let mut out = vec![0u8; file.len()];
    back.rebuild_into(sb, &mut out).unwrap();
    assert!(out == file);
    let low = back.lower_basic(sb).unwrap();
    assert!(!low.has_self_copies());
    low.rebuild_into(sb, &mut out).unwrap();
    assert!(out == file);
}

#[test]
fn soft_hits_cover_dense_edits_with_patches_at_window_edges() {
    let f = fixture();
    // 4 KiB of the (random) corpus basis with every 6th byte changed from the first one on:
    // exact runs of 5 bytes only, which at 3 bits per raw byte never pay as segments of their
    // own, so the exact planner leaves it all raw; edits land on window edges (0, 96, 192...)
    // and on the last byte
    let mut file = f.basis[1000..1000 + 4096].to_vec();
    for i in (0..file.len()).step_by(6) {
        file[i] ^= 0x5a;
    }
    let n = file.len();
    file[n - 1] ^= 0x01;
    let off_cfg = PlanConfig {
        threads: 1,
        window: 4096,
        soft: false,
        cost: plan::CostModel {
            raw_bits_per_byte: Some(3.0),
            ..plan::CostModel::default()
        },
        ..PlanConfig::legacy()
    };
    let on_cfg = PlanConfig {
        soft: true,
        soft_min_equal: 0.8,
        ..off_cfg.clone()
    };
    let (plain, _) = plan_cfg(&file, &off_cfg);
    let (soft, _) = plan_cfg(&file, &on_cfg);
    let (ps, ss) = (plain.stats(), soft.stats());
    assert!(ps.raw_spill > (n as u64) * 9 / 10, "{ps:?}");
    // raw_ratio counts patch bytes: what stays raw is about the changed bytes (1 in 6)
    assert!(ss.raw_spill < (n as u64) / 4, "{ss:?}");
    // the planned soft run is one folded record: far smaller than one record per segment
    let folded = pbb::encode_table_with(&soft.segments, true).len();
    let unfolded = pbb::encode_table_with(&soft.segments, false).len();
    assert!(folded * 3 < unfolded * 2, "{folded} vs {unfolded}");
}

/// Hand-built v2 tables: eight columns (ops, lens, offs, imms, pcount, pequal, pruns, backs),
/// each a LEB128 length then bytes (all values < 128).
fn table(cols: [&[u8]; 8]) -> Vec<u8> {
    let mut t = Vec::new();
    for c in cols {
        t.push(c.len() as u8);
        t.extend_from_slice(c);
    }
    t
}

#[test]
fn corrupt_v2_tables_are_refused_with_the_reason() {
    let err = |t: Vec<u8>, n: u64| pbb::decode_table(&t, n).unwrap_err().to_string();
    // a good soft record: 10 bytes at offset 5, patch after 3 equal bytes, 2 bytes long
    let good = table([&[4], &[10], &[10], &[], &[1], &[3], &[2], &[]]);
    let segs = pbb::decode_table(&good, 1).unwrap();
    assert_eq!(
        segs,
        vec![
            Segment {
                len: 3,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 5,
                    imm: 0
                }
            },
            Segment {
                len: 2,
                src: Source::Raw
            },
            Segment {
                len: 5,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 10,
                    imm: 0
                }
            },
        ]
    );
    assert_eq!(pbb::encode_table_with(&segs, true), good);
    let e = err(table([&[4], &[10], &[10], &[], &[1], &[3], &[7], &[]]), 1);
    assert!(e.contains("outside its 10-byte segment"), "{e}");
    let e = err(table([&[4], &[10], &[10], &[], &[1], &[0], &[2], &[]]), 1);
    assert!(e.contains("patch with 0 equal bytes"), "{e}");
    let e = err(table([&[4], &[10], &[10], &[], &[0], &[], &[], &[]]), 1);
    assert!(e.contains("no patches"), "{e}");
    let e = err(
        table([&[4], &[10], &[10], &[], &[9], &[1; 9], &[1; 9], &[]]),
        1,
    );
    assert!(e.contains("cannot fit"), "{e}");
    // self records: the source must start before the destination and inside the file
    let e = err(table([&[0, 5], &[4, 4], &[], &[], &[], &[], &[], &[0]]), 2);
    assert!(e.contains("its source must start before it"), "{e}");
    let e = err(table([&[0, 5], &[4, 4], &[], &[], &[], &[], &[], &[9]]), 2);
    assert!(e.contains("before the file starts"), "{e}");
    let e = err(table([&[5], &[4], &[], &[], &[], &[], &[], &[1]]), 1);
    assert!(e.contains("before the file starts"), "{e}");
    // v2 op codes are unknown in a v1 table
    let v1 = vec![1, 4, 1, 10, 1, 10, 0];
    let e = pbb::decode_table_version(&v1, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown op code 4 for format version 1"), "{e}");
    // a whole .pbb whose self record points at itself is refused by unpack, naming it
    let bp = Blueprint {
        snapshot_id: [4; 32],
        file_len: 8,
        file_hash: [0; 32],
        segments: vec![
            Segment {
                len: 4,
                src: Source::Raw,
            },
            Segment {
                len: 4,
                src: Source::SelfCopy { off: 4 },
            },
        ],
        spill: vec![1, 2, 3, 4],
    };
    assert!(bp
        .validate(16)
        .unwrap_err()
        .to_string()
        .contains("not before it"));
    let (bytes, _) = pbb::pack(&bp, &PackOptions::default()).unwrap();
    let e = pbb::unpack(&bytes, &[4; 32], 16).unwrap_err().to_string();
    assert!(e.contains("copies from itself"), "{e}");
}

#[test]
fn newer_formats_are_refused_by_name_and_v1_still_reads() {
    let bp = Blueprint {
        snapshot_id: [4; 32],
        file_len: 2,
        file_hash: [0; 32],
        segments: vec![Segment {
            len: 2,
            src: Source::Raw,
        }],
        spill: vec![1, 2],
    };
    let (mut bytes, _) = pbb::pack(&bp, &PackOptions::default()).unwrap();
    bytes[8..10].copy_from_slice(&4u16.to_le_bytes());
    let e = pbb::unpack(&bytes, &[4; 32], 16).unwrap_err().to_string();
    assert!(
        e.contains("this .pbb is format v4; this pfs reads formats v1 up to v3"),
        "{e}"
    );
    // golden-small.pbb is format v1 (see golden_pbb_still_decodes for its contents)
    let g =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden-small.pbb"))
            .unwrap();
    assert_eq!(pbb::read_header(&g).unwrap().version, 1);
}

/// pack_best keeps the smallest of the blueprint and the all-raw forms (zstd, xz -9, and xz
/// behind the x86 branch filter for an x86-64 ELF file); every form unpacks to the same file.
#[test]
fn pack_best_never_loses_to_plain_xz_and_unpacks() {
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let file = &exe[..exe.len().min(400_000)];
    let bp = Blueprint {
        snapshot_id: [6; 32],
        file_len: file.len() as u64,
        file_hash: *blake3::hash(file).as_bytes(),
        segments: vec![
            Segment {
                len: 1000,
                src: Source::Raw,
            },
            Segment {
                len: file.len() as u32 - 1000,
                src: Source::Raw,
            },
        ],
        spill: file.to_vec(),
    };
    let (bytes, _, _) = pbb::pack_best(&bp, file, None, &PackOptions::default()).unwrap();
    let xz = pbb::pack(
        &bp,
        &PackOptions {
            force: Some(packetfs::blueprint::coder::Coder::Lzma {
                preset: 9,
                extreme: false,
                lc: 3,
                lp: 0,
                pb: 2,
            }),
            ..PackOptions::default()
        },
    )
    .unwrap()
    .0;
    assert!(bytes.len() <= xz.len(), "{} > {}", bytes.len(), xz.len());
    let back = pbb::unpack(&bytes, &[6; 32], 16).unwrap();
    let mut out = vec![0u8; file.len()];
    back.rebuild_into(&[0u8; 16], &mut out).unwrap();
    assert!(out == file);
}

/// At `fast` the literals of an x86-64 ELF file go through the x86 branch filter in front of
/// zstd when that measures smaller (this test's own executable: machine code), and come back
/// bit-exact; the same bytes with zstd pinned are larger.
#[test]
fn fast_codes_the_literals_of_machine_code_through_the_branch_filter() {
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let file = &exe[..exe.len().min(1 << 20)];
    let bp = Blueprint {
        snapshot_id: [6; 32],
        file_len: file.len() as u64,
        file_hash: *blake3::hash(file).as_bytes(),
        segments: packetfs::blueprint::raw_segments(file.len() as u64),
        spill: file.to_vec(),
    };
    let snap = [0u8; 16];
    let fast = PackOptions::for_level(packetfs::blueprint::Level::Fast);
    let (bytes, sizes) = pbb::pack_v3(&bp, Some((file, &snap)), &fast).unwrap();
    let lits = sizes.streams.iter().find(|s| s.name == "lits").unwrap();
    assert_eq!(lits.coder, "zstd-x86-3", "{:?}", sizes.streams);
    let pinned = PackOptions {
        force: Some(packetfs::blueprint::coder::Coder::Zstd { level: 3 }),
        ..fast
    };
    let (plain, _) = pbb::pack_v3(&bp, Some((file, &snap)), &pinned).unwrap();
    assert!(
        bytes.len() < plain.len(),
        "{} >= {}",
        bytes.len(),
        plain.len()
    );
    // `pfs plan --bcj off` (the ablation): no filter tried
    let off = PackOptions { bcj: false, ..fast };
    let (_, sizes) = pbb::pack_v3(&bp, Some((file, &snap)), &off).unwrap();
    let lits = sizes.streams.iter().find(|s| s.name == "lits").unwrap();
    assert_eq!(lits.coder, "zstd-3");
    let back = pbb::unpack(&bytes, &[6; 32], snap.len() as u64).unwrap();
    let mut out = vec![0u8; file.len()];
    back.rebuild_into(&snap, &mut out).unwrap();
    assert!(out == file);
}

/// Plan with `cfg` (its indexes built on demand beside the fixture snapshot), pack, unpack and
/// rebuild; bit-exact or panic.
fn roundtrip_with(file: &[u8], cfg: &PlanConfig, hints: &Hints, idx: &IndexSet) -> plan::Plan {
    let f = fixture();
    let p = plan::plan(file, &f.snap, idx, hints, cfg).unwrap();
    p.blueprint.validate(f.snap.bytes().len() as u64).unwrap();
    let (bytes, _) = pbb::pack(&p.blueprint, &PackOptions::default()).unwrap();
    let bp = pbb::unpack(&bytes, &f.snap.id, f.snap.bytes().len() as u64).unwrap();
    assert_eq!(bp, p.blueprint);
    let mut out = vec![0u8; file.len()];
    bp.rebuild_into(f.snap.bytes(), &mut out).unwrap();
    assert!(out == file, "rebuilt file differs");
    p
}

fn bank_of(kind: pob::BankKind) -> pob::BankEntry {
    fixture()
        .snap
        .manifest
        .banks
        .iter()
        .find(|b| b.kind == kind)
        .unwrap()
        .clone()
}

#[test]
fn every_planner_feature_roundtrips_bit_exact() {
    use packetfs::index::Projection::*;
    let f = fixture();
    let s = f.snap.bytes();
    // a mixed file: an edited basis, xor/add images of synthetic banks, random bytes
    let mut file = apply_edits(
        &f.basis[50_000..],
        &[
            Edit::Flip(10),
            Edit::Insert(40, b"inserted".to_vec()),
            Edit::Xor(70, 500, 3),
        ],
    );
    let text = bank_of(pob::BankKind::ElfText);
    let t0 = text.offset as usize;
    let text_at = file.len();
    file.extend(s[t0 + 777..t0 + 9000].iter().map(|b| b ^ 0x11));
    let ascii = bank_of(pob::BankKind::AsciiTables);
    let a0 = ascii.offset as usize;
    file.extend(s[a0 + 5..a0 + 3000].iter().map(|b| b.wrapping_add(1)));
    let mut noise = vec![0u8; 5000];
    SplitMix64::new(5).fill(&mut noise);
    file.extend_from_slice(&noise);
    let hints = Hints::from_json(
        "t",
        format!(
            r#"{{"sections":[{{"name":".text","kind":"text","offset":{text_at},"size":8223}},
                 {{"name":".rodata","kind":"rodata","offset":{},"size":2995}}]}}"#,
            text_at + 8223
        )
        .as_bytes(),
    )
    .unwrap();
    type Tweak = fn(&mut PlanConfig);
    let tweaks: Vec<(&str, Tweak)> = vec![
        ("anchors", |c| {
            c.projections = vec![Ascii, Nibble, Numeric, Opcode]
        }),
        ("gate", |c| c.gate = true),
        ("gate, widen at once", |c| {
            c.gate = true;
            c.gate_widen_after = 0
        }),
        ("sweep", |c| c.sweep = true),
        ("fanout", |c| {
            c.fanout_k4 = 16;
            c.fanout_k8 = 16;
            c.k4_text = true;
            c.k4_candidates = 16
        }),
        ("everything", |c| {
            c.projections = vec![Ascii, Opcode];
            c.gate = true;
            c.sweep = true;
            c.fanout_k4 = 16;
            c.k4_text = true
        }),
    ];
    for (name, tweak) in tweaks {
        for threads in [1, 3] {
            let mut cfg = PlanConfig {
                threads,
                window: 4096,
                ..PlanConfig::legacy()
            };
            tweak(&mut cfg);
            let (idx, _) = IndexSet::ensure(&f.snap, &plan::index_specs(&cfg), false).unwrap();
            let p = roundtrip_with(&file, &cfg, &hints, &idx);
            let st = p.blueprint.stats();
            assert!(
                st.raw_spill < file.len() as u64 / 2,
                "{name}: most of the file is snapshot bytes: {st:?}"
            );
        }
    }
}

#[test]
fn gated_text_windows_never_draw_from_ineligible_banks() {
    let f = fixture();
    let s = f.snap.bytes();
    // ASCII-table bytes in a region the hints call machine code
    let ascii = bank_of(pob::BankKind::AsciiTables);
    let a0 = ascii.offset as usize;
    let file = s[a0 + 100..a0 + 20_100].to_vec();
    let hints = Hints::from_json(
        "t",
        br#"{"sections":[{"name":".text","kind":"text","offset":0,"size":20000}]}"#,
    )
    .unwrap();
    let in_ascii = |p: &plan::Plan| {
        p.blueprint
            .placed()
            .filter(|x| match x.seg.src {
                packetfs::blueprint::Source::Snap { off, .. } => {
                    off >= ascii.offset && off < ascii.offset + ascii.len
                }
                _ => false,
            })
            .map(|x| x.seg.len as u64)
            .sum::<u64>()
    };
    let base = PlanConfig {
        threads: 1,
        ..PlanConfig::legacy()
    };
    // ungated: the bytes come from where they are
    let p = roundtrip_with(&file, &base, &hints, &f.idx);
    assert!(in_ascii(&p) > 10_000, "ungated: {}", in_ascii(&p));
    // gated, never widening: not one byte from the ASCII bank
    let gated = PlanConfig {
        gate: true,
        gate_widen_after: usize::MAX,
        ..base.clone()
    };
    let p = roundtrip_with(&file, &gated, &hints, &f.idx);
    assert_eq!(in_ascii(&p), 0);
    // gated, widening after persistent misses: found again
    let widen = PlanConfig {
        gate: true,
        gate_widen_after: 16,
        ..base.clone()
    };
    let p = roundtrip_with(&file, &widen, &hints, &f.idx);
    assert!(in_ascii(&p) > 10_000, "widened: {}", in_ascii(&p));
}

#[test]
fn sweep_finds_matches_without_an_index_within_its_budget() {
    let f = fixture();
    let s = f.snap.bytes();
    let tail = bank_of(pob::BankKind::PrandTail);
    let mut rng = SplitMix64::new(8);
    let mut file = Vec::new();
    for _ in 0..30 {
        let off = tail.offset as usize + rng.below(tail.len - 64) as usize;
        file.extend_from_slice(&s[off..off + 40]);
        let mut gap = [0u8; 8];
        rng.fill(&mut gap);
        file.extend_from_slice(&gap);
    }
    let no_index = IndexSet {
        indexes: vec![],
        minimizer: None,
    };
    let cfg = PlanConfig {
        threads: 1,
        ..PlanConfig::legacy()
    };
    let p = roundtrip_with(&file, &cfg, &Hints::default(), &no_index);
    assert_eq!(
        p.blueprint.stats().raw_spill,
        file.len() as u64,
        "no index, no sweep: all raw"
    );
    let sweep = PlanConfig {
        sweep: true,
        sweep_window_bytes: usize::MAX,
        ..cfg.clone()
    };
    let p = roundtrip_with(&file, &sweep, &Hints::default(), &no_index);
    let raw = p.blueprint.stats().raw_spill;
    assert!(
        raw < file.len() as u64 / 4,
        "sweep found the 40-byte pieces: raw {raw}"
    );
    // a budget of one snapshot's bytes per window: at most a sweep or two, most stays raw
    let bounded = PlanConfig {
        sweep: true,
        sweep_window_bytes: s.len(),
        ..cfg
    };
    let p = roundtrip_with(&file, &bounded, &Hints::default(), &no_index);
    assert!(
        p.blueprint.stats().raw_spill > raw + 40 * 20,
        "{:?}",
        p.blueprint.stats()
    );
}

#[test]
fn planner_toml_sets_fields_and_refuses_unknown_keys() {
    let c = PlanConfig::from_toml("engine = \"segments\"\ngate = true\nfanout_k4 = 16\nprojections = [\"ascii\"]\n[gate_banks]\ntext = [\"elf_text\"]\n").unwrap();
    assert!(c.gate && c.fanout_k4 == 16 && !c.sweep);
    assert_eq!(c.projections, vec![packetfs::index::Projection::Ascii]);
    let specs = plan::index_specs(&c);
    assert!(specs.iter().any(|s| s.k == 4 && s.fanout == 16));
    assert!(specs
        .iter()
        .any(|s| s.projection == packetfs::index::Projection::Ascii));
    assert_eq!(plan::index_specs(&PlanConfig::default()), default_specs());
    // the TOML error is kept as the source
    let e = PlanConfig::from_toml("gait = true").unwrap_err();
    let e = std::error::Error::source(&e).unwrap().to_string();
    assert!(e.contains("gait"), "{e}");
    let e = PlanConfig::from_toml("sweep_min = 8")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sweep_min"), "{e}");
}

// ---- format v3: streams, covers, reference prediction ----

/// An x86-64 ELF "release pair" made from /usr/bin/bash (every machine of this project is
/// Debian 12 x86-64): the old image lies in a snapshot after some padding; the new one has 16
/// bytes inserted in the middle of the file (inside `.text`) and every 997th byte of the first
/// half bumped. Covers on both sides of the insertion.
fn elf_pair() -> (Vec<u8>, Vec<u8>, Blueprint) {
    let old = std::fs::read("/usr/bin/bash").expect("/usr/bin/bash (Debian 12 x86-64)");
    assert_eq!(&old[..4], b"\x7fELF");
    let pad = 4096usize;
    let mut snap = vec![0u8; pad];
    snap.extend_from_slice(&old);
    let cut = old.len() / 2;
    let mut new = old[..cut].to_vec();
    for i in (4096..cut).step_by(997) {
        new[i] = new[i].wrapping_add(1);
    }
    new.extend_from_slice(&[0xCC; 16]);
    new.extend_from_slice(&old[cut..]);
    // the section headers moved with the insertion (e_shoff), and so did the sections after it
    let shoff = u64::from_le_bytes(old[0x28..0x30].try_into().unwrap());
    new[0x28..0x30].copy_from_slice(&(shoff + 16).to_le_bytes());
    let shnum = u16::from_le_bytes([old[0x3c], old[0x3d]]) as usize;
    for k in 0..shnum {
        let at = shoff as usize + 16 + 64 * k + 0x18;
        let off = u64::from_le_bytes(new[at..at + 8].try_into().unwrap());
        if off >= cut as u64 {
            new[at..at + 8].copy_from_slice(&(off + 16).to_le_bytes());
        }
    }
    let diffs = |f: &[u8], s: &[u8]| -> Vec<u8> {
        f.iter().zip(s).map(|(a, b)| a.wrapping_sub(*b)).collect()
    };
    let mut spill = diffs(&new[..cut], &old[..cut]);
    spill.extend_from_slice(&[0xCC; 16]);
    spill.extend(diffs(&new[cut + 16..], &old[cut..]));
    let bp = Blueprint {
        snapshot_id: [5; 32],
        file_len: new.len() as u64,
        file_hash: *blake3::hash(&new).as_bytes(),
        segments: vec![
            Segment {
                len: cut as u32,
                src: Source::Cover { off: pad as u64 },
            },
            Segment {
                len: 16,
                src: Source::Raw,
            },
            Segment {
                len: (old.len() - cut) as u32,
                src: Source::Cover {
                    off: (pad + cut) as u64,
                },
            },
        ],
        spill,
    };
    (snap, new, bp)
}

#[test]
fn covers_with_reference_prediction_roundtrip_at_every_level() {
    use packetfs::blueprint::predict::PredictOptions;
    let (snap, new, bp) = elf_pair();
    bp.validate(snap.len() as u64).unwrap();
    for level in [Level::Fast, Level::Default] {
        for predict in [
            PredictOptions::NONE,
            PredictOptions::DEFAULT,
            PredictOptions::ALL,
        ] {
            let o = PackOptions {
                predict,
                ..PackOptions::for_level(level)
            };
            let (bytes, sizes) = pbb::pack_v3(&bp, Some((&new, &snap)), &o).unwrap();
            let refs = sizes.streams.iter().find(|s| s.name == "refs").unwrap();
            assert_eq!(refs.raw > 0, predict.any(), "{predict:?}");
            let back = pbb::unpack_with(&bytes, &[5; 32], &snap).unwrap();
            assert_eq!(back, bp, "{level:?} {predict:?}");
            let mut out = vec![0u8; new.len()];
            back.rebuild_into(&snap, &mut out).unwrap();
            assert!(out == new);
            if predict.any() {
                // without the snapshot bytes the predictions cannot be added back: refused
                let e = pbb::unpack(&bytes, &[5; 32], snap.len() as u64).unwrap_err();
                assert!(e.to_string().contains("snapshot bytes"), "{e}");
            }
        }
    }
}

/// Any byte of a v3 .pbb changed, with the checksum made valid again (what a forger can do),
/// is refused with an error or decodes to a blueprint that validates: never a panic.
#[test]
fn forged_v3_bytes_never_panic() {
    let (snap, new, bp) = elf_pair();
    // a smaller blueprint keeps the loop fast: the first 64 KiB as one cover and a raw tail
    let n = 64 << 10;
    let small = Blueprint {
        file_len: n as u64 + 100,
        file_hash: [0; 32],
        segments: vec![
            Segment {
                len: n as u32,
                src: Source::Cover { off: 4096 },
            },
            Segment {
                len: 100,
                src: Source::Raw,
            },
        ],
        spill: [&bp.spill[..n], &new[n..n + 100]].concat(),
        ..bp.clone()
    };
    let (good, _) = pbb::pack_v3(
        &small,
        Some((&new[..n + 100], &snap)),
        &PackOptions::for_level(Level::Fast),
    )
    .unwrap();
    let body = good.len() - 32;
    let mut rng = 0x1234_5678u64;
    for k in 0..3000usize {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // the header and directory get most of the flips
        let at = if k % 2 == 0 {
            k / 2 % (pbb::HEADER_LEN_V3 + 40).min(body)
        } else {
            rng as usize % body
        };
        let mut b = good[..body].to_vec();
        b[at] ^= 1 << ((rng >> 40) % 8);
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        if let Ok(x) = pbb::unpack_with(&b, &[5; 32], &snap) {
            x.validate(snap.len() as u64).unwrap();
        }
        // truncations at every length are refused
        if k < body {
            assert!(pbb::unpack_with(&good[..k], &[5; 32], &snap).is_err());
        }
    }
}
