//! The protocol's hot paths, each printed next to a baseline measured in the same run
//! (`cargo bench --bench proto`, plain timing, no harness):
//! - receiver: how fast one `Receiver` takes in data frames (parse, CRC, checks, apply into
//!   memory, range bookkeeping, incremental BLAKE3), without I/O; baseline: copying and
//!   hashing the same file bytes once (what any receiver must at least do).
//! - covered finish: where a covered file's finish goes through the real `MmapSink` (open,
//!   apply, BLAKE3, commit), with the output map populated ahead of the writes and without
//!   (rounds interleaved); baseline: writing and fsyncing the same bytes with `std::fs`.
//! - pack levels (with `PFS_BENCH_PBB=x.pbb PFS_BENCH_SNAP=snapdir`): packed-stream size and
//!   encode time of a real blueprint by zstd level and block size; baseline: zstd -1 of
//!   its spill in one call.
//!
//! `PFS_BENCH_MB` sets the receiver's file size (default 256 MiB).

use packetfs::blueprint::{block, Blueprint, Transform};
use packetfs::fsink::MmapSink;
use packetfs::proto::sink::{SinkFile, SnapSeg};
use packetfs::proto::{
    Endpoint, FileSink, MemSink, Receiver, ReceiverConfig, SendFile, Sender, SenderConfig,
};
#[path = "../tests/common/mod.rs"]
mod common;

use common::{bench_timing as timing, covered_file, raw_blueprint, Rng, SNAP_ID};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A file of 4 KiB snapshot segments (id/xor/add), or raw bytes.
fn file(rng: &mut Rng, snap: &[u8], len: usize, raw: bool) -> (Vec<u8>, Blueprint) {
    if raw {
        let content = rng.words(len);
        (content.clone(), raw_blueprint(content))
    } else {
        covered_file(rng, snap, len)
    }
}

fn receiver_apply() {
    let mut rng = Rng(31);
    let snap = rng.bytes(64 << 20);
    let len: usize = std::env::var("PFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        << 20;
    for (label, raw) in [("snapshot-covered, 4 KiB segments", false), ("raw", true)] {
        let (content, bp) = file(&mut rng, &snap, len, raw);
        let scfg = SenderConfig {
            timing: timing(),
            rate: Some(1 << 50),
            window_frames: u64::MAX / 4,
            ..SenderConfig::default()
        };
        let rcfg = ReceiverConfig {
            timing: timing(),
            ..ReceiverConfig::default()
        };
        let files = vec![SendFile {
            name: "b".into(),
            blueprint: bp,
        }];
        let files = packetfs::prepare::prepare(
            files,
            Vec::new(),
            SNAP_ID,
            &snap,
            scfg.pack,
            &scfg.pack_opts,
        )
        .unwrap();
        let mut sender = Sender::new(scfg, SNAP_ID, files).unwrap();
        let mut receiver = Receiver::new(rcfg.clone(), SNAP_ID, &snap, MemSink::new());
        let t0 = Instant::now();
        let mut buf = vec![0u8; 2048];
        let n = sender.poll_transmit(t0, &mut buf).unwrap();
        let mut hello = buf[..n].to_vec();
        receiver.handle_datagram(t0, &mut hello);
        let n = receiver.poll_transmit(t0, &mut buf).unwrap();
        sender.handle_datagram(t0, &mut buf[..n]);
        let mut frames = Vec::new();
        let mut t = t0;
        loop {
            t += Duration::from_millis(1);
            match sender.poll_transmit(t, &mut buf) {
                Some(n) if buf[5] == 3 => frames.push(buf[..n].to_vec()),
                Some(_) => {}
                None => break,
            }
        }
        let mut receiver = Receiver::new(rcfg, SNAP_ID, &snap, MemSink::new());
        receiver.handle_datagram(t0, &mut hello);
        let wire: usize = frames.iter().map(|f| f.len()).sum();
        let start = Instant::now();
        for f in frames.iter_mut() {
            receiver.handle_datagram(t0, f);
        }
        let el = start.elapsed();
        assert_eq!(receiver.outcome(), Some(Ok(())), "{label}");
        // Baseline, same run: copy the file's bytes into fresh memory once and hash them.
        let start = Instant::now();
        let mut dst = vec![0u8; len];
        dst.copy_from_slice(&content);
        black_box(blake3::hash(&dst));
        let base = start.elapsed();
        println!(
            "receiver, {label}: {} frames ({} MB on the wire) for {} MiB in {:.1} ms: {:.2} M frames/s, {:.2} GB/s of file bytes; baseline copy+BLAKE3 {:.1} ms ({:.2} GB/s): {:.2}x the baseline's time",
            frames.len(),
            wire / 1_000_000,
            len >> 20,
            el.as_secs_f64() * 1e3,
            frames.len() as f64 / el.as_secs_f64() / 1e6,
            len as f64 / el.as_secs_f64() / 1e9,
            base.as_secs_f64() * 1e3,
            len as f64 / base.as_secs_f64() / 1e9,
            el.as_secs_f64() / base.as_secs_f64(),
        );
    }
}

fn covered_finish() {
    let mut rng = Rng(77);
    let snap = rng.bytes(64 << 20);
    let len = 32u64 << 20;
    let dir_root = std::env::var("PFS_BENCH_DIR").unwrap_or("/tmp".into());
    for (round, populate) in (0..6).map(|i| (i / 2, i % 2 == 1)) {
        let dir = tempfile::tempdir_in(&dir_root).unwrap();
        let mut sink = MmapSink::new(dir.path(), "b").unwrap();
        sink.reserve = 0;
        sink.populate = populate;
        let t0 = Instant::now();
        sink.open(&[SinkFile::file("c", len)]).unwrap();
        let t1 = Instant::now();
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(1 << 20) as u32;
            let seg = SnapSeg {
                op: Transform::Id,
                imm: 0,
                snap_off: 1 << 20,
                len: n,
            };
            sink.write_segment(0, off, seg, &snap).unwrap();
            off += n as u64;
        }
        let t2 = Instant::now();
        let h = blake3::hash(sink.contents(0).unwrap());
        let t3 = Instant::now();
        sink.commit(0).unwrap();
        let t4 = Instant::now();
        // Baseline, same run: the same bytes written and fsynced with std::fs.
        let p = dir.path().join("plain");
        let b0 = Instant::now();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&p).unwrap();
            f.write_all(&snap[1 << 20..(1 << 20) + len as usize])
                .unwrap();
            f.sync_all().unwrap();
        }
        let base = b0.elapsed();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "covered finish, round {round}, populate ahead {}: open {:.1} ms, apply {:.1} ms, blake3 {:.1} ms, commit {:.1} ms, total {:.1} ms ({}); baseline write+fsync {:.1} ms: {:.2}x",
            if populate { "on " } else { "off" },
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t0, t4),
            &h.to_hex()[..8],
            base.as_secs_f64() * 1e3,
            ms(t0, t4) / (base.as_secs_f64() * 1e3),
        );
    }
}

