//! Codec round trips: snapshot -> index -> plan -> pack -> unpack -> rebuild, bit-exact;
//! golden snapshot id and a golden .pbb kept from an earlier build of the format.

use std::path::Path;
use std::sync::OnceLock;

use packetfs::blueprint::pbb::{self, PackOptions, SpillCodec};
use packetfs::index::{default_specs, IndexSet};
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
        let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).unwrap();
        Fixture {
            _dir: dir,
            snap,
            idx,
            basis,
        }
    })
}

fn roundtrip(file: &[u8], codec: SpillCodec, threads: usize) -> pbb::PackedSizes {
    let f = fixture();
    let cfg = PlanConfig {
        threads,
        window: 4096,
        ..PlanConfig::default()
    };
    let p = plan::plan(file, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
    p.blueprint.validate(f.snap.bytes().len() as u64).unwrap();
    let (bytes, sizes) = pbb::pack(
        &p.blueprint,
        &PackOptions {
            codec,
            level: 3,
            table_level: 3,
        },
    )
    .unwrap();
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
        roundtrip(&file, SpillCodec::Zstd, threads);
    }

    #[test]
    fn edits_of_a_corpus_basis_roundtrip_and_shrink(edits in proptest::collection::vec(edit(), 1..12),
                                                     cut in 0usize..150_000,
                                                     codec_i in 0usize..3) {
        let f = fixture();
        let target = apply_edits(&f.basis[cut.min(f.basis.len())..], &edits);
        let codec = [SpillCodec::None, SpillCodec::Zstd, SpillCodec::Xz][codec_i];
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
        &PlanConfig::default(),
    )
    .unwrap();
    let st = p.blueprint.stats();
    assert!(st.xor >= 1 && st.add >= 1, "{st:?}");
    assert!(st.raw_spill < file.len() as u64 / 10, "{st:?}");
    roundtrip(&file, SpillCodec::Zstd, 1);
}

#[test]
fn empty_and_larger_than_snapshot_files_roundtrip() {
    roundtrip(&[], SpillCodec::Zstd, 1);
    let f = fixture();
    let mut big = f.snap.bytes().to_vec();
    big.extend_from_slice(&f.snap.bytes()[..100_000]);
    let sizes = roundtrip(&big, SpillCodec::Zstd, 2);
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

/// Regenerates tests/data/golden-small.pbb; run by hand only when the format version changes:
/// `cargo test --test codec -- --ignored write_golden`.
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
    std::fs::write(data.join("golden-small.pbb"), bytes).unwrap();
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
                ..PlanConfig::default()
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
        ..PlanConfig::default()
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
    let no_index = IndexSet { indexes: vec![] };
    let cfg = PlanConfig {
        threads: 1,
        ..PlanConfig::default()
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
    let c = PlanConfig::from_toml("gate = true\nfanout_k4 = 16\nprojections = [\"ascii\"]\n[gate_banks]\ntext = [\"elf_text\"]\n").unwrap();
    assert!(c.gate && c.fanout_k4 == 16 && !c.sweep);
    assert_eq!(c.projections, vec![packetfs::index::Projection::Ascii]);
    let specs = plan::index_specs(&c);
    assert!(specs.iter().any(|s| s.k == 4 && s.fanout == 16));
    assert!(specs
        .iter()
        .any(|s| s.projection == packetfs::index::Projection::Ascii));
    assert_eq!(plan::index_specs(&PlanConfig::default()), default_specs());
    let e = PlanConfig::from_toml("gait = true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gait"), "{e}");
    let e = PlanConfig::from_toml("sweep_min = 8")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sweep_min"), "{e}");
}
