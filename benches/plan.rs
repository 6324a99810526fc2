//! `just bench-plan`: PacketFS planning against real alternatives, all measured in one run.
//!
//! Pairs come from the two Rust toolchains installed here (basis from one, target from the
//! other): libstd-*.so and bin/cargo (set PFS_BENCH_ALL=1 to add librustc_driver-*.so). For
//! each pair the basis becomes a corpus bank of a default-recipe snapshot, the target is
//! planned and packed, rebuilt and checked, and in the same run zstd -3/-19
//! `--long=30 --patch-from`, `xdelta3 -e -9 -s` and `xz -9` (target alone) are timed on the
//! same files. Then /usr/bin/bash against the synthetic recipe alone, next to the source
//! document's raw_ratio, and reconstruction speed next to this machine's memcpy bandwidth.
//!
//! `PFS_BENCH_ABLATION=1` adds one table per pair (libstd, and bash vs the synthetic recipe;
//! bin/cargo too with `PFS_BENCH_ABLATION_CARGO=1`, slow): one row per planner setting from
//! [`ablation_rows`] (a name and a one-line tweak of the default config), with wire bytes,
//! raw_ratio, planning time, the per-phase times and the index memory the setting maps, next
//! to the alternatives measured in the same run. `PFS_BENCH_ROWS=a,b` keeps only the rows
//! whose names contain one of the given strings. `PFS_BENCH_ABLATION=features` instead prints,
//! for every pair and for bash, only soft identity and self segments each on and off, with the
//! segment table's folded and unfolded sizes.
//!
//! Output: a Markdown table on stdout and one JSON line per row in the metrics log
//! (PFS_METRICS, default logs/patterns/metrics.jsonl).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::index::{default_specs, IndexSet, Projection};
use packetfs::plan::{self, hints::Hints, PhaseTimes, PlanConfig};
use packetfs::pob::{self, HugePolicy, Recipe, Snapshot};
use serde_json::json;

struct Row {
    name: String,
    target: u64,
    cells: Vec<(String, Option<(u64, f64)>)>,
}

fn sysroot(tc: &str) -> Option<PathBuf> {
    let o = Command::new("rustc")
        .arg(format!("+{tc}"))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

fn toolchains() -> Vec<PathBuf> {
    let o = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .expect("rustup toolchain list");
    let mut roots: Vec<PathBuf> = Vec::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if let Some(r) = sysroot(name) {
            let r = r.canonicalize().unwrap_or(r);
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
    }
    roots
}

fn find(root: &Path, rel_dir: &str, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(root.join(rel_dir))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            if suffix.is_empty() {
                n == prefix
            } else {
                n.starts_with(prefix) && n.ends_with(suffix)
            }
        })
}

/// Run a command, time it, return (output bytes, seconds); None when the tool is missing.
fn timed(cmd: &mut Command, out: &Path) -> Option<(u64, f64)> {
    let _ = std::fs::remove_file(out);
    let t = Instant::now();
    let st = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    if !st.success() {
        return None;
    }
    Some((std::fs::metadata(out).ok()?.len(), secs))
}

fn alternatives(basis: &Path, target: &Path, tmp: &Path) -> Vec<(String, Option<(u64, f64)>)> {
    let o = tmp.join("alt.out");
    let long = |lvl: &str| {
        let mut c = Command::new("zstd");
        c.args([lvl, "--long=30", "-f", "-q", "-T1"])
            .arg(format!("--patch-from={}", basis.display()))
            .arg(target)
            .arg("-o")
            .arg(&o);
        c
    };
    let mut v = vec![
        (
            "zstd -3 --patch-from".to_string(),
            timed(&mut long("-3"), &o),
        ),
        (
            "zstd -19 --patch-from".to_string(),
            timed(&mut long("-19"), &o),
        ),
    ];
    let mut x = Command::new("xdelta3");
    x.args(["-e", "-9", "-f", "-s"])
        .arg(basis)
        .arg(target)
        .arg(&o);
    v.push(("xdelta3 -9".into(), timed(&mut x, &o)));
    let mut xz = Command::new("sh");
    xz.arg("-c").arg(format!(
        "xz -9 -T1 -c '{}' > '{}'",
        target.display(),
        o.display()
    ));
    v.push(("xz -9 (alone)".into(), timed(&mut xz, &o)));
    v
}

