//! The `pfs` codec commands end to end, and every kind of bad input: one-line error naming the
//! problem, non-zero exit, no panic, nothing left under the output name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use packetfs::blueprint::pbb::{self, PackOptions};
use packetfs::blueprint::{Blueprint, Segment, Source, Transform};

fn pfs(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run pfs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pfs failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert a clean failure: non-zero, one error line that contains `what`, no panic.
fn fails(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure mentioning {what:?}, got success"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pfs: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        err.to_lowercase().contains(&what.to_lowercase()),
        "error should mention {what:?}: {err}"
    );
}

/// Nothing but `keep` in `dir` (no partial or temporary output).
fn only(dir: &Path, keep: &[&str]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            keep.contains(&n.as_str()),
            "unexpected file left behind: {n}"
        );
    }
}

struct Env {
    dir: tempfile::TempDir,
    snap: PathBuf,
    id: [u8; 32],
    len: u64,
}

fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let out = ok(&pfs(
            &[
                "snapshot",
                "build",
                "--size-mb",
                "1",
                "--seed",
                "7",
                "--out",
                snap.to_str().unwrap(),
            ],
            dir.path(),
        ));
        assert!(out.contains("snapshot ") && out.contains("built"), "{out}");
        let m = packetfs::pob::Snapshot::read_manifest(&snap).unwrap();
        Env {
            id: packetfs::util::parse_hex32(&m.snapshot_id).unwrap(),
            len: m.size,
            snap,
            dir,
        }
    })
}

fn work() -> tempfile::TempDir {
    tempfile::tempdir_in(env().dir.path()).unwrap()
}

#[test]
fn help_explains_every_subcommand() {
    let d = work();
    for sub in [
        &["--help"][..],
        &["snapshot", "build", "--help"],
        &["snapshot", "info", "--help"],
        &["snapshot", "verify", "--help"],
        &["index", "build", "--help"],
        &["plan", "--help"],
        &["unplan", "--help"],
    ] {
        let out = ok(&pfs(sub, d.path()));
        assert!(out.contains("Usage:"), "{sub:?}: {out}");
    }
    let out = ok(&pfs(&["plan", "--help"], d.path()));
    for flag in [
        "--snapshot",
        "--hints",
        "--window",
        "--json",
        "--level",
        "--predict",
        "--metrics",
    ] {
        assert!(out.contains(flag), "plan --help lacks {flag}");
    }
}

#[test]
fn snapshot_info_verify_and_index() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    let info = ok(&pfs(&["snapshot", "info", s], d.path()));
    for kind in ["const_runs", "elf_text", "debruijn", "prand_tail"] {
        assert!(info.contains(kind), "{info}");
    }
    let js = ok(&pfs(&["snapshot", "info", s, "--json"], d.path()));
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v["size"], 1 << 20);
    assert!(ok(&pfs(&["snapshot", "verify", s], d.path())).contains("verified"));
    let idx = ok(&pfs(&["index", "build", s], d.path()));
    assert!(
        idx.contains("kept"),
        "indexes built with the snapshot are kept: {idx}"
    );
    // a damaged copy fails verification
    let copy = d.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["snapshot.bin", "snapshot.manifest.json"] {
        std::fs::copy(e.snap.join(f), copy.join(f)).unwrap();
    }
    let mut b = std::fs::read(copy.join("snapshot.bin")).unwrap();
    b[12345] ^= 1;
    std::fs::write(copy.join("snapshot.bin"), b).unwrap();
    fails(
        &pfs(&["snapshot", "verify", copy.to_str().unwrap()], d.path()),
        "hashes to",
    );
    // a missing index is rebuilt on first use
    let out = pfs(&["index", "build", copy.to_str().unwrap()], d.path());
    assert!(ok(&out).contains("built"));
}

