//! `just bench-plan`: the `pfs` binary against the best delta tools, every row from one run.
//!
//! Pairs (basis -> target): libstd-*.so of the stable toolchain -> the nightly's; bin/cargo
//! stable -> nightly; numpy 2.1.2 -> 2.1.3 `_multiarray_umath` (PyPI manylinux x86_64 cp311
//! wheels, fetched once into target/bench-data by scripts/benchmarks/bench_data.sh);
//! /usr/bin/bash against the synthetic recipe only; 32 MiB of seeded pseudo-random bytes
//! (synthetic recipe only). For a pair with a basis, the snapshot is the default recipe plus
//! the basis as a corpus bank (`pfs snapshot build --add BASIS`), built and indexed once per
//! pair, each step timed and printed on its own line.
//!
//! Rows, each a whole process timed from spawn to exit:
//! - `pfs plan TARGET --snapshot S -o OUT` at `--level fast|default|max` when this build's
//!   `pfs plan --help` lists those presets (else one row with the build's default and the
//!   level rows print "n/a (no --level in this build)"). Snapshot load and index mapping are in
//!   the time; indexes are built beforehand (`pfs index build`, timed separately) and a row that
//!   still builds an index file says so. Every .pbb is rebuilt with `pfs unplan` and compared
//!   with the target byte for byte.
//! - `zstd -3/-9/-19 --long=30 --patch-from=BASIS -T0`, `xdelta3 -e -9 -s BASIS`, each decoded
//!   back and compared (untimed); with no basis (bash, random) they compress the target alone.
//! - HDiffPatch (PyPI `hdiffpatch`, in a venv at target/bench-venv-hdp or PFS_BENCH_VENV,
//!   created on first use): zstd-3, zstd-19 (window 2^23) and lzma2-9, timed inside Python
//!   around `diff(old, new, config, validate=False)` plus writing the patch (interpreter start
//!   excluded), applied back and compared (scripts/benchmarks/hdp.py).
//!
//! Then one goal line per goal of issue 10 (met / NOT met, with the measured ratios, or n/a
//! with the reason), and the in-memory reconstruction speed next to memcpy.
//!
//! Environment: `PFS_BENCH_SKIP_SLOW=1` (set by `just bench-plan`) skips zstd -19, xdelta3 and
//! HDiffPatch zstd-19 / lzma2-9 on targets over 16 MiB (bin/cargo, random) and says so in the
//! cell; `PFS_BENCH_PAIRS=libstd,numpy` keeps only those pairs (libstd, cargo, numpy, bash,
//! random); `PFS_BENCH_REBUILD=0` skips the reconstruction table; `PFS_BENCH_DATA` and
//! `PFS_BENCH_VENV` move the download cache and the venv. Every timed command (pfs plan and
//! each alternative) runs up to `PFS_BENCH_REPEAT` times (default 5) while its runs took
//! under `PFS_BENCH_REPEAT_SECS` (default 1.5 s) in all, and its cell shows the median (this
//! VM's single runs of a 0.05-0.1 s command moved 10-40%). `PFS_BENCH_ABLATION=1` adds one
//! table per pair (libstd, numpy, bash; bin/cargo too with `PFS_BENCH_ABLATION_CARGO=1`) with a
//! row per entry of scripts/benchmarks/plan_ablation.toml (`PFS_BENCH_ABLATION_FILE`): `pfs
//! plan --planner ROW.toml`, whole process, rebuilt and compared; a row whose key this build's
//! PlanConfig does not know prints "n/a".
//!
//! Output: Markdown tables on stdout and one JSON line per cell, per snapshot and per goal in
//! the metrics log (PFS_METRICS, default logs/patterns/metrics.jsonl).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use packetfs::index::IndexSet;
use packetfs::plan::{self, hints::Hints, PlanConfig};
use packetfs::pob::{self, HugePolicy, Snapshot};
use serde_json::{json, Value};

const PFS: &str = env!("CARGO_BIN_EXE_pfs");
/// Targets above this size count as slow for zstd -19, xdelta3 and HDiffPatch zstd-19/lzma2-9.
const SLOW_BYTES: u64 = 16 << 20;
const LEVELS: [&str; 3] = ["fast", "default", "max"];

/// One cell of a table: what a tool measured on a pair, or why there is no figure.
#[derive(Clone)]
enum Cell {
    /// Output bytes and seconds, checked by decoding back to the target; extra fields for
    /// the JSON line and a note for the cell.
    Done {
        bytes: u64,
        secs: f64,
        note: String,
        extra: Value,
    },
    /// Not measured: the reason is printed where the figure would be.
    NotRun(String),
}

impl Cell {
    fn figures(&self) -> Option<(u64, f64)> {
        match self {
            Cell::Done { bytes, secs, .. } => Some((*bytes, *secs)),
            Cell::NotRun(_) => None,
        }
    }
}