struct Planned {
    wire: u64,
    /// Compressed segment table with soft runs folded, and without folding (same level).
    table_folded: u64,
    table_unfolded: u64,
    self_ms: f64,
    soft_ms: f64,
    plain_won: bool,
    raw_ratio: f64,
    plan_s: f64,
    pack_s: f64,
    segments: u64,
    rebuild_gbs: f64,
    times: PhaseTimes,
}

fn plan_target(snap: &Snapshot, idx: &IndexSet, target: &[u8]) -> Planned {
    plan_target_with(snap, idx, target, &PlanConfig::default(), true)
}

fn plan_target_with(
    snap: &Snapshot,
    idx: &IndexSet,
    target: &[u8],
    cfg: &PlanConfig,
    use_hints: bool,
) -> Planned {
    let hints = if use_hints {
        Hints::from_elf(target).unwrap_or_default()
    } else {
        Hints::default()
    };
    let t = Instant::now();
    let p = plan::plan(target, snap, idx, &hints, cfg).expect("plan");
    let plan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let opts = PackOptions::default();
    let (bytes, _, plain_won) =
        pbb::pack_best(&p.blueprint, target, Some(snap.bytes()), &opts).expect("pack");
    let pack_s = t.elapsed().as_secs_f64();
    let tz = |fold: bool| {
        let t = pbb::encode_table_with(&p.blueprint.segments, fold);
        zstd::bulk::compress(&t, opts.table_level).unwrap().len() as u64
    };
    let (table_folded, table_unfolded) = (tz(true), tz(false));
    let bp = pbb::unpack_with(&bytes, &snap.id, snap.bytes()).expect("unpack");
    let mut out = vec![0u8; target.len()];
    bp.rebuild_into(snap.bytes(), &mut out).expect("rebuild");
    assert!(out == target, "rebuilt target differs");
    let rebuild_gbs = rebuild_speed(&bp, snap.bytes(), &mut out);
    let st = p.blueprint.stats();
    Planned {
        wire: bytes.len() as u64,
        table_folded,
        table_unfolded,
        self_ms: p.times.self_ms,
        soft_ms: p.times.soft_ms,
        plain_won,
        raw_ratio: st.raw_spill as f64 / target.len().max(1) as f64,
        plan_s,
        pack_s,
        segments: st.segments,
        rebuild_gbs,
        times: p.times,
    }
}

/// Best of 5 in-memory rebuilds (output already faulted in), GB/s.
fn rebuild_speed(bp: &packetfs::blueprint::Blueprint, snap: &[u8], out: &mut [u8]) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        bp.rebuild_into(snap, out).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    out.len() as f64 / best / 1e9
}

fn memcpy_gbs() -> f64 {
    let n = 1usize << 30;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault in
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    n as f64 / best / 1e9
}