#[test]
fn snapshot_build_with_corpus_and_bad_recipes() {
    let d = work();
    std::fs::create_dir_all(d.path().join("c/sub")).unwrap();
    std::fs::write(d.path().join("c/a.txt"), b"hello corpus").unwrap();
    std::fs::write(d.path().join("c/sub/b.bin"), [1u8, 2, 3]).unwrap();
    ok(&pfs(
        &[
            "snapshot",
            "build",
            "--size-mb",
            "1",
            "--add",
            "c",
            "--out",
            "s",
            "--no-index",
        ],
        d.path(),
    ));
    let m = packetfs::pob::Snapshot::read_manifest(&d.path().join("s")).unwrap();
    let paths: Vec<&str> = m.corpus.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["c/a.txt", "c/sub/b.bin"]);
    assert_eq!(
        m.corpus[0].blake3,
        blake3::hash(b"hello corpus").to_hex().as_str()
    );
    std::fs::write(
        d.path().join("r.toml"),
        "format = 1\nseed = 1\nsize_mb = 1\ncolour = 1\n[[bank]]\nkind = \"stripes\"\nweight = 1\n",
    )
    .unwrap();
    fails(
        &pfs(
            &["snapshot", "build", "--recipe", "r.toml", "--out", "x"],
            d.path(),
        ),
        "colour",
    );
    fails(
        &pfs(
            &["snapshot", "build", "--add", "nope", "--out", "x"],
            d.path(),
        ),
        "nope",
    );
    fails(
        &pfs(
            &["snapshot", "build", "--size-mb", "0", "--out", "x"],
            d.path(),
        ),
        "size_mb",
    );
    only(d.path(), &["c", "s", "r.toml"]);
}

