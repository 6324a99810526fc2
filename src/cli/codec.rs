//! `pfs snapshot`, `pfs index`, `pfs plan`, `pfs unplan`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use packetfs::blueprint::coder::Families;
use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::blueprint::predict::PredictOptions;
use packetfs::blueprint::Level;
use packetfs::blueprint::{Source, Transform};
use packetfs::index::{default_specs, IndexSet, IndexSpec, Projection};
use packetfs::plan::hints::Hints;
use packetfs::plan::{self, PlanConfig};
use packetfs::pob::{self, HugePolicy, Recipe, Snapshot};
use packetfs::util::{hex, human_bytes, AtomicFile};

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Build a snapshot: synthetic banks from the recipe and seed, then corpus banks from
    /// --add files. The same inputs give a byte-identical snapshot on any machine. Indexes are
    /// built too unless --no-index.
    Build(BuildArgs),
    /// Print the manifest summary and the bank table.
    Info {
        /// Snapshot directory.
        dir: PathBuf,
        /// Print the manifest as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the snapshot's BLAKE3 and each corpus bank's, and compare with the manifest.
    Verify {
        /// Snapshot directory.
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Recipe TOML (default: the built-in config/snapshot.default.toml).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Synthetic size in MiB (overrides the recipe's size_mb).
    #[arg(long)]
    size_mb: Option<u64>,
    /// PRNG seed (overrides the recipe's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Files or directories both hosts hold, added as corpus banks (repeatable).
    #[arg(long, num_args = 1..)]
    add: Vec<PathBuf>,
    /// Output directory (snapshot.bin, snapshot.manifest.json, index/).
    #[arg(long)]
    out: PathBuf,
    /// Do not build the indexes now (they are built on first use).
    #[arg(long)]
    no_index: bool,
}

#[derive(Subcommand, Debug)]
pub enum IndexCmd {
    /// Build (or rebuild) the k-gram indexes beside a snapshot. Up-to-date indexes are kept
    /// unless --force.
    Build {
        /// Snapshot directory.
        dir: PathBuf,
        /// Rebuild even when up to date.
        #[arg(long)]
        force: bool,
        /// Build what this preset plans with.
        #[arg(long, value_enum, default_value = "default")]
        level: Level,
        #[command(flatten)]
        tuning: Tuning,
    },
}

/// Planner settings shared by `pfs plan` and `pfs index build` (the indexes a config needs).
#[derive(Args, Debug, Clone, Default)]
pub struct Tuning {
    /// Planner config TOML (fields of PlanConfig, all optional; see README "Planner").
    /// The flags below override it.
    #[arg(long)]
    planner: Option<PathBuf>,
    /// Planner engine: `covers` (approximate covers through the minimizer index, every
    /// preset) or `segments` (exact id/xor/add segments through the k-gram indexes: the
    /// flags below up to --sweep, and --soft/--self, apply to it).
    #[arg(long, value_enum)]
    engine: Option<plan::Engine>,
    /// Fanout of the raw k=8 index (positions kept per bucket).
    #[arg(long)]
    fanout_k8: Option<u32>,
    /// Fanout of the raw k=4 index.
    #[arg(long)]
    fanout_k4: Option<u32>,
    /// Coarse projections to anchor on, comma-separated: ascii,nibble,numeric,opcode.
    #[arg(long, value_delimiter = ',')]
    projections: Vec<String>,
    /// Section-aware bank gating.
    #[arg(long)]
    gate: bool,
    /// Sweep fallback when the indexes miss.
    #[arg(long)]
    sweep: bool,
}

impl Tuning {
    /// The preset of `level`, then the --planner file's keys over it, then the flags.
    fn config(&self, level: Level) -> anyhow::Result<PlanConfig> {
        let mut c = match &self.planner {
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .with_context(|| format!("reading planner config {}", p.display()))?;
                layer_toml(PlanConfig::preset(level), &t)
                    .with_context(|| format!("{}", p.display()))?
            }
            None => PlanConfig::preset(level),
        };
        if let Some(e) = self.engine {
            c.engine = e;
        }
        if let Some(f) = self.fanout_k8 {
            c.fanout_k8 = f;
        }
        if let Some(f) = self.fanout_k4 {
            c.fanout_k4 = f;
        }
        for name in &self.projections {
            let p = Projection::parse(name)
                .filter(|p| p.is_coarse())
                .with_context(|| {
                    format!("--projections: unknown projection {name:?} (ascii, nibble, numeric, opcode)")
                })?;
            if !c.projections.contains(&p) {
                c.projections.push(p);
            }
        }
        c.gate |= self.gate;
        c.sweep |= self.sweep;
        Ok(c)
    }
}

/// `base` with the keys of a planner TOML text over it (nested tables merge key by key);
/// unknown keys and bad values are refused as [`PlanConfig::from_toml`] refuses them.
fn layer_toml(base: PlanConfig, text: &str) -> Result<PlanConfig, plan::PlanError> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    // parse (and so refuse unknown keys) on its own first, for the clearer message
    PlanConfig::from_toml(text)?;
    let over: toml::Table =
        toml::from_str(text).map_err(|source| plan::PlanError::Toml { source })?;
    let mut t = toml::Table::try_from(&base).expect("a PlanConfig serialises to TOML");
    merge(&mut t, over);
    let c: PlanConfig = toml::Value::Table(t)
        .try_into()
        .map_err(|source| plan::PlanError::Toml { source })?;
    c.validate()?;
    Ok(c)
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The file to plan.
    file: PathBuf,
    /// Snapshot directory.
    #[arg(long)]
    snapshot: PathBuf,
    /// Write the packed blueprint here (default: plan and report only).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Section hints: `auto` reads ELF section headers, `none` disables, or a JSON file
    /// {"sections":[{"name","kind","offset","size"}]} (kind: text|rodata|data|reloc|strings|other).
    #[arg(long, default_value = "auto")]
    hints: String,
    /// Planning window in bytes: the unit of thread splits and progress (segments are not cut
    /// at window edges).
    #[arg(long, default_value_t = 1 << 20)]
    window: usize,
    /// Also write the blueprint as human-readable JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Preset (planner and packer): `fast` (what `pfs send` plans with: sparse seeds, cheap
    /// coders), `default`, or `max` (plan once, send many times: the covers chosen again over
    /// every diagonal the index offers at every anchor, LZMA settings ranked per stream). The
    /// planner side is overridden by --planner and the flags.
    #[arg(long, value_enum, default_value = "default")]
    level: Level,
    /// Reference prediction for x86-64 ELF files (costs nothing in the differences when a
    /// moved reference is predicted right).
    #[arg(long, value_enum, default_value = "on")]
    predict: OnOff,
    /// The x86 branch filters on the literals of an x86-64 ELF file: tried at every level
    /// (BCJ in front of LZMA2 at `default` and `max`, in front of zstd at `fast`), kept
    /// where smaller; `off` for the ablation.
    #[arg(long, value_enum, default_value = "on")]
    bcj: OnOff,
    /// Coder families tried on each stream: `all` (the level's set), or only `zstd`, only
    /// `lzma2` (each at the level's strength), or `stored` (no coder); for the ablation.
    #[arg(long, value_enum, default_value = "all")]
    coders: Families,
    /// Planner threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Draw the file's coverage (segment kind and source bank) as an SVG strip here.
    #[arg(long)]
    map: Option<PathBuf>,
    #[command(flatten)]
    tuning: Tuning,
    /// Do not use the k=4 index.
    #[arg(long)]
    no_k4: bool,
    /// Search the identity only (no xor/add).
    #[arg(long)]
    no_transforms: bool,
    /// Soft identity: approximate snapshot matches plus patch bytes over what stays raw
    /// (.pbb format v2). Default: on (or the --planner file's `soft`).
    #[arg(long = "soft", value_enum)]
    soft: Option<OnOff>,
    /// Fraction of equal bytes that makes a window a soft-identity hit (default 0.92).
    #[arg(long)]
    soft_min_equal: Option<f64>,
    /// Self segments: copies from earlier in the same file (.pbb format v2). Default: off (or
    /// the --planner file's `self_segments`).
    #[arg(long = "self", value_enum)]
    self_segments: Option<OnOff>,
    /// Metrics log (JSON lines) to append the run's metrics to.
    #[arg(long, default_value = packetfs::metrics::DEFAULT_LOG)]
    metrics: PathBuf,
    /// Snapshot memory: mapped from the file (off: planning reads a small part of it),
    /// hugepages when available (auto), or required (on).
    #[arg(long, value_enum, default_value = "off")]
    hugepages: HugePolicy,
}

