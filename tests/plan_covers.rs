//! The cover engine end to end: snapshot -> minimizer index -> plan (each preset and each
//! ablation switch) -> pack -> unpack -> rebuild, bit-exact; what it finds in mutated copies,
//! random data and long pseudo-random copies; bad planner configs.

use std::sync::OnceLock;

use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::blueprint::{Blueprint, Level, Source};
use packetfs::index::{default_specs, IndexSet};
use packetfs::plan::{self, hints::Hints, PlanConfig, PlanError};
use packetfs::pob::{self, prng::SplitMix64, HugePolicy, Recipe, Snapshot};
use proptest::prelude::*;

struct Fixture {
    _dir: tempfile::TempDir,
    snap: Snapshot,
    idx: IndexSet,
    /// An "old release": structured bytes held by the snapshot as a corpus bank.
    basis: Vec<u8>,
    /// Where the basis starts in the snapshot.
    basis_at: usize,
}

/// Code-like bytes: a few hundred distinct "instructions" in random order, with varying
/// 32-bit fields (what a rebuilt binary looks like to a delta coder).
fn code_like(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let ops: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let len = 2 + (rng.next_u64() % 6) as usize;
            let mut v = vec![0u8; len];
            rng.fill(&mut v);
            v
        })
        .collect();
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(&ops[(rng.next_u64() % 300) as usize]);
        if rng.next_u64().is_multiple_of(3) {
            out.extend_from_slice(&(rng.next_u64() as u32 % 5000).to_le_bytes());
        }
    }
    out.truncate(n);
    out
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let basis = code_like(300_000, 7);
        let bpath = dir.path().join("old.bin");
        std::fs::write(&bpath, &basis).unwrap();
        let corpus = pob::collect_corpus(&[bpath]).unwrap();
        let mut recipe = Recipe::default_recipe();
        recipe.size_mb = 1;
        let sdir = dir.path().join("snap");
        pob::build(&recipe, &corpus, &sdir, &mut |_, _| {}).unwrap();
        let snap = Snapshot::open(&sdir, HugePolicy::Off).unwrap();
        let basis_at = snap.manifest.banks.last().unwrap().offset as usize;
        let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).unwrap();
        Fixture {
            _dir: dir,
            snap,
            idx,
            basis,
            basis_at,
        }
    })
}

/// Plan, pack, unpack and rebuild; asserts bit-exactness and returns the plan's blueprint
/// and the packed size.
fn roundtrip(file: &[u8], cfg: &PlanConfig) -> (Blueprint, usize) {
    let f = fixture();
    let p = plan::plan(file, &f.snap, &f.idx, &Hints::default(), cfg).unwrap();
    let bp = p.blueprint;
    bp.validate(f.snap.bytes().len() as u64).unwrap();
    let mut out = vec![0u8; file.len()];
    bp.rebuild_into(f.snap.bytes(), &mut out).unwrap();
    assert!(out == file, "in-memory rebuild differs");
    let (bytes, _) = pbb::pack(&bp, &PackOptions::for_level(Level::Fast)).unwrap();
    let back = pbb::unpack_with(&bytes, &f.snap.id, f.snap.bytes()).unwrap();
    let mut out2 = vec![0u8; file.len()];
    back.rebuild_into(f.snap.bytes(), &mut out2).unwrap();
    assert!(out2 == file, "rebuild after pack/unpack differs");
    (bp, bytes.len())
}

