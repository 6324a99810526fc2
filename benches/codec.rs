//! `just bench-codec`: the `.pbb` v3 format measured in one run.
//!
//! For a release pair (default: libstd-*.so of the oldest and newest installed toolchains;
//! `PFS_CODEC_BASIS` / `PFS_CODEC_TARGET` override) the basis becomes a corpus bank of a
//! default-recipe snapshot and the target is planned with the default planner. Its blueprint
//! is measured as planned (`exact`) and with neighbouring segments on one diagonal merged into
//! approximate covers across gaps of up to 512 bytes (`covers`, what a cover planner gives),
//! and for each:
//!
//! 1. every pack level: wire bytes, pack time, per-stream raw / stored bytes and the coder
//!    that won; each packing is unpacked and rebuilt and must give the target back;
//! 2. each stream under each single coder (the coder table);
//! 3. the reference-prediction ablation (none, each kind alone, all) on the covers;
//! 4. rebuild speed (`Blueprint::rebuild_into`, difference streams included) next to memcpy
//!    of the same bytes, both measured here in the same run;
//!
//! and then a random 32 MiB file packed at every level (wire bytes against the file size,
//! pack time). Everything printed is measured by this run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use packetfs::blueprint::coder::{Coder, Level};
use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::blueprint::predict::PredictOptions;
use packetfs::blueprint::{raw_segments, Blueprint};
use packetfs::index::{default_specs, IndexSet};
use packetfs::plan::{self, hints::Hints, PlanConfig};
use packetfs::pob::{self, HugePolicy, Recipe, Snapshot};

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

fn libstd(root: &Path) -> Option<PathBuf> {
    let dir = root.join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("libstd-") && n.ends_with(".so")
        })
}