fn pct(b: u64, t: u64) -> String {
    format!("{:.1}%", 100.0 * b as f64 / t as f64)
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments
    let metrics = PathBuf::from(
        std::env::var("PFS_METRICS").unwrap_or_else(|_| packetfs::metrics::DEFAULT_LOG.into()),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let roots = toolchains();
    println!(
        "# bench-plan ({} cores, {})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        chrono_now()
    );
    let mut rows: Vec<Row> = Vec::new();
    let only_rebuild = std::env::var("PFS_BENCH_ONLY").is_ok_and(|v| v == "rebuild");
    // PFS_BENCH_ONLY=bash: skip the release pairs, keep bash and reconstruction
    let only_bash = std::env::var("PFS_BENCH_ONLY").is_ok_and(|v| v == "bash");
    let ablation = std::env::var("PFS_BENCH_ABLATION").is_ok();
    // PFS_BENCH_ABLATION=features: only the soft/self feature tables
    let features_only = std::env::var("PFS_BENCH_ABLATION").is_ok_and(|v| v == "features");
    if only_rebuild || only_bash {
        println!("PFS_BENCH_ONLY: release pairs skipped");
    } else if roots.len() < 2 {
        println!("fewer than two distinct Rust toolchains installed: no release pairs (rustup toolchain install nightly)");
    } else {
        let (old, new) = (&roots[0], &roots[1]);
        println!(
            "basis toolchain: {}\ntarget toolchain: {}\n",
            old.display(),
            new.display()
        );
        let mut pairs = vec![
            (
                "libstd-*.so",
                "lib/rustlib/x86_64-unknown-linux-gnu/lib",
                "libstd-",
                ".so",
            ),
            ("bin/cargo", "bin", "cargo", ""),
        ];
        if std::env::var("PFS_BENCH_ALL").is_ok() {
            pairs.push(("librustc_driver-*.so", "lib", "librustc_driver-", ".so"));
        }
        for (name, dir, pre, suf) in pairs {
            let (Some(b), Some(t)) = (find(old, dir, pre, suf), find(new, dir, pre, suf)) else {
                println!("{name}: not found in both toolchains, skipped");
                continue;
            };
            let target = std::fs::read(&t).unwrap();
            let sdir = tmp
                .path()
                .join(format!("snap-{}", pre.trim_end_matches('-')));
            let t0 = Instant::now();
            let rep = pob::build(
                &Recipe::default_recipe(),
                &[(b.clone(), "basis".into())],
                &sdir,
                &mut |_, _| {},
            )
            .unwrap();
            let snap_s = t0.elapsed().as_secs_f64();
            let snap = Snapshot::open(&sdir, HugePolicy::Auto).unwrap();
            let t0 = Instant::now();
            let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).unwrap();
            let idx_s = t0.elapsed().as_secs_f64();
            eprintln!(
                "{name}: snapshot {:.0} MB/s, index {:.0} MB/s",
                rep.manifest.size as f64 / snap_s / 1e6,
                rep.manifest.size as f64 / idx_s / 1e6
            );
            let p = plan_target(&snap, &idx, &target);
            let mut cells = vec![(
                "pfs (plan+pack)".to_string(),
                Some((p.wire, p.plan_s + p.pack_s)),
            )];
            cells.extend(alternatives(&b, &t, tmp.path()));
            let line = json!({
                "kind": "bench-plan", "pair": name, "target_bytes": target.len(), "wire_bytes": p.wire,
                "raw_ratio": p.raw_ratio, "segments": p.segments, "plan_s": p.plan_s, "pack_s": p.pack_s,
                "rebuild_gbs": p.rebuild_gbs, "snapshot_mbs": rep.manifest.size as f64 / snap_s / 1e6,
                "index_mbs": rep.manifest.size as f64 / idx_s / 1e6,
                "alternatives": cells.iter().skip(1).map(|(n, c)| json!({"tool": n, "bytes": c.map(|x| x.0), "seconds": c.map(|x| x.1)})).collect::<Vec<_>>(),
            });
            let _ = packetfs::metrics::append(&metrics, &line);
            println!(
                "{name}: pfs raw_ratio {:.3}, {} segments, plan {:.2} s + pack {:.2} s, rebuild {:.1} GB/s in memory; snapshot build {:.0} MB/s, index build {:.0} MB/s",
                p.raw_ratio, p.segments, p.plan_s, p.pack_s, p.rebuild_gbs, rep.manifest.size as f64 / snap_s / 1e6, rep.manifest.size as f64 / idx_s / 1e6
            );
            let ablate = match pre {
                "libstd-" => ablation,
                "cargo" => ablation && std::env::var("PFS_BENCH_ABLATION_CARGO").is_ok(),
                _ => false,
            };
            if ablate && !features_only {
                let alts: Vec<(String, Option<(u64, f64)>)> = cells
                    .iter()
                    .skip(1)
                    .filter(|(n, _)| n.starts_with("zstd -19") || n.starts_with("xdelta3"))
                    .cloned()
                    .collect();
                ablation_table(name, &snap, &target, &alts);
            }
            if features_only {
                feature_table(name, &snap, &idx, &target, &metrics);
            }
            rows.push(Row {
                name: name.to_string(),
                target: target.len() as u64,
                cells,
            });
            drop(idx);
            drop(snap);
            let _ = std::fs::remove_dir_all(&sdir);
        }
    }
    if !rows.is_empty() {
        println!();
        let heads: Vec<String> = rows[0].cells.iter().map(|c| c.0.clone()).collect();
        println!("| basis -> target | target | {} |", heads.join(" | "));
        println!("|---|---:|{}", "---:|".repeat(heads.len()));
        for r in &rows {
            let cells: Vec<String> = r
                .cells
                .iter()
                .map(|(_, c)| match c {
                    Some((b, s)) => format!("{} {} {:.2} s", b, pct(*b, r.target), s),
                    None => "n/a (tool missing)".into(),
                })
                .collect();
            println!("| {} | {} | {} |", r.name, r.target, cells.join(" | "));
        }
    }

    // bash against the synthetic recipe alone
    let bash = Path::new("/usr/bin/bash");
    if let Ok(target) = std::fs::read(bash) {
        let sdir = tmp.path().join("snap-synth");
        pob::build(&Recipe::default_recipe(), &[], &sdir, &mut |_, _| {}).unwrap();
        let snap = Snapshot::open(&sdir, HugePolicy::Auto).unwrap();
        let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).unwrap();
        if !only_rebuild {
            if features_only {
                feature_table("/usr/bin/bash vs synthetic", &snap, &idx, &target, &metrics);
            }
            let p = plan_target(&snap, &idx, &target);
            let o = tmp.path().join("bash.xz");
            let xz = timed(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("xz -9 -T1 -c /usr/bin/bash > '{}'", o.display())),
                &o,
            );
            println!();
            println!(
                "| /usr/bin/bash, synthetic recipe only | raw_ratio | wire bytes | plan+pack s |"
            );
            println!("|---|---:|---:|---:|");
            println!("| source document (unverified) | 0.985837 | - | - |");
            println!(
                "| pfs | {:.6} | {} ({}) | {:.2} |",
                p.raw_ratio,
                p.wire,
                pct(p.wire, target.len() as u64),
                p.plan_s + p.pack_s
            );
            if let Some((b, s)) = xz {
                println!(
                    "| xz -9 (whole file) | - | {} ({}) | {:.2} |",
                    b,
                    pct(b, target.len() as u64),
                    s
                );
            }
            if ablation && !features_only {
                let alts = vec![("xz -9 (whole file)".to_string(), xz)];
                ablation_table("/usr/bin/bash vs synthetic", &snap, &target, &alts);
            }
            let _ = packetfs::metrics::append(
                &metrics,
                &json!({"kind": "bench-plan", "pair": "bash-synthetic", "target_bytes": target.len(),
            "wire_bytes": p.wire, "raw_ratio": p.raw_ratio, "plan_s": p.plan_s, "pack_s": p.pack_s, "xz9_bytes": xz.map(|x| x.0)}),
            );
        }
        // reconstruction of a match-heavy blueprint: a file made of long snapshot runs
        let s = snap.bytes();
        let mut heavy = Vec::with_capacity(256 << 20);
        // chunks of 4-64 KiB at arbitrary (not page-aligned) offsets, as a real file's would be
        let mut rng = pob::prng::SplitMix64::new(11);
        while heavy.len() < (256 << 20) {
            let len = 4096 + rng.below(60 << 10) as usize;
            let off = rng.below((s.len() - len) as u64) as usize;
            heavy.extend_from_slice(&s[off..off + len]);
        }
        let p = plan::plan(
            &heavy,
            &snap,
            &idx,
            &Hints::default(),
            &PlanConfig::default(),
        )
        .unwrap();
        let mut out = vec![0u8; heavy.len()];
        p.blueprint.rebuild_into(s, &mut out).unwrap();
        assert!(out == heavy);
        let gbs = rebuild_speed(&p.blueprint, s, &mut out);
        eprintln!("heavy blueprint: {:?}", p.blueprint.stats());
        drop(out);
        drop(heavy);
        let mc = memcpy_gbs();
        println!();
        println!(
            "| reconstruction (256 MiB, {} segments, in memory) | GB/s |",
            p.blueprint.segments.len()
        );
        println!("|---|---:|");
        println!("| pfs rebuild_into | {gbs:.2} |");
        println!("| memcpy, same machine, same run | {mc:.2} |");
        println!("| ratio | {:.2} (goal >= 0.5) |", gbs / mc);
        let _ = packetfs::metrics::append(
            &metrics,
            &json!({"kind": "bench-rebuild", "rebuild_gbs": gbs, "memcpy_gbs": mc, "ratio": gbs / mc}),
        );
    }
}

