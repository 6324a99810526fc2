//! The streamed sender's producer (`prepare::stream::produce`: read, BLAKE3, plan, pack
//! window by window) and the receiver's decode of its blocks (`block::decode_body`, without
//! applying them) in MB/s of file bytes, next to a plain read + BLAKE3 of the same file and
//! a memcpy of its bytes, all in the same run (`cargo bench --bench producer`, no harness).
//! Nothing about speed is asserted: the ratios are printed.
//!
//! Files: random bytes (nothing in the snapshot matches them: the fast reject's case) and a
//! file of 4 KiB snapshot runs (covered). The snapshot is the directory `PFS_BENCH_SNAP`
//! (default `out/snapshot`, made by `pfs snapshot build --out out/snapshot`); without it the
//! bench prints why and stops. Parameters: `PFS_PRODUCER_MB` (file size, default 64),
//! `PFS_PRODUCER_REPS` (repetitions, the best is printed, default 5), `PFS_PRODUCER_LEVEL`
//! (`fast`, `default` or `max`; default `fast`, the `pfs send` default), `PFS_PRODUCER_ONLY`
//! (`random` or `covered`: one file), `PFS_PRODUCER_FILE` (a file of yours, one more row;
//! plan it against a snapshot that holds its basis, e.g. a release pair), and the block
//! coding knobs `PFS_PRODUCER_ZSTD` (zstd level of every block stream at the fast level, default 1) and
//! `PFS_PRODUCER_SPILL_KIB` (spill bytes per block in KiB; default 256 at `fast`, 1024 at `default` and `max`);
//! `PFS_PRODUCER_PREDICT` (`off`: no reference predictions, as `pfs send --predict off`; or
//! the kinds to predict, e.g. `code,dwarf`, names of `PredictOptions::each`);
//! `PFS_PRODUCER_DUMP=PATH` writes the last file's block stream there (for a look at its
//! streams: `scripts/benchmarks/block_streams.py PATH`).

use packetfs::blueprint::{block, Level};
use packetfs::index::IndexSet;
use packetfs::pob::{HugePolicy, Snapshot};
use packetfs::prepare::stream::{produce, Item, StreamFile, StreamOptions};
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;
#[path = "../tests/common/mod.rs"]
mod common;

use common::{env_usize as env, Rng};

/// Seconds of the best of `reps` runs of `f`.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Run the producer over `file` with a consumer that keeps what it gets; the block stream.
fn run_producer(f: &StreamFile, snap: &Snapshot, idx: &IndexSet, o: &StreamOptions) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::sync_channel(o.channel);
    let files = [f.clone()];
    std::thread::scope(|s| {
        s.spawn(|| produce(&files, snap, idx, o, &tx, None));
        let mut stream = Vec::new();
        for it in rx.iter() {
            match it.expect("the producer succeeds") {
                Item::Blocks { bytes: b, .. } => stream.extend_from_slice(&b),
                Item::Finished { .. } => break,
                other => panic!("unexpected item {other:?}"),
            }
        }
        stream
    })
}

/// Decode every block of `stream` as the receiver does (`block::decode_body`, file order,
/// the reference predictions added back with the snapshot `snap`); the file bytes they
/// cover.
fn decode_blocks(stream: &[u8], snap: &[u8], size: u64) -> u64 {
    let lim = block::Limits::default();
    let (mut at, mut base) = (0usize, 0u64);
    let mut predict = block::Predictions::default();
    while at < stream.len() {
        let n = block::body_len(&stream[at..], &lim).unwrap().unwrap() as usize;
        let body = &stream[at + block::PREFIX..at + block::PREFIX + n];
        let mut b = block::decode_body(body, &lim, snap.len() as u64, base)
            .expect("the producer's blocks decode");
        predict
            .apply(&mut b, snap, base, size)
            .expect("the predictions apply");
        base += b.file_len;
        std::hint::black_box(&b);
        at += block::PREFIX + n;
    }
    base
}