fn pair() -> Option<(PathBuf, PathBuf)> {
    if let (Ok(b), Ok(t)) = (
        std::env::var("PFS_CODEC_BASIS"),
        std::env::var("PFS_CODEC_TARGET"),
    ) {
        return Some((b.into(), t.into()));
    }
    Some((libstd(&sysroot("stable")?)?, libstd(&sysroot("nightly")?)?))
}

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn check(bytes: &[u8], snap: &Snapshot, target: &[u8]) {
    let bp = pbb::unpack_with(bytes, &snap.id, snap.bytes()).expect("unpack");
    let mut out = vec![0u8; bp.file_len as usize];
    bp.rebuild_into(snap.bytes(), &mut out).expect("rebuild");
    assert!(out == target, "rebuilt bytes differ from the target");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some((basis, target_path)) = pair() else {
        println!("no release pair found (set PFS_CODEC_BASIS and PFS_CODEC_TARGET)");
        return;
    };
    let target = std::fs::read(&target_path).expect("read target");
    let tmp = tempfile::tempdir().expect("tempdir");
    let sdir = tmp.path().join("snap");
    pob::build(
        &Recipe::default_recipe(),
        &[(basis.clone(), "basis".into())],
        &sdir,
        &mut |_, _| {},
    )
    .expect("snapshot");
    let snap = Snapshot::open(&sdir, HugePolicy::Auto).expect("open snapshot");
    let (idx, _) = IndexSet::ensure(&snap, &default_specs(), false).expect("index");
    let hints = Hints::from_elf(&target).unwrap_or_default();
    let (p, plan_s) = secs(|| plan::plan(&target, &snap, &idx, &hints, &PlanConfig::default()));
    let exact = p.expect("plan").blueprint;
    let covers = if exact.has_covers() {
        exact.clone()
    } else {
        exact.merge_diagonals(snap.bytes(), 512)
    };
    println!(
        "# .pbb v3 on {} -> {} ({} bytes); plan {:.2} s",
        basis.display(),
        target_path.display(),
        target.len(),
        plan_s
    );
    println!(
        "machine: {} cores; one run",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let ctx = Some((&target[..], snap.bytes()));
    if let Ok(dir) = std::env::var("PFS_CODEC_DUMP") {
        // the raw streams of the covers blueprint, for coder experiments
        let raw =
            packetfs::blueprint::streams::split(&covers.segments, &covers.spill, 0, None, None);
        for (s, n) in raw.iter().zip(packetfs::blueprint::streams::NAMES) {
            std::fs::write(format!("{dir}/{n}"), s).unwrap();
        }
    }
    let only = std::env::var("PFS_CODEC_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    for (name, bp) in [("exact", &exact), ("covers", &covers)] {
        if !want("levels") {
            break;
        }
        let st = bp.stats();
        println!(
            "\n## {name}: {} segments ({} covers over {} bytes, {} nonzero differences), {} literal bytes",
            st.segments, st.cover, st.cover_bytes, st.cover_diff_nonzero, st.raw_spill
        );
        println!("\n| level | wire bytes | pack s | ops | lens | offs | imms | backs | dzeros | dbytes | lits | refs |");
        println!("|---|---:|---:|---|---|---|---|---|---|---|---|---|");
        for level in [Level::Fast, Level::Default, Level::Max] {
            let ((bytes, sizes), t) =
                secs(|| pbb::pack_v3(bp, ctx, &PackOptions::for_level(level)).expect("pack"));
            check(&bytes, &snap, &target);
            let cells: Vec<String> = sizes
                .streams
                .iter()
                .map(|s| format!("{} → {} {} {:.0} ms", s.raw, s.stored, s.coder, s.ms))
                .collect();
            println!(
                "| {} | {} | {:.2} | {} |",
                level.name(),
                bytes.len(),
                t,
                cells.join(" | ")
            );
        }
        // the coder table: every stream under each single coder
        let coders = [
            Coder::Zstd { level: 3 },
            Coder::Zstd { level: 9 },
            Coder::Zstd { level: 19 },
            Coder::Lzma {
                preset: 9,
                extreme: true,
                lc: 0,
                lp: 0,
                pb: 0,
            },
            Coder::Lzma {
                preset: 9,
                extreme: true,
                lc: 0,
                lp: 2,
                pb: 2,
            },
            Coder::Lzma {
                preset: 9,
                extreme: true,
                lc: 3,
                lp: 0,
                pb: 2,
            },
            Coder::XzX86 {
                preset: 9,
                extreme: true,
                lc: 0,
                lp: 2,
                pb: 2,
            },
        ];
        println!("\n| coder (all streams) | wire bytes | ops | lens | offs | imms | backs | dzeros | dbytes | lits | refs |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in coders {
            let o = PackOptions {
                force: Some(c),
                ..PackOptions::for_level(Level::Max)
            };
            let (bytes, sizes) = pbb::pack_v3(bp, ctx, &o).expect("pack");
            let cells: Vec<String> = sizes.streams.iter().map(|s| s.stored.to_string()).collect();
            println!("| {} | {} | {} |", c.name(), bytes.len(), cells.join(" | "));
        }
    }
    // reference prediction ablation on the covers
    if want("predict") {
        println!("\n## reference prediction (covers, level default)\n");
        println!("| predictions | wire bytes | dzeros + dbytes stored | nonzero differences |");
        println!("|---|---:|---:|---:|");
        let mut rows = vec![("none", PredictOptions::NONE)];
        rows.extend(PredictOptions::each());
        rows.push((
            "default (code + line + rela + symbols + dwarf)",
            PredictOptions::DEFAULT,
        ));
        rows.push(("all", PredictOptions::ALL));
        for (name, pr) in rows {
            let o = PackOptions {
                predict: pr,
                ..PackOptions::for_level(Level::Default)
            };
            let (bytes, sizes) = pbb::pack_v3(&covers, ctx, &o).expect("pack");
            check(&bytes, &snap, &target);
            // the nonzero differences left after prediction are the dbytes stream's raw bytes
            let (z, d) = (&sizes.streams[5], &sizes.streams[6]);
            let nz = d.raw;
            let d_stored = z.stored + d.stored;
            println!("| {name} | {} | {} | {nz} |", bytes.len(), d_stored);
        }
    }
    // rebuild speed next to memcpy
    println!("\n## rebuild speed (one core)\n");
    let snapb = snap.bytes();
    let mut out = vec![0u8; target.len()];
    let mut copy = target.clone();
    let reps = if want("rebuild") {
        std::env::var("PFS_CODEC_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20)
    } else {
        0
    };
    for (name, bp) in [("exact", &exact), ("covers", &covers)] {
        if reps == 0 {
            break;
        }
        bp.rebuild_into(snapb, &mut out).unwrap();
        let (_, t) = secs(|| {
            for _ in 0..reps {
                bp.rebuild_into(snapb, &mut out).unwrap();
                std::hint::black_box(&out);
            }
        });
        let (_, m) = secs(|| {
            for _ in 0..reps {
                copy.copy_from_slice(std::hint::black_box(&target));
                std::hint::black_box(&copy);
            }
        });
        let gbs = |s: f64| (target.len() * reps) as f64 / s / 1e9;
        println!(
            "{name}: rebuild {:.2} GB/s, memcpy of the same bytes {:.2} GB/s, ratio {:.2}",
            gbs(t),
            gbs(m),
            m / t
        );
    }
    // the kernels alone: a 64 MiB file of 64 KiB covers over the snapshot with 1% of the
    // differences nonzero, next to memcpy of the same bytes
    if reps > 0 {
        let n = (64usize << 20).min(snapb.len());
        let seg = 64usize << 10;
        let mut x = 0x9e37u64;
        let mut spill = vec![0u8; n];
        for b in spill.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if (x >> 33).is_multiple_of(100) {
                *b = (x >> 50) as u8 | 1;
            }
        }
        let segments: Vec<_> = (0..n / seg)
            .map(|k| packetfs::blueprint::Segment {
                len: seg as u32,
                // covers read the snapshot out of order (reversed blocks)
                src: packetfs::blueprint::Source::Cover {
                    off: ((n / seg - 1 - k) * seg) as u64,
                },
            })
            .collect();
        let bp = Blueprint {
            snapshot_id: snap.id,
            file_len: (n / seg * seg) as u64,
            file_hash: [0; 32],
            segments,
            spill,
        };
        let mut out = vec![0u8; bp.file_len as usize];
        let mut copy = vec![0u8; bp.file_len as usize];
        bp.rebuild_into(snapb, &mut out).unwrap();
        copy.copy_from_slice(&snapb[..out.len()]);
        let r = (reps / 10).max(3);
        let (_, t) = secs(|| {
            for _ in 0..r {
                bp.rebuild_into(snapb, &mut out).unwrap();
                std::hint::black_box(&out);
            }
        });
        let (_, m) = secs(|| {
            for _ in 0..r {
                copy.copy_from_slice(std::hint::black_box(&snapb[..out.len()]));
                std::hint::black_box(&copy);
            }
        });
        let gbs = |s: f64| (out.len() * r) as f64 / s / 1e9;
        println!(
            "64 MiB of 64 KiB covers, 1% nonzero differences: rebuild {:.2} GB/s, memcpy of the same bytes {:.2} GB/s, ratio {:.2}",
            gbs(t),
            gbs(m),
            m / t
        );
    }
    // random 32 MiB: stored, fast
    if !want("random") {
        return;
    }
    println!("\n## random 32 MiB, all raw\n");
    let mut x = 0x243f6a8885a308d3u64;
    let rnd: Vec<u8> = (0..32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let bp = Blueprint {
        snapshot_id: snap.id,
        file_len: rnd.len() as u64,
        file_hash: *blake3::hash(&rnd).as_bytes(),
        segments: raw_segments(rnd.len() as u64),
        spill: rnd.clone(),
    };
    println!("| level | wire bytes | over the file | pack s |");
    println!("|---|---:|---:|---:|");
    for level in [Level::Fast, Level::Default, Level::Max] {
        let ((bytes, _, _), t) = secs(|| {
            pbb::pack_best(&bp, &rnd, Some(snapb), &PackOptions::for_level(level)).expect("pack")
        });
        println!(
            "| {} | {} | {:+.4}% | {:.3} |",
            level.name(),
            bytes.len(),
            (bytes.len() as f64 / rnd.len() as f64 - 1.0) * 100.0,
            t
        );
    }
}