#[test]
fn plan_unplan_roundtrip_with_json_hints_and_metrics() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    // a small ELF every Debian machine has
    let exe = "/usr/bin/true";
    let out = ok(&pfs(
        &[
            "plan",
            exe,
            "--snapshot",
            s,
            "-o",
            "x.pbb",
            "--json",
            "x.json",
            "--metrics",
            "m.jsonl",
        ],
        d.path(),
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in [
        "file_bytes",
        "segments",
        "id",
        "xor",
        "add",
        "raw",
        "raw_spill",
        "raw_ratio",
        "pbb_bytes",
        "wire_bytes",
        "plan_ms",
        "snapshot_id",
    ] {
        assert!(line.get(k).is_some(), "metrics line lacks {k}: {line}");
    }
    assert_eq!(line["hints"], "elf");
    assert_eq!(
        line["wire_bytes"],
        std::fs::metadata(d.path().join("x.pbb")).unwrap().len()
    );
    let logged = std::fs::read_to_string(d.path().join("m.jsonl")).unwrap();
    assert_eq!(logged.lines().count(), 1);
    let bj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("x.json")).unwrap()).unwrap();
    // the JSON is the shipped blueprint: one raw segment when plain compression won
    let shipped = if line["plain_won"].as_bool().unwrap() {
        1
    } else {
        line["segments"].as_u64().unwrap()
    };
    assert_eq!(bj["segments"].as_array().unwrap().len() as u64, shipped);
    ok(&pfs(
        &["unplan", "x.pbb", "--snapshot", s, "-o", "rebuilt"],
        d.path(),
    ));
    assert!(std::fs::read(d.path().join("rebuilt")).unwrap() == std::fs::read(exe).unwrap());

    // hints from a JSON file, and bad hints
    std::fs::write(
        d.path().join("h.json"),
        r#"{"sections":[{"name":"all","kind":"rodata","offset":0,"size":100}]}"#,
    )
    .unwrap();
    std::fs::write(d.path().join("t.txt"), "some text ".repeat(500)).unwrap();
    let out = ok(&pfs(
        &[
            "plan",
            "t.txt",
            "--snapshot",
            s,
            "--hints",
            "h.json",
            "--metrics",
            "m.jsonl",
        ],
        d.path(),
    ));
    assert!(out.contains("h.json"));
    std::fs::write(
        d.path().join("bad.json"),
        r#"{"sections":[{"name":"a","kind":"code","offset":0,"size":1}]}"#,
    )
    .unwrap();
    fails(
        &pfs(
            &["plan", "t.txt", "--snapshot", s, "--hints", "bad.json"],
            d.path(),
        ),
        "bad.json",
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("m.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn empty_file_and_file_larger_than_the_snapshot_roundtrip() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    std::fs::write(d.path().join("empty"), b"").unwrap();
    ok(&pfs(
        &[
            "plan",
            "empty",
            "--snapshot",
            s,
            "-o",
            "e.pbb",
            "--metrics",
            "m",
        ],
        d.path(),
    ));
    ok(&pfs(
        &["unplan", "e.pbb", "--snapshot", s, "-o", "e.out"],
        d.path(),
    ));
    assert_eq!(std::fs::read(d.path().join("e.out")).unwrap().len(), 0);
    let mut big = std::fs::read(e.snap.join("snapshot.bin")).unwrap();
    big.extend_from_slice(b"and a tail the snapshot does not hold");
    std::fs::write(d.path().join("big"), &big).unwrap();
    ok(&pfs(
        &[
            "plan",
            "big",
            "--snapshot",
            s,
            "-o",
            "b.pbb",
            "--metrics",
            "m",
        ],
        d.path(),
    ));
    assert!(std::fs::metadata(d.path().join("b.pbb")).unwrap().len() < 20_000);
    ok(&pfs(
        &["unplan", "b.pbb", "--snapshot", s, "-o", "b.out"],
        d.path(),
    ));
    assert!(std::fs::read(d.path().join("b.out")).unwrap() == big);
}

fn forged(bp: &Blueprint) -> Vec<u8> {
    pbb::pack(bp, &PackOptions::default()).unwrap().0
}

#[test]
fn bad_blueprints_are_refused_cleanly() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    std::fs::write(d.path().join("f"), "text ".repeat(2000)).unwrap();
    ok(&pfs(
        &[
            "plan",
            "f",
            "--snapshot",
            s,
            "-o",
            "good.pbb",
            "--metrics",
            "m",
        ],
        d.path(),
    ));
    let good = std::fs::read(d.path().join("good.pbb")).unwrap();
    let w = |n: &str, b: &[u8]| std::fs::write(d.path().join(n), b).unwrap();
    let unplan = |n: &str| pfs(&["unplan", n, "--snapshot", s, "-o", "out"], d.path());

    w("trunc.pbb", &good[..good.len() - 7]);
    fails(&unplan("trunc.pbb"), "truncated");
    w("short.pbb", &good[..20]);
    fails(&unplan("short.pbb"), "truncated");
    let mut c = good.clone();
    let n = c.len();
    c[n - 40] ^= 0x40;
    w("corrupt.pbb", &c);
    fails(&unplan("corrupt.pbb"), "checksum");
    w("notpbb.pbb", b"hello, this is not a blueprint at all, not even close to one......................................................................................................................");
    fails(&unplan("notpbb.pbb"), "not a .pbb");
    fails(&unplan("missing.pbb"), "missing.pbb");
    fails(&unplan("."), "directory");

    // wrong snapshot: refused before anything else is decoded
    let other = d.path().join("other");
    ok(&pfs(
        &[
            "snapshot",
            "build",
            "--size-mb",
            "1",
            "--seed",
            "8",
            "--out",
            "other",
            "--no-index",
        ],
        d.path(),
    ));
    fails(
        &pfs(
            &[
                "unplan",
                "good.pbb",
                "--snapshot",
                other.to_str().unwrap(),
                "-o",
                "out",
            ],
            d.path(),
        ),
        "snapshot",
    );

    let mk = |segments: Vec<Segment>, file_len: u64, spill: Vec<u8>| Blueprint {
        snapshot_id: e.id,
        file_len,
        file_hash: [0; 32],
        segments,
        spill,
    };
    let id = |off: u64, len: u32| Segment {
        len,
        src: Source::Snap {
            op: Transform::Id,
            off,
            imm: 0,
        },
    };
    w(
        "outside.pbb",
        &forged(&mk(vec![id(e.len - 10, 20)], 20, vec![])),
    );
    fails(&unplan("outside.pbb"), "beyond its end");
    w(
        "overrun.pbb",
        &forged(&mk(vec![id(0, 50), id(0, 60)], 100, vec![])),
    );
    fails(&unplan("overrun.pbb"), "overruns");
    w(
        "short-cover.pbb",
        &forged(&mk(vec![id(0, 50)], 100, vec![])),
    );
    fails(&unplan("short-cover.pbb"), "cover");
    w(
        "spill.pbb",
        &forged(&mk(
            vec![Segment {
                len: 10,
                src: Source::Raw,
            }],
            10,
            vec![1, 2, 3],
        )),
    );
    fails(&unplan("spill.pbb"), "literal");
    w("hash.pbb", &forged(&mk(vec![id(0, 64)], 64, vec![])));
    fails(&unplan("hash.pbb"), "hashes to");

    w(
        "cover-outside.pbb",
        &forged(&mk(
            vec![Segment {
                len: 20,
                src: Source::Cover { off: e.len - 10 },
            }],
            20,
            vec![0; 20],
        )),
    );
    fails(&unplan("cover-outside.pbb"), "beyond its end");

    // absurd declared sizes and damaged streams with a valid checksum: refused before any
    // allocation of that size, one error naming the problem
    let resum = |mut b: Vec<u8>| {
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    };
    let mut b = good[..good.len() - 32].to_vec();
    b[44..52].copy_from_slice(&(1u64 << 60).to_le_bytes());
    b[84..92].copy_from_slice(&(1u64 << 61).to_le_bytes());
    w("absurd.pbb", &resum(b));
    fails(&unplan("absurd.pbb"), "cannot cover");
    // the v3 directory, edited: (coder, raw, stored) per stream
    let h = pbb::read_header(&good).unwrap();
    let dir = h.streams.unwrap();
    let dir_len = u32::from_le_bytes(good[92..96].try_into().unwrap()) as usize;
    let data = &good[pbb::HEADER_LEN_V3 + dir_len..good.len() - 32];
    type Dir = Vec<(u8, u64, u64)>;
    let with_dir = |edit: &dyn Fn(&mut Dir), data: &[u8]| {
        let mut e: Vec<(u8, u64, u64)> = dir.iter().map(|e| (e.coder, e.raw, e.stored)).collect();
        edit(&mut e);
        let mut d = Vec::new();
        for (c, r, st) in e {
            d.push(c);
            packetfs::blueprint::varint::put_u64(&mut d, r);
            packetfs::blueprint::varint::put_u64(&mut d, st);
        }
        let mut b = good[..pbb::HEADER_LEN_V3].to_vec();
        b[92..96].copy_from_slice(&(d.len() as u32).to_le_bytes());
        b.extend_from_slice(&d);
        b.extend_from_slice(data);
        resum(b)
    };
    for (name, edit, what) in [
        (
            "lens",
            &(|e: &mut Dir| e[1].1 = 1 << 59) as &dyn Fn(&mut Dir),
            "stream lens declares",
        ),
        ("lits", &|e| e[7].1 = 1 << 59, "stream lits declares"),
        ("coder", &|e| e[7].0 = 77, "unknown coder 77"),
        ("stored", &|e| e[7].2 += 5, "add up"),
        ("raw", &|e| e[7].1 += 1, "stream lits"),
    ] {
        let n = format!("dir-{name}.pbb");
        w(&n, &with_dir(edit, data));
        fails(&unplan(&n), what);
    }
    // damaged bytes inside the literal stream (a zstd or LZMA stream), checksum fixed
    let lits_at: u64 = dir[..7].iter().map(|e| e.stored).sum();
    let mut dd = data.to_vec();
    for k in 0..dir[7].stored.min(64) {
        dd[(lits_at + k) as usize] ^= 0x5a;
    }
    w("damaged.pbb", &with_dir(&|_| {}, &dd));
    fails(&unplan("damaged.pbb"), "stream lits");
    let mut keep = vec![
        "cover-outside.pbb",
        "dir-lens.pbb",
        "dir-lits.pbb",
        "dir-coder.pbb",
        "dir-stored.pbb",
        "dir-raw.pbb",
        "damaged.pbb",
        "f",
        "m",
        "good.pbb",
        "trunc.pbb",
        "short.pbb",
        "corrupt.pbb",
        "notpbb.pbb",
        "other",
        "outside.pbb",
        "overrun.pbb",
        "short-cover.pbb",
        "spill.pbb",
        "hash.pbb",
        "absurd.pbb",
    ];
    keep.sort();
    only(d.path(), &keep);
}