fn main() {
    let dir =
        PathBuf::from(std::env::var("PFS_BENCH_SNAP").unwrap_or_else(|_| "out/snapshot".into()));
    let Ok(snap) = Snapshot::open(&dir, HugePolicy::Auto) else {
        println!(
            "producer: skipped: no snapshot in {} (pfs snapshot build --out {0}, or set PFS_BENCH_SNAP)",
            dir.display()
        );
        return;
    };
    let mb = env("PFS_PRODUCER_MB", 64);
    let reps = env("PFS_PRODUCER_REPS", 5);
    let level = match std::env::var("PFS_PRODUCER_LEVEL").as_deref() {
        Ok("default") => Level::Default,
        Ok("max") => Level::Max,
        _ => Level::Fast,
    };
    let mut o = StreamOptions::for_level(level);
    // block coding knobs, for measuring what they cost or save on the wire
    if let Ok(v) = std::env::var("PFS_PRODUCER_ZSTD") {
        o.encode.level = v.parse().expect("PFS_PRODUCER_ZSTD: a zstd level");
    }
    if let Ok(v) = std::env::var("PFS_PRODUCER_PREDICT") {
        use packetfs::blueprint::predict::PredictOptions;
        let mut p = PredictOptions::NONE;
        for name in v.split(',').filter(|n| *n != "off") {
            let (_, one) = PredictOptions::each()
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect("PFS_PRODUCER_PREDICT: off or names of PredictOptions::each");
            p = PredictOptions {
                code: p.code || one.code,
                data: p.data || one.data,
                rela: p.rela || one.rela,
                symbols: p.symbols || one.symbols,
                debug_ranges: p.debug_ranges || one.debug_ranges,
                line: p.line || one.line,
                dwarf: p.dwarf || one.dwarf,
            };
        }
        o.predict = p;
    }
    if let Ok(v) = std::env::var("PFS_PRODUCER_SPILL_KIB") {
        o.encode.spill_per_block = v.parse::<u64>().expect("PFS_PRODUCER_SPILL_KIB: KiB") << 10;
    }
    let (idx, _) = IndexSet::ensure(&snap, &packetfs::plan::index_specs(&o.plan), false)
        .expect("the snapshot's indexes");
    let n = mb << 20;
    let mut rng = Rng(7);
    let random = rng.words(n);
    let s = snap.bytes();
    let mut covered = Vec::with_capacity(n);
    while covered.len() < n {
        let off = (rng.next() % (s.len() as u64 - 4096)) as usize;
        let take = 4096.min(n - covered.len());
        covered.extend_from_slice(&s[off..off + take]);
    }
    let tmp = std::env::temp_dir().join(format!("pfs-producer-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    println!(
        "producer: {mb} MiB files, level {level:?}, best of {reps}, snapshot {}",
        dir.display()
    );
    let mut dst = vec![0u8; n];
    let memcpy = best(reps, || dst.copy_from_slice(std::hint::black_box(&random)));
    std::hint::black_box(&dst);
    println!("| file | row | MB/s | x memcpy | wire/file |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let mbs = |secs: f64| n as f64 / secs / 1e6;
    let memcpy_mbs = mbs(memcpy);
    println!("| - | memcpy | {memcpy_mbs:.0} | 1.00 | - |");
    let only = std::env::var("PFS_PRODUCER_ONLY").unwrap_or_default();
    let extra = std::env::var_os("PFS_PRODUCER_FILE").map(PathBuf::from);
    let mut rows: Vec<(String, PathBuf)> = Vec::new();
    for (name, bytes) in [("random", &random), ("covered", &covered)] {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let path = tmp.join(name);
        std::fs::write(&path, bytes).expect("write the file");
        rows.push((name.to_string(), path));
    }
    if let Some(p) = extra {
        let name = p
            .file_name()
            .map_or("file".into(), |n| n.to_string_lossy().into_owned());
        rows.push((name, p));
    }
    for (name, path) in rows {
        let n = std::fs::metadata(&path).expect("stat the file").len() as usize;
        let mbs = |secs: f64| n as f64 / secs / 1e6;
        let read_hash = best(reps, || {
            let mut f = std::fs::File::open(&path).unwrap();
            let mut buf = vec![0u8; 4 << 20];
            let mut h = blake3::Hasher::new();
            loop {
                let k = f.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
            }
            std::hint::black_box(h.finalize());
        });
        println!(
            "| {name} | read + BLAKE3 (4 MiB reads) | {:.0} | {:.2} | - |",
            mbs(read_hash),
            mbs(read_hash) / memcpy_mbs
        );
        let f = StreamFile::open(path.clone()).expect("stat");
        let mut stream = Vec::new();
        let t = best(reps, || stream = run_producer(&f, &snap, &idx, &o));
        println!(
            "| {name} | producer (read, BLAKE3, plan, pack) | {:.0} | {:.2} | {:.4} |",
            mbs(t),
            mbs(t) / memcpy_mbs,
            stream.len() as f64 / n as f64
        );
        if let Some(d) = std::env::var_os("PFS_PRODUCER_DUMP") {
            std::fs::write(&d, &stream).expect("PFS_PRODUCER_DUMP: writable");
        }
        assert_eq!(decode_blocks(&stream, snap.bytes(), n as u64), n as u64);
        let t = best(reps, || {
            decode_blocks(&stream, snap.bytes(), n as u64);
        });
        println!(
            "| {name} | receiver's block decode (predictions, no apply) | {:.0} | {:.2} | - |",
            mbs(t),
            mbs(t) / memcpy_mbs
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