fn chrono_now() -> String {
    let o = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output();
    o.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// One ablation setting: the planner config and whether ELF section hints are read.
struct Setting {
    cfg: PlanConfig,
    hints: bool,
}

/// A row of the ablation table: its name and how it changes the default setting.
type Tweak = fn(&mut Setting);

/// The ablation rows, one line each. Every planner feature appears switched off (if on by
/// default) or on (if off by default), plus the fanout settings.
fn ablation_rows() -> Vec<(&'static str, Tweak)> {
    use Projection::*;
    vec![
        ("default", |_| {}),
        ("no k=4 index", |s| s.cfg.use_k4 = false),
        ("no xor/add", |s| s.cfg.transforms = false),
        ("no ELF section hints", |s| s.hints = false),
        ("no acceleration (probe every byte)", |s| s.cfg.max_skip = 1),
        ("one thread", |s| s.cfg.threads = 1),
        ("no soft identity", |s| s.cfg.soft = false),
        ("+ self segments", |s| s.cfg.self_segments = true),
        ("+ anchors: ascii", |s| s.cfg.projections = vec![Ascii]),
        ("+ anchors: nibble", |s| s.cfg.projections = vec![Nibble]),
        ("+ anchors: numeric", |s| s.cfg.projections = vec![Numeric]),
        ("+ anchors: opcode", |s| s.cfg.projections = vec![Opcode]),
        ("+ anchors: all four", |s| {
            s.cfg.projections = vec![Ascii, Nibble, Numeric, Opcode]
        }),
        ("+ gating", |s| s.cfg.gate = true),
        ("+ gating, widen after 32 misses", |s| {
            s.cfg.gate = true;
            s.cfg.gate_widen_after = 32
        }),
        ("+ sweep", |s| s.cfg.sweep = true),
        ("+ sweep, 64 MiB per window", |s| {
            s.cfg.sweep = true;
            s.cfg.sweep_window_bytes = 64 << 20
        }),
        ("+ sweep + gating", |s| {
            s.cfg.sweep = true;
            s.cfg.gate = true
        }),
        ("k=8 fanout 4", |s| s.cfg.fanout_k8 = 4),
        ("k=8 fanout 16", |s| s.cfg.fanout_k8 = 16),
        ("k=4 fanout 16 in .text, 16 candidates", |s| {
            s.cfg.fanout_k4 = 16;
            s.cfg.k4_text = true;
            s.cfg.k4_candidates = 16
        }),
        ("k=4 fanout 16 in gated .text", |s| {
            s.cfg.fanout_k4 = 16;
            s.cfg.k4_text = true;
            s.cfg.k4_candidates = 16;
            s.cfg.gate = true
        }),
        ("everything on", |s| {
            s.cfg.projections = vec![Ascii, Nibble, Numeric, Opcode];
            s.cfg.gate = true;
            s.cfg.sweep = true;
            s.cfg.fanout_k4 = 16;
            s.cfg.k4_text = true;
            s.cfg.k4_candidates = 16;
            s.cfg.self_segments = true
        }),
    ]
}

/// `PFS_BENCH_ABLATION=1`: a pair planned under each ablation row, all in this run, next to
/// the alternatives measured for the same pair in this run. Indexes a row needs beyond the
/// default set are built on demand (once per snapshot) and their memory is shown.
fn ablation_table(
    pair: &str,
    snap: &Snapshot,
    target: &[u8],
    alts: &[(String, Option<(u64, f64)>)],
) {
    let only: Option<String> = std::env::var("PFS_BENCH_ROWS").ok();
    println!();
    println!("| {pair} ablation | wire bytes | raw_ratio | segments | plan s | pack s | lookup / extend / sweep ms | index memory |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let snap_len = snap.bytes().len();
    for (name, tweak) in ablation_rows() {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|r| name.contains(r.trim())))
        {
            continue;
        }
        let mut s = Setting {
            cfg: PlanConfig::default(),
            hints: true,
        };
        tweak(&mut s);
        let specs = plan::index_specs(&s.cfg);
        let t = Instant::now();
        let (idx, reps) = IndexSet::ensure(snap, &specs, false).expect("index");
        let built: Vec<&str> = reps
            .iter()
            .filter(|r| r.rebuilt)
            .map(|r| r.file.as_str())
            .collect();
        if !built.is_empty() {
            eprintln!(
                "{name}: built {} in {:.1} s",
                built.join(", "),
                t.elapsed().as_secs_f64()
            );
        }
        let mem: usize = reps.iter().map(|r| r.bytes).sum();
        let p = plan_target_with(snap, &idx, target, &s.cfg, s.hints);
        println!(
            "| {name} | {} | {:.3} | {} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} MB ({:.2} B/B) |",
            p.wire,
            p.raw_ratio,
            p.segments,
            p.plan_s,
            p.pack_s,
            p.times.lookup_ms,
            p.times.extend_ms,
            p.times.sweep_ms,
            mem as f64 / 1e6,
            mem as f64 / snap_len.max(1) as f64
        );
    }
    for (n, c) in alts {
        match c {
            Some((b, secs)) => println!("| {n} (same run) | {b} | - | - | {secs:.2} | - | - | - |"),
            None => println!("| {n} | n/a (tool missing) | - | - | - | - | - | - |"),
        }
    }
}