#[test]
fn bad_plan_inputs() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    fails(&pfs(&["plan", "nope", "--snapshot", s], d.path()), "nope");
    fails(&pfs(&["plan", ".", "--snapshot", s], d.path()), "directory");
    std::fs::write(d.path().join("f"), b"abc").unwrap();
    fails(
        &pfs(&["plan", "f", "--snapshot", "nowhere"], d.path()),
        "nowhere",
    );
    fails(
        &pfs(
            &["plan", "f", "--snapshot", s, "--hints", "missing.json"],
            d.path(),
        ),
        "missing.json",
    );
    only(d.path(), &["f"]);
}

#[test]
fn plan_coders_limits_each_stream_to_one_family() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    // an x86-64 ELF file: the branch filters are candidates too
    let exe = "/usr/bin/true";
    let mut sizes = Vec::new();
    for (fam, prefixes) in [
        ("all", &["stored", "zstd-", "lzma-", "xz-x86-"][..]),
        ("zstd", &["stored", "zstd-"][..]),
        ("lzma2", &["stored", "lzma-", "xz-x86-"][..]),
        ("stored", &["stored"][..]),
    ] {
        let pbb = format!("{fam}.pbb");
        let out = ok(&pfs(
            &["plan", exe, "--snapshot", s, "--coders", fam, "-o", &pbb],
            d.path(),
        ));
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let streams = line["streams"].as_array().unwrap();
        assert!(!streams.is_empty(), "{line}");
        for st in streams {
            let c = st["coder"].as_str().unwrap();
            assert!(
                prefixes.iter().any(|p| c.starts_with(p)),
                "--coders {fam}: stream {} coded with {c}",
                st["name"]
            );
        }
        let back = format!("{fam}.out");
        ok(&pfs(
            &["unplan", &pbb, "--snapshot", s, "-o", &back],
            d.path(),
        ));
        assert_eq!(
            std::fs::read(d.path().join(&back)).unwrap(),
            std::fs::read(exe).unwrap(),
            "--coders {fam} rebuilt"
        );
        sizes.push((fam, std::fs::metadata(d.path().join(&pbb)).unwrap().len()));
    }
    // no coder costs bytes: stored is the largest
    let stored = sizes.last().unwrap().1;
    assert!(sizes[..3].iter().all(|&(_, n)| n < stored), "{sizes:?}");
    // an unknown family: clap's usage error, naming the value and the ones it takes
    let o = pfs(
        &["plan", exe, "--snapshot", s, "--coders", "gzip"],
        d.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("'gzip'") && err.contains("lzma2"), "{err}");
}