fn pack_levels() {
    let (Some(pbb), Some(dir)) = (
        std::env::var_os("PFS_BENCH_PBB"),
        std::env::var_os("PFS_BENCH_SNAP"),
    ) else {
        println!("pack levels: skipped (set PFS_BENCH_PBB and PFS_BENCH_SNAP)");
        return;
    };
    let snap =
        packetfs::pob::Snapshot::open(std::path::Path::new(&dir), packetfs::pob::HugePolicy::Off)
            .unwrap();
    let bytes = std::fs::read(&pbb).unwrap();
    let bp = packetfs::blueprint::pbb::unpack(&bytes, &snap.id, snap.bytes().len() as u64).unwrap();
    println!(
        "{}: file {} B, {} segments, spill {} B, .pbb {} B, direct estimate {} B",
        std::path::Path::new(&pbb).display(),
        bp.file_len,
        bp.segments.len(),
        bp.spill.len(),
        bytes.len(),
        packetfs::prepare::direct_payload_estimate(&bp)
    );
    let t = Instant::now();
    let z = zstd::bulk::compress(&bp.spill, 1).unwrap();
    let base = t.elapsed();
    println!(
        "baseline: zstd -1 of the spill in one call: {} B in {:.1} ms",
        z.len(),
        base.as_secs_f64() * 1e3
    );
    for level in [1, 3, 6] {
        for spill_per_block in [64u64 << 10, 256 << 10, 1 << 20, 2 << 20] {
            for threads in [1, 2] {
                let o = block::EncodeOptions {
                    level,
                    spill_per_block,
                    threads,
                    ..Default::default()
                };
                let t = Instant::now();
                let s = block::encode(&bp, &o).unwrap();
                let el = t.elapsed();
                println!(
                    "level {level} spill/block {:>4} KiB threads {threads}: {} B in {:.1} ms ({:.2}x the baseline's time)",
                    spill_per_block >> 10,
                    s.len(),
                    el.as_secs_f64() * 1e3,
                    el.as_secs_f64() / base.as_secs_f64()
                );
            }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks the benchmarks to run.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| only.is_empty() || only.iter().any(|o| n.contains(o.as_str()));
    if want("receiver") {
        receiver_apply();
    }
    if want("covered") {
        covered_finish();
    }
    if want("pack") {
        pack_levels();
    }
}