/// `PFS_BENCH_ABLATION=1`: soft identity and self segments each on and off (same run, same
/// snapshot), with the segment table folded and unfolded.
fn feature_table(name: &str, snap: &Snapshot, idx: &IndexSet, target: &[u8], metrics: &Path) {
    let base = PlanConfig::default();
    let rows: Vec<(&str, PlanConfig)> = vec![
        (
            "soft off, self off (before this round)",
            PlanConfig {
                soft: false,
                self_segments: false,
                ..base.clone()
            },
        ),
        (
            "soft on (default)",
            PlanConfig {
                soft: true,
                self_segments: false,
                ..base.clone()
            },
        ),
        (
            "self on",
            PlanConfig {
                soft: false,
                self_segments: true,
                ..base.clone()
            },
        ),
        (
            "soft on, self on",
            PlanConfig {
                soft: true,
                self_segments: true,
                ..base.clone()
            },
        ),
    ];
    println!();
    println!("| {name}: features | wire bytes | raw_ratio | segments | plan s (self ms, soft ms) | pack s | table folded / unfolded (zstd) | all-raw won |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (row, cfg) in rows {
        let p = plan_target_with(snap, idx, target, &cfg, true);
        println!(
            "| {row} | {} | {:.4} | {} | {:.2} ({:.0}, {:.0}) | {:.2} | {} / {} | {} |",
            p.wire,
            p.raw_ratio,
            p.segments,
            p.plan_s,
            p.self_ms,
            p.soft_ms,
            p.pack_s,
            p.table_folded,
            p.table_unfolded,
            p.plain_won
        );
        let _ = packetfs::metrics::append(
            metrics,
            &json!({"kind": "bench-plan-features", "pair": name, "row": row, "target_bytes": target.len(),
                "wire_bytes": p.wire, "raw_ratio": p.raw_ratio, "segments": p.segments, "plan_s": p.plan_s,
                "self_ms": p.self_ms, "soft_ms": p.soft_ms, "pack_s": p.pack_s,
                "table_folded": p.table_folded, "table_unfolded": p.table_unfolded, "plain_won": p.plain_won}),
        );
    }
}