/// A planner feature switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug)]
pub struct UnplanArgs {
    /// The packed blueprint.
    input: PathBuf,
    /// Snapshot directory.
    #[arg(long)]
    snapshot: PathBuf,
    /// Output file (written under a temporary name, renamed when its BLAKE3 matches).
    #[arg(short, long)]
    out: PathBuf,
    /// Snapshot memory: mapped from the file (off: a rebuild reads only the parts its
    /// segments name, and start-up does no work proportional to the snapshot), hugepages when
    /// available (auto: a copy of the whole snapshot first), or required (on).
    #[arg(long, value_enum, default_value = "off")]
    hugepages: HugePolicy,
}

/// A one-line progress meter on stderr when it is a terminal.
struct Meter {
    what: &'static str,
    tty: bool,
    last: Instant,
    t0: Instant,
}

impl Meter {
    fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Meter {
            what,
            tty: std::io::stderr().is_terminal(),
            last: now,
            t0: now,
        }
    }
    fn tick(&mut self, done: u64, total: u64) {
        if !self.tty || (self.last.elapsed().as_millis() < 100 && done < total) {
            return;
        }
        self.last = Instant::now();
        let pct = if total == 0 {
            100.0
        } else {
            100.0 * done as f64 / total as f64
        };
        let rate = done as f64 / self.t0.elapsed().as_secs_f64().max(1e-9) / 1e6;
        eprint!(
            "\r{}: {pct:5.1}% {} / {} ({rate:.0} MB/s)   ",
            self.what,
            human_bytes(done),
            human_bytes(total)
        );
        if done >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

pub fn snapshot(cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Build(a) => {
            let mut recipe = match &a.recipe {
                Some(p) => {
                    let t = std::fs::read_to_string(p)
                        .with_context(|| format!("reading recipe {}", p.display()))?;
                    Recipe::parse(&t).with_context(|| format!("{}", p.display()))?
                }
                None => Recipe::default_recipe(),
            };
            if let Some(s) = a.size_mb {
                recipe.size_mb = s;
            }
            if let Some(s) = a.seed {
                recipe.seed = s;
            }
            recipe.validate()?;
            let corpus = pob::collect_corpus(&a.add)?;
            let mut m = Meter::new("snapshot");
            let rep = pob::build(&recipe, &corpus, &a.out, &mut |d, t| m.tick(d, t))?;
            let mf = &rep.manifest;
            println!(
                "snapshot {} built in {}: {} in {} banks ({} corpus files), {:.1} s, {:.0} MB/s",
                mf.snapshot_id,
                a.out.display(),
                human_bytes(mf.size),
                mf.banks.len(),
                mf.corpus.len(),
                rep.seconds,
                mf.size as f64 / rep.seconds.max(1e-9) / 1e6
            );
            if !a.no_index {
                let snap = Snapshot::open(&a.out, HugePolicy::Off)?;
                ensure_index(&snap, &default_specs(), true)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Info { dir, json } => {
            let m = Snapshot::read_manifest(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("snapshot    {}", m.snapshot_id);
            println!("format      {}", m.format_version);
            println!("size        {} ({} bytes)", human_bytes(m.size), m.size);
            println!(
                "recipe      seed {}, synthetic {} MiB, {} synthetic banks",
                m.recipe.seed,
                m.recipe.size_mb,
                m.recipe.banks.len()
            );
            println!("corpus      {} files", m.corpus.len());
            println!();
            println!(
                "{:>4}  {:<16} {:>12} {:>12}  source",
                "bank", "kind", "offset", "length"
            );
            for b in &m.banks {
                println!(
                    "{:>4}  {:<16} {:>12} {:>12}  {}",
                    b.bank_id,
                    b.kind.name(),
                    b.offset,
                    b.len,
                    b.source
                );
            }
            let idir = packetfs::index::index_dir(&dir);
            for spec in default_specs() {
                let p = idir.join(spec.file_name());
                let state = match std::fs::metadata(&p) {
                    Ok(md) => format!("{} on disk", human_bytes(md.len())),
                    Err(_) => "not built".into(),
                };
                println!("index {:<28} {state}", spec.file_name());
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Verify { dir } => {
            let t = Instant::now();
            let snap = Snapshot::open(&dir, HugePolicy::Off)?;
            snap.verify()?;
            println!(
                "snapshot {} verified: {} and {} corpus files match the manifest ({:.2} s)",
                snap.manifest.snapshot_id,
                human_bytes(snap.manifest.size),
                snap.manifest.corpus.len(),
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ensure_index(snap: &Snapshot, specs: &[IndexSpec], force: bool) -> anyhow::Result<IndexSet> {
    let (set, reports) = IndexSet::ensure(snap, specs, force)?;
    for r in &reports {
        if r.rebuilt {
            eprintln!(
                "index {}: built ({}), {} entries, {}, {:.2} s, {:.0} MB/s of snapshot",
                r.file,
                r.reason,
                r.entries,
                human_bytes(r.bytes as u64),
                r.build_seconds,
                snap.manifest.size as f64 / r.build_seconds.max(1e-9) / 1e6
            );
        }
    }
    Ok(set)
}

pub fn index(cmd: IndexCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        IndexCmd::Build {
            dir,
            force,
            tuning,
            level,
        } => {
            let cfg = tuning.config(level)?;
            let specs = plan::index_specs(&cfg);
            let snap = Snapshot::open(&dir, HugePolicy::Off)?;
            let (_, reports) = IndexSet::ensure(&snap, &specs, force)?;
            let snap_len = snap.bytes().len();
            println!(
                "{:<32} {:<6} {:>10} {:>11} {:>11} {:>8}  reason",
                "index", "state", "entries", "memory", "bound", "seconds"
            );
            let mut total = 0u64;
            for (r, spec) in reports.iter().zip(&specs) {
                total += r.bytes as u64;
                println!(
                    "{:<32} {:<6} {:>10} {:>11} {:>11} {:>8.2}  {}",
                    r.file,
                    if r.rebuilt { "built" } else { "kept" },
                    r.entries,
                    human_bytes(r.bytes as u64),
                    human_bytes(spec.estimated_bytes(snap_len) as u64),
                    r.build_seconds,
                    r.reason
                );
            }
            println!(
                "memory: {} mapped for {} indexes over a {} snapshot ({:.2} bytes per snapshot byte; bound = the most a spec can take)",
                human_bytes(total),
                reports.len(),
                human_bytes(snap_len as u64),
                total as f64 / snap_len.max(1) as f64
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_input(path: &Path) -> anyhow::Result<packetfs::input::Input> {
    packetfs::input::open(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn plan(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let t_all = Instant::now();
    let file = read_input(&a.file)?;
    let base = a.tuning.config(a.level)?;
    let cfg = PlanConfig {
        window: a.window.max(4096),
        threads: a.threads,
        use_k4: base.use_k4 && !a.no_k4,
        transforms: base.transforms && !a.no_transforms,
        soft: a.soft.map_or(base.soft, |v| v == OnOff::On),
        soft_min_equal: a.soft_min_equal.unwrap_or(base.soft_min_equal),
        self_segments: a
            .self_segments
            .map_or(base.self_segments, |v| v == OnOff::On),
        ..base
    };
    cfg.validate()?;
    let snap = super::open_snapshot(&a.snapshot, a.hugepages)?;
    let idx = ensure_index(&snap, &plan::index_specs(&cfg), false)?;
    let t_h = Instant::now();
    let (hints, hints_source) = match a.hints.as_str() {
        "none" => (Hints::default(), "none".to_string()),
        "auto" => match Hints::from_elf(&file) {
            Some(h) => (h, "elf".to_string()),
            None => (Hints::default(), "none (not ELF)".to_string()),
        },
        p => {
            let text = std::fs::read(p).with_context(|| format!("cannot read hints file {p}"))?;
            (Hints::from_json(p, &text)?, p.to_string())
        }
    };
    let hints_ms = t_h.elapsed().as_secs_f64() * 1e3;
    let t_plan = Instant::now();
    // a file nothing matches keeps no copy of itself as the spill (random bytes are written
    // straight from `file` below; the spill is filled where the blueprint is packed)
    let how = plan::How {
        hash: true,
        elide_raw_spill: true,
        start_weak: false,
    };
    let mut p = plan::plan_with(&file, &snap, &idx, &hints, &cfg, how)?;
    p.times.hints_ms = hints_ms;
    let plan_ms = t_plan.elapsed().as_secs_f64() * 1e3;
    // the map shows what the planner found (even when plain compression wins the .pbb)
    if let Some(mp) = &a.map {
        let svg = plan::map::render_svg(
            &p.blueprint,
            &snap.manifest.banks,
            &plan::map::MapOptions::default(),
        );
        packetfs::util::write_atomic(mp, svg.as_bytes())
            .with_context(|| format!("writing {}", mp.display()))?;
    }
    let t_pack = Instant::now();
    let mut opts = PackOptions::for_level(a.level);
    if a.predict == OnOff::Off {
        opts.predict = PredictOptions::NONE;
    }
    opts.bcj = a.bcj == OnOff::On;
    opts.families = a.coders;
    // the plan's figures (raw_ratio, segment counts) describe what the planner found; when
    // plain compression of the whole file is smaller, that is what the .pbb holds (plain_won)
    let st = p.blueprint.stats();
    // a file planned as raw bytes that do not compress (random data) is written from where
    // it is, between its few head bytes and the trailer (same bytes as packing it)
    let stored = pbb::stored_raw(&p.blueprint, &file);
    if stored.is_none() || a.json.is_some() {
        p.fill_spill(&file);
    }
    let (packed, sizes, plain) = match &stored {
        Some(sr) => (Vec::new(), sr.sizes.clone(), false),
        None => pbb::pack_best(&p.blueprint, &file, Some(snap.bytes()), &opts)?,
    };
    let parts: [&[u8]; 3] = match &stored {
        Some(sr) => [&sr.head, &file, &sr.trailer],
        None => [&packed, &[], &[]],
    };
    let wire_len: usize = parts.iter().map(|p| p.len()).sum();
    if plain {
        p.blueprint.segments = packetfs::blueprint::raw_segments(file.len() as u64);
        p.blueprint.spill = file.to_vec();
    }
    let pack_ms = t_pack.elapsed().as_secs_f64() * 1e3;
    p.times.pack_ms = pack_ms;
    if let Some(out) = &a.out {
        packetfs::util::write_atomic_parts(out, &parts)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(jp) = &a.json {
        write_blueprint_json(jp, &p.blueprint)?;
    }
    let file_bytes = file.len() as u64;
    let metrics = json!({
        "kind": "plan",
        "file": a.file.display().to_string(),
        "file_bytes": file_bytes,
        "segments": st.segments,
        "id": st.id,
        "xor": st.xor,
        "add": st.add,
        "raw": st.raw,
        "self": st.self_copy,
        "self_bytes": st.self_bytes,
        "cover": st.cover,
        "cover_bytes": st.cover_bytes,
        "cover_diff_nonzero": st.cover_diff_nonzero,
        "raw_spill": st.raw_spill,
        "raw_ratio": if file_bytes == 0 { 0.0 } else { st.raw_spill as f64 / file_bytes as f64 },
        "pbb_bytes": sizes.header + sizes.table + sizes.trailer,
        "spill_bytes": sizes.spill,
        "wire_bytes": wire_len,
        "wire_ratio": if file_bytes == 0 { 0.0 } else { wire_len as f64 / file_bytes as f64 },
        "plan_ms": plan_ms,
        "pack_ms": pack_ms,
        "total_ms": t_all.elapsed().as_secs_f64() * 1e3,
        "phase_ms": p.times,
        "planner": &cfg,
        "raw_bits_per_byte": p.raw_bits_per_byte,
        "hints": hints_source,
        "plain_won": plain,
        "level": a.level.name(),
        "streams": sizes.streams,
        "snapshot_id": snap.manifest.snapshot_id,
        "snapshot_backing": snap.backing_name(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    println!("{metrics}");
    packetfs::metrics::append(&a.metrics, &metrics)
        .with_context(|| format!("appending to metrics log {}", a.metrics.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn write_blueprint_json(path: &Path, bp: &packetfs::blueprint::Blueprint) -> anyhow::Result<()> {
    let segs: Vec<serde_json::Value> = bp
        .placed()
        .map(|p| match p.seg.src {
            Source::Snap { op, off, imm } => {
                if op == Transform::Id {
                    json!({"file_off": p.file_off, "op": op.name(), "offset": off, "len": p.seg.len})
                } else {
                    json!({"file_off": p.file_off, "op": op.name(), "offset": off, "len": p.seg.len, "imm8": imm})
                }
            }
            Source::Raw => json!({"file_off": p.file_off, "op": "raw", "len": p.seg.len}),
            Source::SelfCopy { off } => {
                json!({"file_off": p.file_off, "op": "self", "from": off, "len": p.seg.len})
            }
            Source::Cover { off } => {
                json!({"file_off": p.file_off, "op": "cover", "offset": off, "len": p.seg.len})
            }
        })
        .collect();
    let doc = json!({
        "snapshot_id": hex(&bp.snapshot_id),
        "file_len": bp.file_len,
        "file_blake3": hex(&bp.file_hash),
        "raw_spill_bytes": bp.spill.len(),
        "segments": segs,
    });
    let text = serde_json::to_vec_pretty(&doc)?;
    packetfs::util::write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

pub fn unplan(a: UnplanArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let bytes = read_input(&a.input)?;
    // check the snapshot id before reading anything else
    let h = pbb::read_header(&bytes).with_context(|| format!("{}", a.input.display()))?;
    let man = Snapshot::read_manifest(&a.snapshot)?;
    if hex(&h.snapshot_id) != man.snapshot_id {
        bail!(
            "{} was planned against snapshot {}, but {} holds snapshot {}",
            a.input.display(),
            hex(&h.snapshot_id),
            a.snapshot.display(),
            man.snapshot_id
        );
    }
    // the declared length against the free space before anything is decoded: decoding
    // allocates at most the declared file length (differences of covers, literals)
    let dir = match a.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Some(free) = free_bytes(&dir) {
        if h.file_len > free {
            bail!(
                "the rebuilt file needs {} but {} has only {} free",
                human_bytes(h.file_len),
                dir.display(),
                human_bytes(free)
            );
        }
    }
    let snap = super::open_snapshot(&a.snapshot, a.hugepages)?;
    let bp = pbb::unpack_with(&bytes, &snap.id, snap.bytes())
        .with_context(|| format!("{}", a.input.display()))?;
    let mut out = AtomicFile::create(&a.out)
        .with_context(|| format!("creating a file beside {}", a.out.display()))?;
    let mut hasher = blake3::Hasher::new();
    if bp.has_self_copies() {
        // self copies read bytes written earlier: rebuild in a mapping of the output file
        let f = out.file();
        f.set_len(bp.file_len)
            .with_context(|| format!("sizing {}", a.out.display()))?;
        if bp.file_len > 0 {
            // SAFETY: the temporary file is ours alone (created above, not yet renamed)
            let mut map = unsafe { memmap2::MmapMut::map_mut(&*f) }
                .with_context(|| format!("mapping {}", a.out.display()))?;
            bp.rebuild_into(snap.bytes(), &mut map)
                .with_context(|| format!("{}", a.input.display()))?;
            hasher.update(&map);
            map.flush()
                .with_context(|| format!("writing {}", a.out.display()))?;
        }
    } else {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        let mut buf = vec![0u8; 1 << 20];
        let s = snap.bytes();
        for p in bp.placed() {
            let mut done = 0usize;
            while done < p.seg.len as usize {
                let n = (p.seg.len as usize - done).min(buf.len());
                let dst = &mut buf[..n];
                match p.seg.src {
                    Source::Snap { op, off, imm } => {
                        let o = off as usize + done;
                        packetfs::blueprint::apply::transform(op, imm, &s[o..o + n], dst)
                    }
                    Source::Raw => dst.copy_from_slice(&p.raw[done..done + n]),
                    Source::Cover { off } => {
                        let o = off as usize + done;
                        packetfs::blueprint::apply::add_bytes(
                            &s[o..o + n],
                            &p.raw[done..done + n],
                            dst,
                        )
                    }
                    Source::SelfCopy { .. } => unreachable!("handled above"),
                }
                hasher.update(dst);
                w.write_all(dst)
                    .with_context(|| format!("writing {}", a.out.display()))?;
                done += n;
            }
        }
        w.flush()?;
    }
    let got = hasher.finalize();
    if got.as_bytes() != &bp.file_hash {
        bail!(
            "the rebuilt file hashes to {} but the blueprint says {}; nothing written to {}",
            got.to_hex(),
            hex(&bp.file_hash),
            a.out.display()
        );
    }
    out.commit()
        .with_context(|| format!("renaming into {}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}: {} rebuilt from {} segments and {} raw bytes, BLAKE3 {} verified, {:.3} s ({:.0} MB/s)",
        a.out.display(),
        human_bytes(bp.file_len),
        bp.segments.len(),
        bp.spill.len(),
        &hex(&bp.file_hash)[..16],
        secs,
        bp.file_len as f64 / secs.max(1e-9) / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
