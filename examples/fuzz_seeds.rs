//! Writes the seed corpora of the fuzz targets (fuzz/corpus/TARGET/) from the crate's own
//! emitters, so that every seed is a valid input of the format its target reads and the fuzzer
//! starts deep inside the parsers: datagrams of real sessions (plaintext and keyed), .pbb files
//! and packed blocks of blueprints that use every segment kind, and the text files users write.
//!
//! `cargo run --release --example fuzz_seeds -- fuzz/corpus` (deterministic but for the keyed
//! session, whose ephemeral keys are fresh each run). The snapshots and ids below are the ones the targets use.

use packetfs::blueprint::{apply, block, pbb, Blueprint, Segment, Source, Transform};
use packetfs::pob::prng::SplitMix64;
use packetfs::proto::{
    Endpoint, MemSink, PackPolicy, Receiver, ReceiverConfig, SendFile, Sender, SenderConfig,
};
use packetfs::secure::{
    AuthorizedSenders, Guard, GuardConfig, Identity, ReceiverKeys, Security, SenderKeys,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The snapshot of the pbb and block targets.
fn codec_snap() -> Vec<u8> {
    (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// A file of snapshot slices through every transform, covers, self copies and text literals,
/// and its blueprint against `snap`.
fn mixed_file(seed: u64, snap: &[u8], len: usize, id: [u8; 32]) -> (Vec<u8>, Blueprint) {
    let mut rng = SplitMix64::new(seed);
    let mut content: Vec<u8> = Vec::with_capacity(len);
    let mut segments = Vec::new();
    let mut spill = Vec::new();
    while content.len() < len {
        let n = (16 + (rng.next_u64() % 900) as usize).min(len - content.len());
        let off = (rng.next_u64() % (snap.len() - n) as u64) as usize;
        match rng.next_u64() % 6 {
            0 | 1 if content.len() > n => {
                let from = (rng.next_u64() % (content.len() - n) as u64) as usize;
                for i in 0..n {
                    content.push(content[from + i]);
                }
                segments.push(Segment {
                    len: n as u32,
                    src: Source::SelfCopy { off: from as u64 },
                });
            }
            2 => {
                let words = b"mov call ret push pop lea jmp ";
                let b: Vec<u8> = (0..n)
                    .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                    .collect();
                content.extend_from_slice(&b);
                spill.extend_from_slice(&b);
                segments.push(Segment {
                    len: n as u32,
                    src: Source::Raw,
                });
            }
            3 => {
                // a cover: the snapshot with a few bytes changed
                for i in 0..n {
                    let d = if rng.next_u64() % 16 == 0 {
                        rng.next_u64() as u8
                    } else {
                        0
                    };
                    content.push(snap[off + i].wrapping_add(d));
                    spill.push(d);
                }
                segments.push(Segment {
                    len: n as u32,
                    src: Source::Cover { off: off as u64 },
                });
            }
            k => {
                let op = Transform::ALL[(k as usize + seed as usize) % 3];
                let imm = if op == Transform::Id {
                    0
                } else {
                    rng.next_u64() as u8
                };
                segments.push(apply::push_snap_segment(
                    snap,
                    op,
                    off,
                    imm,
                    n,
                    &mut content,
                ));
            }
        }
    }
    let bp = Blueprint {
        snapshot_id: id,
        file_len: len as u64,
        file_hash: *blake3::hash(&content).as_bytes(),
        segments,
        spill,
    };
    bp.validate(snap.len() as u64)
        .expect("a valid seed blueprint");
    (content, bp)
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
}

fn length_prefixed(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        out.extend_from_slice(&(d.len() as u16).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// Run a session in memory and return the datagrams each side sent, in order.
fn session<A: Endpoint, B: Endpoint>(a: &mut A, b: &mut B) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let t0 = Instant::now();
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 2048];
    for step in 0..2000u64 {
        let now = t0 + Duration::from_millis(step);
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            from_a.push(buf[..n].to_vec());
            b.handle_datagram(now, &mut buf[..n]);
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            from_b.push(buf[..n].to_vec());
            a.handle_datagram(now, &mut buf[..n]);
        }
        if a.is_closed() && b.is_closed() {
            break;
        }
    }
    (from_a, from_b)
}

fn sender(id: [u8; 32], snap: &[u8], pack: PackPolicy, sizes: &[usize]) -> Sender {
    let files = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| SendFile {
            name: format!("dir/file{i}.bin"),
            blueprint: mixed_file(i as u64 + 1, snap, n, id).1,
        })
        .collect();
    let cfg = SenderConfig {
        pack,
        ..SenderConfig::default()
    };
    let out = packetfs::prepare::prepare(files, Vec::new(), id, snap, pack, &cfg.pack_opts)
        .expect("prepare");
    Sender::new(cfg, id, out).expect("sender")
}

/// `n` bytes of an x86-64 ELF file as the branch filter sees one: the ELF header's first
/// 20 bytes, then short instructions with a `call` to one of 13 functions every 12 bytes.
fn x86_like(n: usize) -> Vec<u8> {
    let mut out = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0".to_vec();
    let mut k = 0i32;
    while out.len() < n {
        let at = out.len() as i32;
        out.extend_from_slice(&[0x48, 0x89, 0xc7, 0xbe, (k % 3) as u8, 0, 0, 0xE8]);
        out.extend_from_slice(&(0x4000 * (1 + k * 7 % 13) - (at + 12)).to_le_bytes());
        k += 1;
    }
    out.truncate(n);
    out
}

fn main() {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let dir = |t: &str| {
        let d = root.join(t);
        std::fs::create_dir_all(&d).expect("corpus dir");
        d
    };

    // pbb and block: blueprints of every segment kind against the targets' snapshot.
    let snap = codec_snap();
    for (i, len) in [300usize, 5000, 40_000].into_iter().enumerate() {
        let id = [i as u8 + 1; 32];
        let (content, bp) = mixed_file(10 + i as u64, &snap, len, id);
        for level in [packetfs::plan::Level::Fast, packetfs::plan::Level::Max] {
            let opts = pbb::PackOptions::for_level(level);
            let (bytes, _, _) = pbb::pack_best(&bp, &content, Some(&snap), &opts).expect("pack");
            // the target appends the BLAKE3 trailer itself
            put(
                &dir("pbb"),
                &format!("mixed{len}-{level:?}.pbb"),
                &bytes[..bytes.len() - 32],
            );
        }
        let lowered = bp.lower_basic(&snap).expect("lower");
        let (v1, _) = pbb::pack(&lowered, &pbb::PackOptions::default()).expect("pack");
        put(
            &dir("pbb"),
            &format!("basic{len}.pbb"),
            &v1[..v1.len() - 32],
        );
        // blocks as `pfs send --level fast` (zstd) and `--level default` (LZMA) code them
        for level in [packetfs::plan::Level::Fast, packetfs::plan::Level::Default] {
            let enc = block::encode(&bp, &block::EncodeOptions::for_level(level)).expect("encode");
            let mut seed = vec![0u8];
            seed.extend_from_slice(&enc);
            let name = match level {
                packetfs::plan::Level::Fast => format!("mixed{len}.blk"),
                _ => format!("mixed{len}-{level:?}.blk"),
            };
            put(&dir("block"), &name, &seed);
        }
    }

    // literals that look like x86-64 code: a block and a .pbb whose literal stream went
    // through the x86 branch filter (coder 4)
    let code = x86_like(20_000);
    let bp = Blueprint {
        snapshot_id: [9; 32],
        file_len: code.len() as u64,
        file_hash: *blake3::hash(&code).as_bytes(),
        segments: packetfs::blueprint::raw_segments(code.len() as u64),
        spill: code.clone(),
    };
    let enc = block::encode(
        &bp,
        &block::EncodeOptions::for_level(packetfs::plan::Level::Fast),
    )
    .expect("encode");
    let mut seed = vec![0u8];
    seed.extend_from_slice(&enc);
    put(&dir("block"), "code20000.blk", &seed);
    let opts = pbb::PackOptions::for_level(packetfs::plan::Level::Fast);
    let (bytes, _) = pbb::pack_v3(&bp, Some((&code, &snap)), &opts).expect("pack");
    put(
        &dir("pbb"),
        "code20000-Fast.pbb",
        &bytes[..bytes.len() - 32],
    );

    // frame and receiver: plaintext sessions, direct and packed, against the receiver
    // target's snapshot and id.
    let rsnap: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let rid = [0x5a; 32];
    for (name, pack) in [
        ("direct", PackPolicy::Never),
        ("packed", PackPolicy::Always),
    ] {
        let mut s = sender(rid, &rsnap, pack, &[0, 700, 9000]);
        let mut r = Receiver::new(ReceiverConfig::default(), rid, &rsnap, MemSink::new());
        let (from_s, from_r) = session(&mut s, &mut r);
        assert!(
            r.outcome().is_some_and(|o| o.is_ok()),
            "seed session {name} failed"
        );
        put(
            &dir("receiver"),
            &format!("{name}.session"),
            &length_prefixed(&from_s),
        );
        for (k, d) in from_s.iter().chain(from_r.iter()).enumerate().take(40) {
            put(&dir("frame"), &format!("{name}-{k:02}.dgram"), d);
        }
    }

    // handshake and sealed frames: a keyed session as the handshake target sets it up.
    let me = Arc::new(Identity::from_secret([2; 32]));
    let friend = Arc::new(Identity::from_secret([1; 32]));
    let line = format!("{} friend\n", friend.public().to_base64());
    // The handshake seeds come from a sender the target does NOT authorize (the target's
    // receiver must never answer): its init passes mac1 (keyed by the receiver's public key)
    // and reaches the Noise read, where the unknown static key is refused.
    let stranger = Arc::new(Identity::from_secret([3; 32]));
    let seed_line = format!("{} stranger\n", stranger.public().to_base64());
    let hsnap = [0u8; 64];
    let tx = sender([0; 32], &hsnap, PackPolicy::Never, &[40]);
    let mut s = Guard::new(
        tx,
        Security::Sender(SenderKeys {
            identity: stranger.clone(),
            receiver: me.public(),
            psk: None,
        }),
        Some(1),
        GuardConfig::default(),
    );
    let rx = Receiver::new(ReceiverConfig::default(), [0; 32], &hsnap, MemSink::new());
    let mut g = Guard::new(
        rx,
        Security::Receiver(ReceiverKeys {
            identity: me.clone(),
            authorized: Arc::new(AuthorizedSenders::parse(&seed_line, "seed").expect("line")),
            psk: None,
        }),
        None,
        GuardConfig::default(),
    );
    let (from_s, from_r) = session(&mut s, &mut g);
    // The target's first byte picks the side: even = the receiver's Guard, odd = the sender's.
    put(
        &dir("handshake"),
        "keyed.session",
        &[&[0u8][..], &length_prefixed(&from_s)].concat(),
    );
    put(
        &dir("handshake"),
        "keyed.replies",
        &[&[1u8][..], &length_prefixed(&from_r)].concat(),
    );
    for (k, d) in from_s.iter().take(6).enumerate() {
        put(&dir("frame"), &format!("sealed-{k:02}.dgram"), d);
    }
    // sealed: scripts of (op, arg, len, skip, payload)
    let mut script = Vec::new();
    for (k, op) in [0u8, 0, 1, 2, 0, 3, 2, 0, 0, 0, 0, 1]
        .into_iter()
        .enumerate()
    {
        script.extend_from_slice(&[op, k as u8 * 37, 24, (k % 3) as u8]);
        script.extend_from_slice(&[k as u8; 24]);
    }
    put(&dir("sealed"), "mixed.script", &script);

    // text inputs users and other hosts write
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (t, f) in [
        ("config", "config/pfs.toml"),
        ("recipe", "config/snapshot.default.toml"),
    ] {
        let text = std::fs::read(repo.join(f)).expect("repository file");
        put(
            &dir(t),
            Path::new(f).file_name().unwrap().to_str().unwrap(),
            &text,
        );
    }
    put(
        &dir("keys"),
        "authorized_senders",
        format!("# name per key\n{line}{} backup\n", me.public().to_base64()).as_bytes(),
    );
    let recipe = packetfs::pob::Recipe::default_recipe();
    let mut off = 0u64;
    let banks = recipe
        .banks
        .iter()
        .zip(recipe.bank_lengths())
        .enumerate()
        .map(|(i, (b, len))| {
            let e = packetfs::pob::BankEntry {
                bank_id: i as u32,
                kind: b.kind,
                offset: off,
                len,
                source: "synthetic".into(),
            };
            off += len;
            e
        })
        .collect();
    let manifest = packetfs::pob::Manifest {
        format_version: packetfs::pob::SNAPSHOT_FORMAT,
        snapshot_id: "ab".repeat(32),
        size: off,
        recipe,
        banks,
        corpus: Vec::new(),
    };
    let manifest = serde_json::to_vec_pretty(&manifest).expect("json");
    put(
        &dir("keys"),
        "identity",
        format!("{}\n", friend.public().to_base64()).as_bytes(),
    );
    put(&dir("manifest"), "default.json", &manifest);

    // journal and Held: a resume journal, and Held frames (whole and prefix entries).
    let j = packetfs::journal::Journal {
        name: "dir/file.bin".into(),
        size: 1 << 30,
        prefix: 32 << 20,
        owner: friend.public().to_base64(),
    };
    put(&dir("journal"), "default.jrnl", &j.to_bytes());
    let held = packetfs::wire::held::Held {
        entries: vec![
            packetfs::wire::held::HeldEntry {
                file: 0,
                kind: packetfs::wire::held::HeldKind::Whole,
                len: 4096,
                hash: [1; 32],
            },
            packetfs::wire::held::HeldEntry {
                file: 3,
                kind: packetfs::wire::held::HeldKind::Prefix,
                len: 100,
                hash: [2; 32],
            },
        ],
    };
    let mut d = vec![0u8; 2048];
    let hdr = packetfs::wire::pfs::Repr {
        frame_type: packetfs::wire::pfs::FrameType::Held,
        flags: 0,
        session: 7,
        seq: 1,
        payload_len: 0,
    };
    let n = packetfs::wire::payload::Frame::emit(
        hdr,
        &packetfs::wire::payload::Payload::Held(held),
        &mut d,
    );
    put(&dir("frame"), "held.dgram", &d[..n]);
    println!("seed corpora written under {}", root.display());
}