/// The basis with edits: changed 32-bit fields every ~40 bytes, a few insertions and
/// deletions (new diagonals), and a block of new bytes.
fn mutate(basis: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut f = basis.to_vec();
    let mut i = 0;
    while i + 4 < f.len() {
        i += 20 + (rng.next_u64() % 40) as usize;
        if i + 4 < f.len() {
            let v = u32::from_le_bytes(f[i..i + 4].try_into().unwrap()).wrapping_add(0x40);
            f[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    for _ in 0..5 {
        let at = (rng.next_u64() as usize) % (f.len() - 1000);
        let n = 1 + (rng.next_u64() % 64) as usize;
        if rng.next_u64().is_multiple_of(2) {
            let mut ins = vec![0u8; n];
            rng.fill(&mut ins);
            f.splice(at..at, ins);
        } else {
            f.drain(at..at + n);
        }
    }
    let at = f.len() / 3;
    let mut fresh = vec![0u8; 5000];
    rng.fill(&mut fresh);
    f.splice(at..at, fresh);
    f
}

fn level(l: Level) -> PlanConfig {
    PlanConfig {
        window: 4096,
        ..PlanConfig::preset(l)
    }
}

#[test]
fn a_mutated_release_becomes_a_few_covers_at_every_level() {
    let f = fixture();
    let file = mutate(&f.basis, 1);
    for l in [Level::Fast, Level::Default, Level::Max] {
        let (bp, wire) = roundtrip(&file, &level(l));
        let st = bp.stats();
        // the field changes sit inside covers (difference bytes), not between segments
        assert!(st.cover > 0, "{l:?}: no covers");
        assert!(st.cover_diff_nonzero > 1000, "{l:?}: {st:?}");
        assert!(
            st.raw_spill < file.len() as u64 / 10,
            "{l:?}: {} of {} bytes raw",
            st.raw_spill,
            file.len()
        );
        // a field change every ~40 bytes: far fewer segments than changes
        assert!(
            (st.segments as usize) < file.len() / 400,
            "{l:?}: {} segments",
            st.segments
        );
        assert!(
            wire < file.len() / 4,
            "{l:?}: {wire} bytes for {}",
            file.len()
        );
        // covers point into the old release's bank
        let off = bp
            .segments
            .iter()
            .find_map(|s| match s.src {
                Source::Cover { off } => Some(off as usize),
                _ => None,
            })
            .unwrap();
        assert!(off >= f.basis_at, "{l:?}: cover at {off}");
    }
}

#[test]
fn each_ablation_switch_changes_only_its_part_and_still_rebuilds() {
    let f = fixture();
    let file = mutate(&f.basis, 2);
    let base = level(Level::Default);
    let (on, _) = roundtrip(&file, &base);
    // approximate covers off: only exact runs (id segments) and raw bytes
    let (exact, _) = roundtrip(
        &file,
        &PlanConfig {
            covers: false,
            diagonal_merge: false,
            ..base.clone()
        },
    );
    assert_eq!(exact.stats().cover, 0);
    assert!(exact.stats().id > on.stats().segments / 2);
    // dense probing finds at least the covers sparse probing finds (in bytes)
    let (dense, _) = roundtrip(
        &file,
        &PlanConfig {
            sparse: false,
            ..base.clone()
        },
    );
    assert!(dense.stats().raw_spill <= on.stats().raw_spill + 2000);
    // fast reject off: the same file (not random) plans the same
    let (noreject, _) = roundtrip(
        &file,
        &PlanConfig {
            fast_reject: false,
            ..base.clone()
        },
    );
    assert_eq!(noreject.segments, on.segments);
    // merge off never joins across a gap, so it never has fewer segments
    let (nomerge, _) = roundtrip(
        &file,
        &PlanConfig {
            diagonal_merge: false,
            ..base.clone()
        },
    );
    assert!(nomerge.segments.len() >= on.segments.len());
}

#[test]
fn random_data_is_rejected_but_a_long_pseudo_random_copy_is_found() {
    let f = fixture();
    let mut file = vec![0u8; 600_000];
    SplitMix64::new(5).fill(&mut file);
    let (bp, wire) = roundtrip(&file, &level(Level::Fast));
    assert_eq!(bp.stats().raw_spill, file.len() as u64);
    assert!(wire <= file.len() + file.len() / 100 + 512, "{wire}");
    // 40 kB of the snapshot's synthetic (pseudo-random) banks inside random bytes
    let s = f.snap.bytes();
    let src = 300_000;
    file[200_000..240_000].copy_from_slice(&s[src..src + 40_000]);
    let (bp, _) = roundtrip(&file, &level(Level::Fast));
    let covered: u64 = bp
        .segments
        .iter()
        .filter(|x| !matches!(x.src, Source::Raw))
        .map(|x| x.len as u64)
        .sum();
    assert!(covered >= 39_000, "covered {covered}");
}

#[test]
fn the_plan_is_the_same_on_any_thread_count_and_covers_join_across_chunks() {
    let f = fixture();
    // longer than one chunk of the engine's threads (256 KiB), so the chunks are shared out
    let file = mutate(&f.basis, 3);
    assert!(file.len() > 256 << 10);
    let plans: Vec<Blueprint> = [1, 2, 4]
        .iter()
        .map(|&threads| {
            let cfg = PlanConfig {
                threads,
                ..level(Level::Default)
            };
            roundtrip(&file, &cfg).0
        })
        .collect();
    assert_eq!(plans[0], plans[1], "1 thread vs 2");
    assert_eq!(plans[0], plans[2], "1 thread vs 4");
    // an unchanged copy of the basis: its cover runs across the chunk edge at 256 KiB
    let (bp, _) = roundtrip(&f.basis, &level(Level::Fast));
    let edge = 256u64 << 10;
    let mut at = 0u64;
    let across = bp.segments.iter().find_map(|s| {
        let r = (at, at + s.len as u64);
        at = r.1;
        (r.0 < edge && r.1 > edge).then_some(*s)
    });
    let across = across.expect("a segment spans the chunk edge");
    assert!(!matches!(across.src, Source::Raw), "{across:?}");
    assert!(across.len >= 64 << 10, "{across:?}");
    // stretches of the snapshot (its synthetic banks are repetitive: at a chunk's start
    // many diagonals score the same): past their first bytes, where no cover leads in,
    // they are copies of the snapshot without literals
    let snap = f.snap.bytes();
    for off in (0..snap.len() - 300_000).step_by(32 << 10) {
        let (bp, _) = roundtrip(&snap[off..off + 300_000], &level(Level::Fast));
        let mut at = 0u64;
        for s in &bp.segments {
            assert!(
                at < 4096 || !matches!(s.src, Source::Raw),
                "stretch at {off}: literals at {at}: {:?}",
                bp.segments
            );
            at += s.len as u64;
        }
    }
}

#[test]
fn a_config_without_its_index_and_bad_configs_are_refused_by_name() {
    let f = fixture();
    let other_w = PlanConfig {
        min_w: 12,
        ..PlanConfig::default()
    };
    let e = plan::plan(
        b"0123456789abcdef",
        &f.snap,
        &f.idx,
        &Hints::default(),
        &other_w,
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::MissingIndex { .. }), "{e}");
    assert!(e.to_string().contains("index.minimizer.k8s12f8.idx"), "{e}");

    let e = PlanConfig::from_toml("covers = true\nsparce = false\n").unwrap_err();
    assert!(matches!(e, PlanError::Toml { .. }));
    let src = std::error::Error::source(&e).expect("the TOML error is kept as the source");
    assert!(src.to_string().contains("sparce"), "{src}");

    for (toml, want) in [
        ("reject_bits = 9.5", "reject_bits"),
        ("weak_share = 1.5", "weak_share"),
    ] {
        let e = PlanConfig::from_toml(toml).unwrap_err();
        assert!(
            matches!(e, PlanError::OutOfRange { key, .. } if key == want),
            "{toml}: {e}"
        );
    }
    let c = PlanConfig::from_toml("weak_share = 0.25\nstrong_bytes = 512").unwrap();
    assert_eq!((c.weak_share, c.strong_bytes), (0.25, 512));
    let e = PlanConfig::from_toml("min_w = 300").unwrap_err();
    assert!(matches!(e, PlanError::Index { .. }), "{e}");
    let e = PlanConfig::from_toml("[cover]\nxdrop_bits = -1.0").unwrap_err();
    assert!(e.to_string().contains("cover.xdrop_bits"), "{e}");
    let e = PlanConfig::from_toml("engine = \"fast\"").unwrap_err();
    assert!(matches!(e, PlanError::Toml { .. }));
    // the keys the ablation switches
    let c = PlanConfig::from_toml(
        "covers = false\ndiagonal_merge = false\nsparse = false\nfast_reject = false\nmerge_gap = 64\n",
    )
    .unwrap();
    assert!(!c.covers && !c.diagonal_merge && !c.sparse && !c.fast_reject);
    assert_eq!(c.merge_gap, 64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_and_mutated_files_plan_and_rebuild_bit_exact(
        seed in any::<u64>(),
        len in 0usize..40_000,
        from_basis in any::<bool>(),
        lvl in 0usize..3,
        threads in 1usize..4,
    ) {
        let f = fixture();
        let mut rng = SplitMix64::new(seed);
        let file = if from_basis {
            let at = (rng.next_u64() as usize) % (f.basis.len() - len.max(1));
            let mut v = f.basis[at..at + len].to_vec();
            for _ in 0..len / 50 {
                let i = (rng.next_u64() as usize) % len.max(1);
                if i < v.len() {
                    v[i] = rng.next_u64() as u8;
                }
            }
            v
        } else {
            let mut v = vec![0u8; len];
            rng.fill(&mut v);
            v
        };
        let l = [Level::Fast, Level::Default, Level::Max][lvl];
        let cfg = PlanConfig { threads, window: 4096, ..PlanConfig::preset(l) };
        roundtrip(&file, &cfg);
    }
}

#[test]
fn an_unhashed_plan_is_the_plan_without_its_hash() {
    let f = fixture();
    let file = mutate(&f.basis, 3);
    for l in [Level::Fast, Level::Default] {
        let cfg = level(l);
        let hashed = plan::plan(&file, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
        let bare = plan::plan_unhashed(&file, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
        assert_eq!(hashed.blueprint.file_hash, *blake3::hash(&file).as_bytes());
        assert_eq!(bare.blueprint.file_hash, [0; 32], "{l:?}");
        assert_eq!(bare.blueprint.segments, hashed.blueprint.segments, "{l:?}");
        assert_eq!(bare.blueprint.spill, hashed.blueprint.spill, "{l:?}");
    }
}

#[test]
fn an_elided_spill_is_the_file_and_only_where_nothing_matched() {
    let f = fixture();
    let how = plan::How {
        hash: true,
        elide_raw_spill: true,
        start_weak: false,
    };
    let mut random = vec![0u8; 600_000];
    SplitMix64::new(11).fill(&mut random);
    let mutated = mutate(&f.basis, 4);
    for l in [Level::Fast, Level::Default] {
        let cfg = level(l);
        // random bytes: nothing matches, the spill is left empty and filled back whole
        let full = plan::plan(&random, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
        assert!(!full.spill_elided);
        let mut lean =
            plan::plan_with(&random, &f.snap, &f.idx, &Hints::default(), &cfg, how).unwrap();
        assert!(lean.spill_elided, "{l:?}");
        assert!(lean.blueprint.spill.is_empty());
        assert_eq!(lean.blueprint.segments, full.blueprint.segments, "{l:?}");
        assert_eq!(lean.blueprint.file_hash, full.blueprint.file_hash);
        lean.fill_spill(&random);
        assert!(!lean.spill_elided);
        assert_eq!(lean.blueprint.spill, full.blueprint.spill, "{l:?}");
        // a release that matches: asked or not, the spill is made
        let full = plan::plan(&mutated, &f.snap, &f.idx, &Hints::default(), &cfg).unwrap();
        let lean =
            plan::plan_with(&mutated, &f.snap, &f.idx, &Hints::default(), &cfg, how).unwrap();
        assert!(!lean.spill_elided, "{l:?}");
        assert_eq!(lean.blueprint.segments, full.blueprint.segments);
        assert_eq!(lean.blueprint.spill, full.blueprint.spill);
    }
}

/// The cover engine's own price of a plan (bits): literals at the plan's literal price,
/// differing bytes at that plus the mismatch price, a record per cover or `id` segment.
fn model_bits(bp: &Blueprint, raw_bits: f64, cfg: &PlanConfig) -> f64 {
    let st = bp.stats();
    let c = &cfg.cover;
    let gain = raw_bits - c.zero_bits;
    st.raw_spill as f64 * gain
        + st.cover_diff_nonzero as f64 * (gain + c.mismatch_bits)
        + (st.cover + st.id) as f64 * c.record_bits
}

#[test]
fn refinement_never_raises_the_price_of_a_covered_file_and_skips_a_mostly_new_one() {
    let f = fixture();
    let on = level(Level::Max);
    assert!(on.refine, "max refines its covers");
    let off = PlanConfig {
        refine: false,
        ..on.clone()
    };
    let priced = |file: &[u8], cfg: &PlanConfig| {
        let p = plan::plan(file, &f.snap, &f.idx, &Hints::default(), cfg).unwrap();
        let bits = model_bits(&p.blueprint, p.raw_bits_per_byte, cfg);
        (p, bits)
    };
    // a mutated release, nearly all covered by the first pass (which already finds its
    // covers here; refine::tests shows a diagonal that only refinement finds)
    let file = mutate(&f.basis, 3);
    let (first, first_bits) = priced(&file, &off);
    let (refined, refined_bits) = priced(&file, &on);
    assert_eq!(first.times.refine_ms, 0.0);
    assert!(refined.times.refine_ms > 0.0, "refinement ran");
    assert!(
        refined_bits <= first_bits,
        "refined {refined_bits:.0} bits vs first pass {first_bits:.0}"
    );
    roundtrip(&file, &on);
    // a third of it old bytes, the rest new: below half covered, refinement does not run
    let mut mostly_new = file[..40_000].to_vec();
    let mut fresh = vec![0u8; 80_000];
    SplitMix64::new(4).fill(&mut fresh);
    mostly_new.extend_from_slice(&fresh);
    let (p, _) = priced(&mostly_new, &on);
    assert_eq!(p.times.refine_ms, 0.0, "refinement skipped");
    assert!(p.blueprint.stats().cover > 0, "the old third is covered");
}

#[test]
fn a_window_after_a_weak_one_starts_probed_and_the_plan_says_which_was_weak() {
    let f = fixture();
    let cfg = level(Level::Fast);
    let plan_how = |file: &[u8], start_weak: bool| {
        let how = plan::How {
            hash: false,
            elide_raw_spill: false,
            start_weak,
        };
        plan::plan_with(file, &f.snap, &f.idx, &Hints::default(), &cfg, how).unwrap()
    };
    // a mutated release is not weak, and starting it probed finds the same covers (its
    // blocks hold strong covers: each is planned in full from its start)
    let release = mutate(&f.basis, 9);
    let (a, b) = (plan_how(&release, false), plan_how(&release, true));
    assert!(!a.weak && !b.weak);
    assert_eq!(a.blueprint.segments, b.blueprint.segments);
    // code the snapshot does not hold: weak; started probed, fewer of the synthetic banks'
    // short covers are looked for, and the file still rebuilds
    let mut other = code_like(400_000, 77);
    let mut rng = SplitMix64::new(78);
    for at in (1000..other.len() - 64).step_by(2048) {
        // a 40-byte snippet of the synthetic banks every 2 KiB: short covers, about 2%
        let sp = (rng.next_u64() as usize) % (f.basis_at - 64);
        other[at..at + 40].copy_from_slice(&f.snap.bytes()[sp..sp + 40]);
    }
    let (a, b) = (plan_how(&other, false), plan_how(&other, true));
    assert!(a.weak && b.weak, "weak: {} / {}", a.weak, b.weak);
    let covers = |p: &plan::Plan| p.blueprint.stats().cover;
    assert!(covers(&b) < covers(&a), "{} >= {}", covers(&b), covers(&a));
    for p in [&a, &b] {
        let mut out = vec![0u8; other.len()];
        p.blueprint.rebuild_into(f.snap.bytes(), &mut out).unwrap();
        assert!(out == other);
    }
    // off below `fast` (weak_share 0): never weak
    let d = plan::plan_with(
        &other,
        &f.snap,
        &f.idx,
        &Hints::default(),
        &level(Level::Default),
        plan::How {
            hash: false,
            elide_raw_spill: false,
            start_weak: true,
        },
    )
    .unwrap();
    assert!(!d.weak);
}