#[test]
fn plan_with_tuning_flags_a_planner_toml_and_a_coverage_map() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    let exe = "/usr/bin/true";
    std::fs::write(
        d.path().join("planner.toml"),
        "engine = \"segments\"\ngate = true\nsweep = true\nfanout_k4 = 16\n[gate_banks]\ntext = [\"elf_text\", \"corpus\"]\n",
    )
    .unwrap();
    let out = ok(&pfs(
        &[
            "plan",
            exe,
            "--snapshot",
            s,
            "--planner",
            "planner.toml",
            "--projections",
            "ascii,opcode",
            "--map",
            "cov.svg",
            "-o",
            "x.pbb",
            "--metrics",
            "m.jsonl",
        ],
        d.path(),
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in [
        "lookup_ms",
        "extend_ms",
        "sweep_ms",
        "soft_ms",
        "pack_ms",
        "match_ms",
    ] {
        assert!(
            line["phase_ms"].get(k).is_some(),
            "phase_ms lacks {k}: {line}"
        );
    }
    assert_eq!(line["planner"]["gate"], true);
    assert_eq!(line["planner"]["fanout_k4"], 16);
    assert_eq!(
        line["planner"]["projections"],
        serde_json::json!(["ascii", "opcode"])
    );
    assert_eq!(
        line["planner"]["gate_banks"]["text"],
        serde_json::json!(["elf_text", "corpus"])
    );
    let svg = std::fs::read_to_string(d.path().join("cov.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("class=\"seg\""));
    ok(&pfs(
        &["unplan", "x.pbb", "--snapshot", s, "-o", "rebuilt"],
        d.path(),
    ));
    assert!(std::fs::read(d.path().join("rebuilt")).unwrap() == std::fs::read(exe).unwrap());
    // the indexes these settings need were built on demand; index build reports their memory
    let idx = ok(&pfs(
        &[
            "index",
            "build",
            s,
            "--engine",
            "segments",
            "--fanout-k4",
            "16",
            "--projections",
            "ascii,opcode",
        ],
        d.path(),
    ));
    for f in [
        "index.raw.k4s2f16.idx",
        "index.ascii.k8s8f8.idx",
        "index.opcode.k8s8f8.idx",
    ] {
        assert!(idx.contains(f), "{idx}");
    }
    assert!(idx.contains("memory:"), "{idx}");
    // bad settings: named, nothing written
    std::fs::write(d.path().join("bad.toml"), "gait = true\n").unwrap();
    fails(
        &pfs(
            &[
                "plan",
                exe,
                "--snapshot",
                s,
                "--planner",
                "bad.toml",
                "-o",
                "y.pbb",
            ],
            d.path(),
        ),
        "gait",
    );
    fails(
        &pfs(
            &[
                "plan",
                exe,
                "--snapshot",
                s,
                "--projections",
                "hex",
                "-o",
                "y.pbb",
            ],
            d.path(),
        ),
        "hex",
    );
    assert!(!d.path().join("y.pbb").exists());
}

/// `pfs plan --soft on --self on` writes a v2 .pbb with self copies (overlapping ones too);
/// `pfs unplan` rebuilds it bit-exactly; bad feature values are refused.
#[test]
fn plan_with_soft_and_self_segments_roundtrips() {
    let e = env();
    let d = work();
    let s = e.snap.to_str().unwrap();
    let snapb = std::fs::read(e.snap.join("snapshot.bin")).unwrap();
    let mut file = snapb[100_000..140_000].to_vec();
    // a run that repeats a 29-byte pattern (overlapping self copy), then earlier bytes again
    let pat = b"repeat me, said the pattern. ".to_vec();
    for _ in 0..300 {
        file.extend_from_slice(&pat);
    }
    let mut noise = vec![0u8; 5000];
    packetfs::pob::prng::SplitMix64::new(3).fill(&mut noise);
    file.extend_from_slice(&noise);
    file.extend_from_slice(&noise.clone()[1000..4000]);
    std::fs::write(d.path().join("f"), &file).unwrap();
    let out = ok(&pfs(
        &[
            "plan",
            "f",
            "--snapshot",
            s,
            "-o",
            "f.pbb",
            "--engine",
            "segments",
            "--soft",
            "on",
            "--self",
            "on",
            "--json",
            "f.json",
            "--metrics",
            "m",
        ],
        d.path(),
    ));
    assert!(out.contains("\"self\":"), "{out}");
    let pbb_bytes = std::fs::read(d.path().join("f.pbb")).unwrap();
    assert_eq!(
        u16::from_le_bytes([pbb_bytes[8], pbb_bytes[9]]),
        pbb::VERSION
    );
    ok(&pfs(
        &["unplan", "f.pbb", "--snapshot", s, "-o", "f.out"],
        d.path(),
    ));
    assert!(std::fs::read(d.path().join("f.out")).unwrap() == file);
    // a blueprint with self copies (one overlapping) rebuilds through unplan
    let mut want = snapb[0..100].to_vec();
    for k in 0..1000 {
        let b = want[97 + k];
        want.push(b);
    }
    let again = want[10..60].to_vec();
    want.extend_from_slice(&again);
    let bp = Blueprint {
        snapshot_id: e.id,
        file_len: want.len() as u64,
        file_hash: *blake3::hash(&want).as_bytes(),
        segments: vec![
            Segment {
                len: 100,
                src: Source::Snap {
                    op: Transform::Id,
                    off: 0,
                    imm: 0,
                },
            },
            Segment {
                len: 1000,
                src: Source::SelfCopy { off: 97 },
            },
            Segment {
                len: 50,
                src: Source::SelfCopy { off: 10 },
            },
        ],
        spill: Vec::new(),
    };
    std::fs::write(d.path().join("x.pbb"), forged(&bp)).unwrap();
    ok(&pfs(
        &["unplan", "x.pbb", "--snapshot", s, "-o", "x.out"],
        d.path(),
    ));
    assert!(std::fs::read(d.path().join("x.out")).unwrap() == want);
    let o = pfs(
        &[
            "plan",
            "f",
            "--snapshot",
            s,
            "--soft",
            "on",
            "--soft-min-equal",
            "1.5",
            "--metrics",
            "m",
        ],
        d.path(),
    );
    fails(&o, "soft_min_equal = 1.5 is out of range");
    let o = pfs(
        &[
            "plan",
            "f",
            "--snapshot",
            s,
            "--self",
            "maybe",
            "--metrics",
            "m",
        ],
        d.path(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("maybe"));
}