/// The rows of the main table.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    /// `pfs plan` with no preset flag (builds without `--level fast|default|max`).
    PfsBuildDefault,
    PfsLevel(&'static str),
    Zstd(u32),
    Xdelta,
    Hdp(&'static str),
}

impl Tool {
    fn label(self) -> String {
        match self {
            Tool::PfsBuildDefault => "pfs plan (no --level: this build's default)".into(),
            Tool::PfsLevel(l) => format!("pfs plan --level {l}"),
            Tool::Zstd(l) => format!("zstd -{l} --long=30 --patch-from"),
            Tool::Xdelta => "xdelta3 -9".into(),
            Tool::Hdp(c) => format!("HDiffPatch {c}"),
        }
    }
    fn slow(self) -> bool {
        matches!(
            self,
            Tool::Zstd(19) | Tool::Xdelta | Tool::Hdp("zstd-19") | Tool::Hdp("lzma2-9")
        )
    }
}

struct Pair {
    key: &'static str,
    label: String,
    basis: Option<PathBuf>,
    target: PathBuf,
    snap: PathBuf,
}

/// Everything a run shares.
struct Ctx {
    tmp: tempfile::TempDir,
    metrics: PathBuf,
    run: String,
    commit: String,
    skip_slow: bool,
    /// `pfs plan --help` lists the presets fast|default|max for --level.
    levels: bool,
    /// `pfs index build --help` lists --level (indexes built per preset beforehand).
    index_level: bool,
    /// The venv's python with hdiffpatch, or why HDiffPatch rows are skipped.
    hdp: Result<PathBuf, String>,
    failures: Vec<String>,
}

impl Ctx {
    fn log(&self, mut v: Value) {
        if let Value::Object(m) = &mut v {
            m.insert("run".into(), json!(self.run));
            m.insert("commit".into(), json!(self.commit));
        }
        if let Err(e) = packetfs::metrics::append(&self.metrics, &v) {
            eprintln!("metrics log {}: {e}", self.metrics.display());
        }
    }
}

fn env_on(k: &str) -> bool {
    std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn sh_out(cmd: &mut Command) -> Option<String> {
    let o = cmd.stderr(Stdio::null()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn sysroot(tc: &str) -> Option<PathBuf> {
    sh_out(
        Command::new("rustc")
            .arg(format!("+{tc}"))
            .args(["--print", "sysroot"]),
    )
    .map(PathBuf::from)
}

/// The first file under `dir` (searched to depth 4) whose name starts with `prefix` and ends
/// with `suffix` (`suffix` empty: the name equals `prefix`).
fn find_file(dir: &Path, prefix: &str, suffix: &str, depth: u32) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in &entries {
        let n = p.file_name()?.to_string_lossy().to_string();
        let hit = if suffix.is_empty() {
            n == prefix
        } else {
            n.starts_with(prefix) && n.ends_with(suffix)
        };
        if hit && p.is_file() {
            return Some(p.clone());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| find_file(p, prefix, suffix, depth - 1))
}

/// The help text of `pfs SUBCOMMAND --help`.
fn pfs_help(sub: &[&str]) -> String {
    let o = Command::new(PFS).args(sub).arg("--help").output();
    o.map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Whether `help` documents `--level` taking the presets fast, default and max (today's numeric
/// spill `--level` does not count).
fn help_has_presets(help: &str) -> bool {
    let Some(at) = help.find("--level") else {
        return false;
    };
    // the option's own block: up to the next option line
    let rest = &help[at..];
    let end = rest[7..]
        .find("\n      --")
        .or_else(|| rest[7..].find("\n  -"))
        .map(|e| e + 7)
        .unwrap_or(rest.len());
    let block = &rest[..end];
    ["fast", "default", "max"].iter().all(|w| block.contains(w))
}

/// Run to completion, timed from spawn to exit; Err with the first stderr lines on failure.
fn run_timed(cmd: &mut Command) -> Result<(f64, String), String> {
    let t = Instant::now();
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let msg: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(6)
            .collect();
        return Err(format!("exit {}: {}", o.status, msg.join(" / ")));
    }
    Ok((secs, stdout))
}

/// Most runs of one timed command (`PFS_BENCH_REPEAT`, default 5; 1 = single runs).
fn repeat_max() -> usize {
    std::env::var("PFS_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1)
}

/// A command is run again while its runs took less than this in all (`PFS_BENCH_REPEAT_SECS`,
/// default 1.5): short commands get several runs, long ones one or two.
fn repeat_secs() -> f64 {
    std::env::var("PFS_BENCH_REPEAT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.5)
}

/// `run` (one timed run: its seconds and output) repeated as [`repeat_max`] and
/// [`repeat_secs`] allow, every tool the same way: the median seconds, the last output and
/// the number of runs. The first failure ends it.
fn median_runs(
    mut run: impl FnMut() -> Result<(f64, String), String>,
) -> Result<(f64, String, usize), String> {
    let mut secs = Vec::new();
    let mut out;
    loop {
        let (s, o) = run()?;
        secs.push(s);
        out = o;
        if secs.len() >= repeat_max() || secs.iter().sum::<f64>() >= repeat_secs() {
            break;
        }
    }
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    let med = if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    };
    Ok((med, out, n))
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn dir_files(d: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    m.is_file()
                        .then(|| (e.file_name().to_string_lossy().to_string(), m.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The key a "unknown field `x`" planner error names.
fn unknown_key(err: &str) -> Option<String> {
    let at = err.find("unknown field `")? + "unknown field `".len();
    let end = err[at..].find('`')?;
    Some(err[at..at + end].to_string())
}

/// The flag a clap "unexpected argument '--x' found" error names.
fn unknown_flag(err: &str) -> Option<String> {
    let at = err.find("unexpected argument '")? + "unexpected argument '".len();
    let end = err[at..].find('\'')?;
    Some(err[at..at + end].to_string())
}

/// Time `pfs snapshot build` (no index) and `pfs index build` for one snapshot.
fn build_snapshot(ctx: &mut Ctx, label: &str, dir: &Path, add: Option<&Path>) -> bool {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = Command::new(PFS);
    c.args(["snapshot", "build", "--no-index", "--out"])
        .arg(dir);
    if let Some(a) = add {
        c.arg("--add").arg(a);
    }
    let build = match run_timed(&mut c) {
        Ok((s, _)) => s,
        Err(e) => {
            println!("{label}: pfs snapshot build failed: {e}");
            ctx.failures.push(format!("{label}: snapshot build: {e}"));
            return false;
        }
    };
    let snap_bytes = file_len(&dir.join("snapshot.bin"));
    let idx = match run_timed(Command::new(PFS).args(["index", "build"]).arg(dir)) {
        Ok((s, _)) => s,
        Err(e) => {
            println!("{label}: pfs index build failed: {e}");
            ctx.failures.push(format!("{label}: index build: {e}"));
            return false;
        }
    };
    let idx_bytes: u64 = dir_files(&dir.join("index")).iter().map(|f| f.1).sum();
    println!(
        "{label}: snapshot {:.1} MB built in {:.2} s; `pfs index build` {:.2} s ({:.0} MB/s of snapshot), index files {:.1} MB ({:.2} B per snapshot byte)",
        snap_bytes as f64 / 1e6,
        build,
        idx,
        snap_bytes as f64 / idx / 1e6,
        idx_bytes as f64 / 1e6,
        idx_bytes as f64 / snap_bytes.max(1) as f64
    );
    ctx.log(
        json!({"kind": "bench-plan-snapshot", "pair": label, "snapshot_bytes": snap_bytes,
        "build_s": build, "index_s": idx, "index_bytes": idx_bytes}),
    );
    true
}

/// `pfs plan` with `args` on the pair, whole process, then `pfs unplan` and a byte compare.
fn pfs_plan(ctx: &mut Ctx, pair: &Pair, tag: &str, args: &[String]) -> Cell {
    let out = ctx.tmp.path().join("pfs.pbb");
    let reb = ctx.tmp.path().join("pfs.rebuilt");
    let m = ctx.tmp.path().join("pfs-metrics.jsonl");
    for p in [&out, &reb, &m] {
        let _ = std::fs::remove_file(p);
    }
    let idx_before = dir_files(&pair.snap.join("index"));
    let extra_runs;
    let mut c = Command::new(PFS);
    c.arg("plan")
        .arg(&pair.target)
        .arg("--snapshot")
        .arg(&pair.snap)
        .arg("-o")
        .arg(&out)
        .arg("--metrics")
        .arg(&m)
        .args(args);
    let secs = match median_runs(|| run_timed(&mut c)) {
        Ok((s, _, runs)) => {
            extra_runs = runs;
            s
        }
        Err(e) => {
            if let Some(k) = unknown_key(&e) {
                return Cell::NotRun(format!("n/a (key `{k}` not in this build)"));
            }
            if let Some(f) = unknown_flag(&e) {
                return Cell::NotRun(format!("n/a (flag `{f}` not in this build)"));
            }
            ctx.failures
                .push(format!("{}: {tag}: pfs plan failed: {e}", pair.label));
            return Cell::NotRun(format!("FAILED: {e}"));
        }
    };
    let bytes = file_len(&out);
    let unplan = run_timed(
        Command::new(PFS)
            .arg("unplan")
            .arg(&out)
            .arg("--snapshot")
            .arg(&pair.snap)
            .arg("-o")
            .arg(&reb),
    );
    if let Err(e) = unplan {
        ctx.failures
            .push(format!("{}: {tag}: pfs unplan failed: {e}", pair.label));
        return Cell::NotRun(format!("FAILED: unplan: {e}"));
    }
    if !same_bytes(&reb, &pair.target) {
        ctx.failures
            .push(format!("{}: {tag}: rebuilt file differs", pair.label));
        return Cell::NotRun("FAILED: rebuilt file differs from the target".into());
    }
    let built: Vec<String> = dir_files(&pair.snap.join("index"))
        .into_iter()
        .filter(|f| !idx_before.contains(f))
        .map(|f| f.0)
        .collect();
    // one metrics line per run: the last for the plan's figures, the medians of the runs'
    // plan and pack times beside the cell's median seconds
    let lines: Vec<Value> = std::fs::read_to_string(&m)
        .map(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let metrics = lines.last().cloned().unwrap_or(Value::Null);
    let median_of = |key: &str| {
        let mut v: Vec<f64> = lines.iter().filter_map(|l| l[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let mut note = String::new();
    if let (Some(p), Some(k)) = (median_of("plan_ms"), median_of("pack_ms")) {
        note = format!(" (plan {:.2} + pack {:.2})", p / 1e3, k / 1e3);
    }
    if !built.is_empty() {
        note += &format!(" [built index {} during the run]", built.join(", "));
    }
    let mut extra =
        json!({"rebuilt_equal": true, "index_built_during_run": built, "runs": extra_runs});
    for k in [
        "plan_ms",
        "pack_ms",
        "segments",
        "raw_ratio",
        "wire_bytes",
        "plain_won",
        "level",
    ] {
        if !metrics[k].is_null() {
            extra[k] = metrics[k].clone();
        }
    }
    for k in ["plan_ms", "pack_ms"] {
        if let Some(v) = median_of(k) {
            extra[k] = json!(v);
        }
    }
    Cell::Done {
        bytes,
        secs,
        note,
        extra,
    }
}

/// One alternative tool on the pair, timed, decoded back and compared.
fn alternative(ctx: &mut Ctx, pair: &Pair, tool: Tool) -> Cell {
    let o = ctx.tmp.path().join("alt.out");
    let d = ctx.tmp.path().join("alt.dec");
    let _ = std::fs::remove_file(&o);
    let _ = std::fs::remove_file(&d);
    let label = tool.label();
    let fail = |ctx: &mut Ctx, what: String| {
        ctx.failures
            .push(format!("{}: {label}: {what}", pair.label));
        Cell::NotRun(format!("FAILED: {what}"))
    };
    match tool {
        Tool::Zstd(level) => {
            let mut c = Command::new("zstd");
            c.arg(format!("-{level}"))
                .args(["--long=30", "-T0", "-f", "-q"]);
            if let Some(b) = &pair.basis {
                c.arg(format!("--patch-from={}", b.display()));
            }
            c.arg(&pair.target).arg("-o").arg(&o);
            let (secs, runs) = match median_runs(|| run_timed(&mut c)) {
                Ok((s, _, n)) => (s, n),
                Err(e) => return fail(ctx, e),
            };
            let mut dc = Command::new("zstd");
            dc.args(["-d", "--long=30", "-f", "-q"]);
            if let Some(b) = &pair.basis {
                dc.arg(format!("--patch-from={}", b.display()));
            }
            dc.arg(&o).arg("-o").arg(&d);
            if let Err(e) = run_timed(&mut dc) {
                return fail(ctx, format!("decode: {e}"));
            }
            if !same_bytes(&d, &pair.target) {
                return fail(ctx, "decoded file differs".into());
            }
            Cell::Done {
                bytes: file_len(&o),
                secs,
                note: String::new(),
                extra: json!({"decoded_equal": true, "runs": runs}),
            }
        }
        Tool::Xdelta => {
            let mut c = Command::new("xdelta3");
            c.args(["-e", "-9", "-f"]);
            if let Some(b) = &pair.basis {
                c.arg("-s").arg(b);
            }
            c.arg(&pair.target).arg(&o);
            let (secs, runs) = match median_runs(|| run_timed(&mut c)) {
                Ok((s, _, n)) => (s, n),
                Err(e) => return fail(ctx, e),
            };
            let mut dc = Command::new("xdelta3");
            dc.args(["-d", "-f"]);
            if let Some(b) = &pair.basis {
                dc.arg("-s").arg(b);
            }
            dc.arg(&o).arg(&d);
            if let Err(e) = run_timed(&mut dc) {
                return fail(ctx, format!("decode: {e}"));
            }
            if !same_bytes(&d, &pair.target) {
                return fail(ctx, "decoded file differs".into());
            }
            Cell::Done {
                bytes: file_len(&o),
                secs,
                note: String::new(),
                extra: json!({"decoded_equal": true, "runs": runs}),
            }
        }
        Tool::Hdp(cfg) => {
            let py = match &ctx.hdp {
                Ok(p) => p.clone(),
                Err(why) => return Cell::NotRun(format!("skipped ({why})")),
            };
            let old = pair
                .basis
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/null"));
            // each run's own in-process seconds (hdp.py times the diff and the write)
            let r = median_runs(|| {
                let (_, line) = run_timed(
                    Command::new(&py)
                        .arg("scripts/benchmarks/hdp.py")
                        .arg(cfg)
                        .arg(&old)
                        .arg(&pair.target)
                        .arg(&o),
                )?;
                let v: Value = serde_json::from_str(line.lines().last().unwrap_or(""))
                    .map_err(|e| format!("hdp.py printed no JSON: {e}"))?;
                match (v["seconds"].as_f64(), v["verified"].as_bool()) {
                    (Some(s), Some(true)) => Ok((s, line)),
                    _ => Err(format!("hdp.py: {line}")),
                }
            });
            let (secs, line, runs) = match r {
                Ok(x) => x,
                Err(e) => return fail(ctx, e),
            };
            let v: Value =
                serde_json::from_str(line.lines().last().unwrap_or("")).unwrap_or(Value::Null);
            match v["bytes"].as_u64() {
                Some(b) => Cell::Done {
                    bytes: b,
                    secs,
                    note: String::new(),
                    extra: json!({"decoded_equal": true, "timed": "in-process diff + write", "runs": runs}),
                },
                _ => fail(ctx, format!("hdp.py: {line}")),
            }
        }
        Tool::PfsBuildDefault | Tool::PfsLevel(_) => unreachable!("pfs rows go through pfs_plan"),
    }
}

fn run_tool(ctx: &mut Ctx, pair: &Pair, tool: Tool) -> Cell {
    let target_len = file_len(&pair.target);
    match tool {
        Tool::PfsBuildDefault => pfs_plan(ctx, pair, "pfs plan", &[]),
        Tool::PfsLevel(l) => {
            if !ctx.levels {
                return Cell::NotRun("n/a (no --level in this build)".into());
            }
            if ctx.index_level {
                let r = run_timed(
                    Command::new(PFS)
                        .args(["index", "build"])
                        .arg(&pair.snap)
                        .args(["--level", l]),
                );
                match r {
                    Ok((s, _)) => println!(
                        "  {}: `pfs index build --level {l}` {s:.2} s (not in the row's time)",
                        pair.label
                    ),
                    Err(e) => println!(
                        "  {}: `pfs index build --level {l}` failed: {e}",
                        pair.label
                    ),
                }
            }
            pfs_plan(ctx, pair, &tool.label(), &["--level".into(), l.into()])
        }
        _ if ctx.skip_slow && tool.slow() && target_len > SLOW_BYTES => Cell::NotRun(format!(
            "skipped (slow on {} MB; PFS_BENCH_SKIP_SLOW=0 runs it)",
            target_len / 1_000_000
        )),
        _ => alternative(ctx, pair, tool),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn cell_text(c: &Cell, target: u64) -> String {
    match c {
        Cell::Done {
            bytes, secs, note, ..
        } => format!(
            "{} B {:.1}% {:.2} s{}",
            thousands(*bytes),
            100.0 * *bytes as f64 / target.max(1) as f64,
            secs,
            note
        ),
        Cell::NotRun(why) => why.clone(),
    }
}

/// Seeded pseudo-random bytes (SplitMix64): incompressible, the same on every run.
fn random_file(path: &Path, len: usize) {
    if file_len(path) == len as u64 {
        return;
    }
    let mut x: u64 = 0x005e_ed0f_b30c;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).expect("write random file");
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {mem}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

fn now_utc() -> String {
    sh_out(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).unwrap_or_default()
}

fn commit() -> String {
    let rev = sh_out(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let dirty = sh_out(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev}+dirty")
    } else {
        rev
    }
}

/// A release pair's basis and target files.
type BasisTarget = (PathBuf, PathBuf);

/// The pairs this run measures (missing inputs are reported and skipped).
fn pairs(ctx: &mut Ctx, wanted: &dyn Fn(&str) -> bool) -> Vec<Pair> {
    let mut out = Vec::new();
    let (stable, nightly) = (sysroot("stable"), sysroot("nightly"));
    let data = std::env::var("PFS_BENCH_DATA").unwrap_or_else(|_| "target/bench-data".into());
    let tmp = ctx.tmp.path().to_path_buf();
    let mut rel: Vec<(&'static str, String, Option<BasisTarget>)> = Vec::new();
    let tc = |prefix: &str, suffix: &str, sub: &str| -> Option<BasisTarget> {
        let (s, n) = (stable.as_ref()?, nightly.as_ref()?);
        let a = find_file(&s.join(sub), prefix, suffix, 4)?;
        let b = find_file(&n.join(sub), prefix, suffix, 4)?;
        (a != b).then_some((a, b))
    };
    if wanted("libstd") {
        rel.push((
            "libstd",
            "libstd 1.95 -> nightly".into(),
            tc("libstd-", ".so", "lib"),
        ));
    }
    if wanted("cargo") {
        rel.push((
            "cargo",
            "bin/cargo stable -> nightly".into(),
            tc("cargo", "", "bin"),
        ));
    }
    if wanted("numpy") {
        let o = Command::new("bash")
            .arg("scripts/benchmarks/bench_data.sh")
            .arg("numpy")
            .arg(&data)
            .stderr(Stdio::inherit())
            .output();
        let so = o.ok().filter(|o| o.status.success()).and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            let l: Vec<&str> = s.lines().collect();
            (l.len() == 2).then(|| (PathBuf::from(l[0]), PathBuf::from(l[1])))
        });
        rel.push(("numpy", "numpy 2.1.2 -> 2.1.3 _multiarray_umath".into(), so));
    }
    for (key, label, files) in rel {
        let Some((b, t)) = files else {
            println!("{label}: inputs not found (toolchains: rustup toolchain install nightly; numpy: PyPI), pair skipped");
            continue;
        };
        let snap = tmp.join(format!("snap-{key}"));
        if build_snapshot(ctx, &label, &snap, Some(&b)) {
            println!("  basis {}\n  target {}", b.display(), t.display());
            out.push(Pair {
                key,
                label,
                basis: Some(b),
                target: t,
                snap,
            });
        }
    }
    if wanted("bash") || wanted("random") {
        let snap = tmp.join("snap-synthetic");
        if build_snapshot(ctx, "synthetic recipe only", &snap, None) {
            if wanted("bash") && Path::new("/usr/bin/bash").is_file() {
                out.push(Pair {
                    key: "bash",
                    label: "/usr/bin/bash vs synthetic".into(),
                    basis: None,
                    target: "/usr/bin/bash".into(),
                    snap: snap.clone(),
                });
            }
            if wanted("random") {
                let t = tmp.join("random-32MiB.bin");
                random_file(&t, 32 << 20);
                out.push(Pair {
                    key: "random",
                    label: "random 32 MiB".into(),
                    basis: None,
                    target: t,
                    snap,
                });
            }
        }
    }
    out
}

fn ratio_goal(what: &str, ours: f64, theirs: f64, unit: &str) -> (bool, String) {
    let ok = ours <= theirs;
    (
        ok,
        format!(
            "{what} {} {unit} vs {} {unit} = {:.2}x: {}",
            if unit == "B" {
                thousands(ours as u64)
            } else {
                format!("{ours:.2}")
            },
            if unit == "B" {
                thousands(theirs as u64)
            } else {
                format!("{theirs:.2}")
            },
            ours / theirs,
            if ok { "met" } else { "NOT met" }
        ),
    )
}

/// The goal lines of issue 10 for one pair, from the cells measured in this run.
fn goals(ctx: &Ctx, pair: &Pair, tools: &[Tool], cells: &[Cell]) {
    let get = |t: Tool| tools.iter().position(|x| *x == t).map(|i| &cells[i]);
    let why = |c: Option<&Cell>| match c {
        Some(Cell::NotRun(w)) => w.clone(),
        _ => "not measured".into(),
    };
    let target = file_len(&pair.target);
    let emit = |goal: &str, line: String, met: Option<bool>| {
        println!("goal [{}] {goal}: {line}", pair.label);
        ctx.log(json!({"kind": "bench-plan-goal", "pair": pair.key, "goal": goal, "met": met, "line": line}));
    };
    if pair.key == "random" {
        // the on-the-fly preset when this build has presets, else the build's default
        let (row, c) = if ctx.levels {
            ("--level fast", get(Tool::PfsLevel("fast")))
        } else {
            ("no --level", get(Tool::PfsBuildDefault))
        };
        match c.and_then(|c| c.figures()) {
            Some((b, s)) => {
                // The row's time includes writing the 32 MiB .pbb and flushing it to disk,
                // which the disk bounds: the planning itself is the whole `pfs plan` process
                // without an output file, and the row's write is put next to `dd
                // conv=fsync` of the same bytes (both measured here, now).
                let level: &[&str] = if ctx.levels {
                    &["--level", "fast"]
                } else {
                    &[]
                };
                // `pfs plan` of the target, writing `out` when given
                let timed_plan = |out: Option<&Path>| {
                    let mut c = Command::new(PFS);
                    c.arg("plan")
                        .arg(&pair.target)
                        .arg("--snapshot")
                        .arg(&pair.snap)
                        .args(level);
                    if let Some(o) = out {
                        c.arg("-o").arg(o);
                    }
                    run_timed(&mut c).map(|r| r.0)
                };
                let plan_only = timed_plan(None);
                // the durable write once more and dd, each after a `sync`: a flush also
                // writes back what earlier rows left dirty (ext4's ordered journal), which
                // the table's row paid for and dd would not
                let pbb_out = ctx.tmp.path().join("random-again.pbb");
                let _ = Command::new("sync").status();
                let written = timed_plan(Some(&pbb_out));
                let _ = std::fs::remove_file(&pbb_out);
                let dd_out = ctx.tmp.path().join("dd.out");
                let _ = Command::new("sync").status();
                let dd = run_timed(
                    Command::new("dd")
                        .arg(format!("if={}", pair.target.display()))
                        .arg(format!("of={}", dd_out.display()))
                        .args(["bs=1M", "conv=fsync", "status=none"]),
                )
                .map(|r| r.0);
                let _ = std::fs::remove_file(&dd_out);
                match plan_only {
                    Ok(p) => {
                        let gbs = target as f64 / p / 1e9;
                        let ok1 = gbs >= 1.0;
                        emit(
                            "random planned at >= 1 GB/s",
                            format!(
                                "pfs plan ({row}, whole process, no output file) {:.3} s = {:.1} MB/s = {:.2}x of 1 GB/s: {}",
                                p,
                                gbs * 1e3,
                                gbs,
                                if ok1 { "met" } else { "NOT met" }
                            ),
                            Some(ok1),
                        );
                    }
                    Err(e) => emit(
                        "random planned at >= 1 GB/s",
                        format!("n/a: pfs plan ({row}) without an output file failed: {e}"),
                        None,
                    ),
                }
                println!(
                    "  [random 32 MiB] with the .pbb written and fsynced: the row {s:.3} s = {:.1} MB/s; again after a sync: {}; dd conv=fsync of the same bytes after a sync: {}",
                    target as f64 / s / 1e6,
                    match &written {
                        Ok(w) => format!("{w:.3} s = {:.1} MB/s", target as f64 / w / 1e6),
                        Err(e) => format!("failed: {e}"),
                    },
                    match (&dd, &written) {
                        (Ok(d), Ok(w)) => format!("{d:.3} s = {:.1} MB/s (pfs plan -o is {:.2}x of it)", target as f64 / d / 1e6, w / d),
                        (Ok(d), Err(_)) => format!("{d:.3} s"),
                        (Err(e), _) => format!("failed: {e}"),
                    }
                );
                let lim = target as f64 * 1.01;
                let ok2 = b as f64 <= lim;
                emit(
                    "random wire <= file + 1%",
                    format!(
                        "{} B vs {} B = {:.4}x of the file: {}",
                        thousands(b),
                        thousands(target),
                        b as f64 / target as f64,
                        if ok2 { "met" } else { "NOT met" }
                    ),
                    Some(ok2),
                );
            }
            None => {
                emit(
                    "random planned at >= 1 GB/s, wire <= file + 1%",
                    format!("n/a: pfs plan ({row}) {}", why(c)),
                    None,
                );
            }
        }
        return;
    }
    // fast: bytes <= zstd -9, time <= zstd -3; max: bytes and time <= HDiffPatch lzma2-9
    for (goal, ours, b_ref, t_ref) in [
        (
            "fast: bytes <= zstd -9, time <= zstd -3",
            Tool::PfsLevel("fast"),
            Tool::Zstd(9),
            Tool::Zstd(3),
        ),
        (
            "max: bytes and time <= HDiffPatch lzma2-9",
            Tool::PfsLevel("max"),
            Tool::Hdp("lzma2-9"),
            Tool::Hdp("lzma2-9"),
        ),
    ] {
        let c = get(ours);
        // builds without presets: the goal is n/a, and the build's default row is compared
        // with the same references on a separate line marked as such
        let mut runs = vec![(goal.to_string(), ours, c)];
        if !ctx.levels {
            let d = get(Tool::PfsBuildDefault);
            emit(goal, format!("n/a: {} {}", ours.label(), why(c)), None);
            runs = vec![(
                format!("{goal} [reference only: this build's default row, not the goal's preset]"),
                Tool::PfsBuildDefault,
                d,
            )];
        }
        for (goal, ours, c) in runs {
            let Some((b, s)) = c.and_then(|c| c.figures()) else {
                emit(&goal, format!("n/a: {} {}", ours.label(), why(c)), None);
                continue;
            };
            let mut parts = Vec::new();
            let mut all = Some(true);
            for (r, bytes) in [(b_ref, true), (t_ref, false)] {
                let rc = get(r);
                match rc.and_then(|c| c.figures()) {
                    Some((rb, rs)) => {
                        let (ok, line) = if bytes {
                            ratio_goal("bytes", b as f64, rb as f64, "B")
                        } else {
                            ratio_goal("time", s, rs, "s")
                        };
                        parts.push(format!("{line} ({})", r.label()));
                        all = all.map(|a| a && ok);
                    }
                    None => {
                        if !(r == t_ref && b_ref == t_ref && !bytes) {
                            parts.push(format!("{}: n/a, {}", r.label(), why(rc)));
                        }
                        all = None;
                    }
                }
            }
            let verdict = match all {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not fully measured",
            };
            emit(&goal, format!("{verdict}; {}", parts.join("; ")), all);
        }
    }
}

fn print_table(title: &str, pairs: &[Pair], tools: &[Tool], cells: &[Vec<Cell>]) {
    println!();
    print!("| {title} |");
    for p in pairs {
        print!(" {} ({} B) |", p.label, thousands(file_len(&p.target)));
    }
    println!();
    println!("|---|{}", "---:|".repeat(pairs.len()));
    for (i, t) in tools.iter().enumerate() {
        print!("| {} |", t.label());
        for (j, p) in pairs.iter().enumerate() {
            print!(" {} |", cell_text(&cells[j][i], file_len(&p.target)));
        }
        println!();
    }
}

fn main() {
    // `cargo bench` passes --bench; arguments are ignored
    let metrics = PathBuf::from(
        std::env::var("PFS_METRICS").unwrap_or_else(|_| packetfs::metrics::DEFAULT_LOG.into()),
    );
    let venv = PathBuf::from(
        std::env::var("PFS_BENCH_VENV").unwrap_or_else(|_| "target/bench-venv-hdp".into()),
    );
    let plan_help = pfs_help(&["plan"]);
    let index_help = pfs_help(&["index", "build"]);
    let mut ctx = Ctx {
        tmp: tempfile::Builder::new()
            .prefix("pfs-bench-plan.")
            .tempdir_in(std::env::var("PFS_BENCH_TMP").unwrap_or_else(|_| "target".into()))
            .expect("tempdir"),
        metrics,
        run: now_utc(),
        commit: commit(),
        skip_slow: env_on("PFS_BENCH_SKIP_SLOW"),
        levels: help_has_presets(&plan_help),
        index_level: help_has_presets(&index_help),
        hdp: Err(String::new()),
        failures: Vec::new(),
    };
    println!(
        "# bench-plan {} (commit {}; {})",
        ctx.run,
        ctx.commit,
        machine()
    );
    println!("pfs: {PFS}");
    println!(
        "pfs plan --level fast|default|max: {}",
        if ctx.levels {
            "yes"
        } else if plan_help.contains("--level") {
            "no: this build's --level is not a preset flag (level rows print n/a)"
        } else {
            "no (level rows print n/a)"
        }
    );
    if ctx.skip_slow {
        println!("PFS_BENCH_SKIP_SLOW: zstd -19, xdelta3 and HDiffPatch zstd-19/lzma2-9 skipped on targets over 16 MiB");
    }
    let sel: Option<Vec<String>> = std::env::var("PFS_BENCH_PAIRS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let wanted = |k: &str| sel.as_ref().is_none_or(|s| s.iter().any(|x| x == k));

    ctx.hdp = {
        let o = Command::new("bash")
            .arg("scripts/benchmarks/bench_data.sh")
            .arg("venv")
            .arg(&venv)
            .stderr(Stdio::piped())
            .output();
        match o {
            Ok(o) if o.status.success() => {
                Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("hdiffpatch unavailable")
                .to_string()),
            Err(e) => Err(format!("bash: {e}")),
        }
    };
    if let Err(why) = &ctx.hdp {
        println!("HDiffPatch rows skipped: {why}");
    }

    let pairs = pairs(&mut ctx, &wanted);
    let mut tools: Vec<Tool> = Vec::new();
    if !ctx.levels {
        tools.push(Tool::PfsBuildDefault);
    }
    tools.extend(LEVELS.iter().copied().map(Tool::PfsLevel));
    tools.extend([
        Tool::Zstd(3),
        Tool::Zstd(9),
        Tool::Zstd(19),
        Tool::Xdelta,
        Tool::Hdp("zstd-3"),
        Tool::Hdp("zstd-19"),
        Tool::Hdp("lzma2-9"),
    ]);
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    for p in &pairs {
        let mut row = Vec::new();
        for &t in &tools {
            let c = run_tool(&mut ctx, p, t);
            eprintln!(
                "  {} / {}: {}",
                p.label,
                t.label(),
                cell_text(&c, file_len(&p.target))
            );
            let mut line = json!({"kind": "bench-plan", "pair": p.key, "label": p.label,
                "tool": t.label(), "target_bytes": file_len(&p.target)});
            match &c {
                Cell::Done {
                    bytes, secs, extra, ..
                } => {
                    line["bytes"] = json!(bytes);
                    line["seconds"] = json!(secs);
                    line["detail"] = extra.clone();
                }
                Cell::NotRun(why) => line["not_measured"] = json!(why),
            }
            ctx.log(line);
            row.push(c);
        }
        cells.push(row);
    }
    if !pairs.is_empty() {
        println!();
        println!("Seconds: the median of up to {} runs of each command, repeated while their runs took under {} s in all (every tool alike; PFS_BENCH_REPEAT=1 times single runs).", repeat_max(), repeat_secs());
        println!("Whole-process seconds (pfs: snapshot load, index mapping, plan, pack, write; index built beforehand); HDiffPatch: in-process diff + write. Bytes as a share of the target. bash and random have no basis: the other tools compress the target alone.");
        print_table("tool", &pairs, &tools, &cells);
        println!();
        for (p, c) in pairs.iter().zip(&cells) {
            goals(&ctx, p, &tools, c);
        }
    }

    if env_on("PFS_BENCH_ABLATION") {
        let with_cargo = env_on("PFS_BENCH_ABLATION_CARGO");
        for (p, c) in pairs.iter().zip(&cells) {
            let on = match p.key {
                "libstd" | "numpy" | "bash" => true,
                "cargo" => with_cargo,
                _ => false,
            };
            if on {
                ablation(&mut ctx, p, &tools, c);
            }
        }
    }

    if std::env::var("PFS_BENCH_REBUILD").map_or(true, |v| v != "0") {
        if let Some(p) = pairs.iter().find(|p| p.basis.is_none()) {
            reconstruction(&ctx, &p.snap);
        }
    }

    if !ctx.failures.is_empty() {
        println!();
        for f in &ctx.failures {
            println!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

/// One ablation row from scripts/benchmarks/plan_ablation.toml.
#[derive(serde::Deserialize)]
struct AblationRow {
    name: String,
    #[serde(default)]
    feature: String,
    /// The TOML body of the --planner file ("" = no --planner).
    #[serde(default)]
    planner: String,
    /// A preset to plan at (`--level`); rows with one print n/a in builds without presets.
    #[serde(default)]
    level: Option<String>,
    /// Extra `pfs plan` flags (e.g. `["--predict", "off"]`); a flag this build does not
    /// know prints n/a.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(serde::Deserialize)]
struct AblationFile {
    row: Vec<AblationRow>,
}

fn ablation(ctx: &mut Ctx, pair: &Pair, tools: &[Tool], cells: &[Cell]) {
    let path = std::env::var("PFS_BENCH_ABLATION_FILE")
        .unwrap_or_else(|_| "scripts/benchmarks/plan_ablation.toml".into());
    let rows: AblationFile = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|s| toml::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            println!("ablation: {path}: {e}");
            ctx.failures.push(format!("ablation file {path}: {e}"));
            return;
        }
    };
    let target = file_len(&pair.target);
    println!();
    println!(
        "| {} ablation | feature | --planner (and flags) | wire bytes | whole-process s | plan + pack s |",
        pair.label
    );
    println!("|---|---|---|---:|---:|---:|");
    for r in rows.row {
        let planner_file = ctx.tmp.path().join("ablation.toml");
        let mut args: Vec<String> = Vec::new();
        if !r.planner.trim().is_empty() {
            std::fs::write(&planner_file, &r.planner).expect("write planner file");
            args.push("--planner".into());
            args.push(planner_file.display().to_string());
        }
        let cell = match &r.level {
            Some(_) if !ctx.levels => Cell::NotRun("n/a (no --level in this build)".into()),
            _ => {
                if let Some(l) = &r.level {
                    args.push("--level".into());
                    args.push(l.clone());
                }
                args.extend(r.args.iter().cloned());
                if !r.planner.trim().is_empty() {
                    // indexes the setting needs, built before the timed run
                    let mut ib = Command::new(PFS);
                    ib.args(["index", "build"])
                        .arg(&pair.snap)
                        .arg("--planner")
                        .arg(&planner_file);
                    if let (Some(l), true) = (&r.level, ctx.index_level) {
                        ib.args(["--level", l]);
                    }
                    let _ = run_timed(&mut ib);
                }
                pfs_plan(ctx, pair, &format!("ablation {}", r.name), &args)
            }
        };
        let mut shown = r.planner.trim().replace('\n', "; ");
        for a in r
            .level
            .iter()
            .map(|l| format!("--level {l}"))
            .chain(r.args.iter().cloned())
        {
            if !shown.is_empty() {
                shown.push(' ');
            }
            shown += &a;
        }
        let (bytes, secs, pp) = match &cell {
            Cell::Done {
                bytes, secs, extra, ..
            } => (
                format!(
                    "{} ({:.1}%)",
                    thousands(*bytes),
                    100.0 * *bytes as f64 / target.max(1) as f64
                ),
                format!("{secs:.2}"),
                match (extra["plan_ms"].as_f64(), extra["pack_ms"].as_f64()) {
                    (Some(a), Some(b)) => format!("{:.2} + {:.2}", a / 1e3, b / 1e3),
                    _ => "-".into(),
                },
            ),
            Cell::NotRun(w) => (w.clone(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {} | `{}` | {bytes} | {secs} | {pp} |",
            r.name,
            if r.feature.is_empty() {
                "-"
            } else {
                &r.feature
            },
            if shown.is_empty() { "(none)" } else { &shown }
        );
        let mut line = json!({"kind": "bench-plan-ablation", "pair": pair.key, "row": r.name,
            "feature": r.feature, "planner": r.planner, "level": r.level, "args": r.args, "target_bytes": target});
        match &cell {
            Cell::Done {
                bytes, secs, extra, ..
            } => {
                line["bytes"] = json!(bytes);
                line["seconds"] = json!(secs);
                line["detail"] = extra.clone();
            }
            Cell::NotRun(w) => line["not_measured"] = json!(w),
        }
        ctx.log(line);
    }
    for (t, c) in tools.iter().zip(cells) {
        if matches!(t, Tool::Zstd(9) | Tool::Hdp("lzma2-9")) {
            match c.figures() {
                Some((b, s)) => println!(
                    "| {} (same run) | - | - | {} ({:.1}%) | {s:.2} | - |",
                    t.label(),
                    thousands(b),
                    100.0 * b as f64 / target.max(1) as f64
                ),
                None => println!(
                    "| {} | - | - | {} | - | - |",
                    t.label(),
                    cell_text(c, target)
                ),
            }
        }
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

/// Reconstruction of a match-heavy blueprint (256 MiB of 4-64 KiB snapshot runs) in memory,
/// next to memcpy on the same machine in the same run.
fn reconstruction(ctx: &Ctx, snap_dir: &Path) {
    let snap = Snapshot::open(snap_dir, HugePolicy::Auto).expect("open snapshot");
    let cfg = PlanConfig::default();
    let (idx, _) = IndexSet::ensure(&snap, &plan::index_specs(&cfg), false).expect("indexes");
    let s = snap.bytes();
    let mut heavy = Vec::with_capacity(256 << 20);
    // chunks of 4-64 KiB at arbitrary (not page-aligned) offsets, as a real file's would be
    let mut rng = pob::prng::SplitMix64::new(11);
    while heavy.len() < (256 << 20) {
        let len = 4096 + rng.below(60 << 10) as usize;
        let off = rng.below((s.len() - len) as u64) as usize;
        heavy.extend_from_slice(&s[off..off + len]);
    }
    let p = plan::plan(&heavy, &snap, &idx, &Hints::default(), &cfg).expect("plan");
    let mut out = vec![0u8; heavy.len()];
    p.blueprint.rebuild_into(s, &mut out).expect("rebuild");
    assert!(out == heavy, "rebuilt heavy file differs");
    // memcpy right before and right after the rebuilds, the better of the two: on a shared
    // machine both sides of the ratio then see the same load
    let mc_before = memcpy_gbs();
    let gbs = rebuild_speed(&p.blueprint, s, &mut out);
    drop(out);
    drop(heavy);
    let mc = memcpy_gbs().max(mc_before);
    println!();
    println!(
        "| reconstruction (256 MiB, {} segments, in memory) | GB/s |",
        p.blueprint.segments.len()
    );
    println!("|---|---:|");
    println!("| pfs rebuild_into | {gbs:.2} |");
    println!("| memcpy, same machine, same run | {mc:.2} |");
    println!(
        "| ratio | {:.2} (goal >= 0.5: {}) |",
        gbs / mc,
        if gbs / mc >= 0.5 { "met" } else { "NOT met" }
    );
    ctx.log(
        json!({"kind": "bench-rebuild", "rebuild_gbs": gbs, "memcpy_gbs": mc, "ratio": gbs / mc}),
    );
}
