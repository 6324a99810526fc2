//! `pfs send` / `pfs recv` end to end over loopback UDP (no privileges needed): several files
//! in one session arrive bit-exact; a snapshot mismatch is refused on both sides, by name.

use std::io::BufReader;
use std::path::Path;
use std::process::{Child, Output};

mod common;
use common::cli::{build_snapshot, build_snapshot_adding, pfs, spawn_listening, udp_recv};
use common::keys::KeyFiles;

/// Start a receiver on 127.0.0.1 with an OS-chosen port; return it and the port it printed.
fn start_recv(
    snap: &str,
    out: &Path,
    metrics: &Path,
    keys: &[String],
) -> (Child, u16, BufReader<std::process::ChildStderr>) {
    start_recv_timeout(snap, out, metrics, keys, "30")
}

fn start_recv_timeout(
    snap: &str,
    out: &Path,
    metrics: &Path,
    keys: &[String],
    timeout: &str,
) -> (Child, u16, BufReader<std::process::ChildStderr>) {
    let mut cmd = udp_recv(snap, timeout);
    cmd.args(keys)
        .arg("--out-dir")
        .arg(out)
        .arg("--metrics")
        .arg(metrics);
    let (c, port, err, _) = spawn_listening(cmd);
    (c, port, err)
}

fn finish(c: Child, mut err: BufReader<std::process::ChildStderr>) -> (Output, String) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let o = c.wait_with_output().unwrap();
    (o, rest)
}

#[test]
fn several_files_in_one_session_arrive_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("one"), b"x").unwrap();
    std::fs::copy("/usr/bin/true", src.join("true")).unwrap();
    let snap_bytes = std::fs::read(Path::new(&snap).join("snapshot.bin")).unwrap();
    std::fs::write(src.join("covered"), &snap_bytes[100_000..400_000]).unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let keys = KeyFiles::create(d.path());
    let (rx, port, err) = start_recv(&snap, &out, &m, &keys.recv_flags());
    let s = pfs()
        .arg("send")
        .args(keys.send_flags())
        .args([
            "--transport",
            "udp",
            "--snapshot",
            &snap,
            "--dst",
            &format!("127.0.0.1:{port}"),
            "--metrics",
        ])
        .arg(&m)
        .args(["empty", "one", "true", "covered"].map(|f| src.join(f)))
        .output()
        .unwrap();
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let (r, _) = finish(rx, err);
    assert!(r.status.success(), "receiver failed");
    for f in ["empty", "one", "true", "covered"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(src.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let summary = String::from_utf8_lossy(&s.stdout);
    assert!(
        summary.contains("sent 4 file(s)") && summary.contains("effective"),
        "{summary}"
    );
    let rsum = String::from_utf8_lossy(&r.stdout);
    assert!(
        summary.contains("security: Noise IKpsk2 + AES-256-GCM, peer receiver (")
            && rsum.contains("security: Noise IKpsk2 + AES-256-GCM, peer tester ("),
        "{summary}\n{rsum}"
    );
    let lines = std::fs::read_to_string(&m).unwrap();
    assert_eq!(lines.lines().count(), 2, "one metrics line per side");
}

#[test]
fn a_snapshot_mismatch_is_refused_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let mine = build_snapshot(d.path(), "a", "1");
    let theirs = build_snapshot(d.path(), "b", "2");
    std::fs::write(d.path().join("f"), b"hello").unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let keys = KeyFiles::create(d.path());
    let (rx, port, err) = start_recv(&theirs, &out, &m, &keys.recv_flags());
    // The receiver's key from a known-receivers file (the most specific line wins: its
    // IP:PORT line over `*`): the handshake completes, then the snapshots differ.
    let s = pfs()
        .arg("send")
        .args(keys.send_flags_known(&format!("127.0.0.1:{port}")))
        .args([
            "--transport",
            "udp",
            "--snapshot",
            &mine,
            "--dst",
            &format!("127.0.0.1:{port}"),
            "--metrics",
        ])
        .arg(&m)
        .arg(d.path().join("f"))
        .output()
        .unwrap();
    let (r, rerr) = finish(rx, err);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success() && !r.status.success());
    assert!(serr.to_lowercase().contains("snapshot"), "sender: {serr}");
    assert!(rerr.to_lowercase().contains("snapshot"), "receiver: {rerr}");
    assert!(!serr.contains("panicked") && !rerr.contains("panicked"));
    assert!(!out.join("f").exists(), "nothing under the final name");
}

fn send_one(snap: &str, port: u16, file: &Path, extra: &[String]) -> Output {
    send_logged(snap, port, file, extra, Path::new("/dev/null"))
}

/// `pfs send` of `file` over loopback UDP, its metrics line appended to `metrics`.
fn send_logged(snap: &str, port: u16, file: &Path, extra: &[String], metrics: &Path) -> Output {
    pfs()
        .arg("send")
        .args(extra)
        .args([
            "--transport",
            "udp",
            "--snapshot",
            snap,
            "--dst",
            &format!("127.0.0.1:{port}"),
            "--metrics",
        ])
        .arg(metrics)
        .arg(file)
        .output()
        .unwrap()
}

/// `pfs plan --level LEVEL SRC -o SRC.pbb`; the `.pbb`'s path.
fn plan_pbb(snap: &str, src: &Path, level: &str) -> std::path::PathBuf {
    let pbb = src.with_extension("pbb");
    let p = pfs()
        .args(["plan", "--level", level, "--snapshot", snap])
        .arg(src)
        .arg("-o")
        .arg(&pbb)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    pbb
}

/// Send `src` with `extra` flags to a fresh receiver (keys), check that it arrives under
/// `out/NAME` as `data`, and return the sender's metrics line.
fn send_checked(
    d: &Path,
    snap: &str,
    keys: &KeyFiles,
    src: &Path,
    data: &[u8],
    extra: &[String],
    tag: &str,
) -> serde_json::Value {
    let out = d.join(format!("out-{tag}"));
    let m = d.join(format!("m-{tag}.jsonl"));
    let (rx, port, err) = start_recv(snap, &out, &d.join("r.jsonl"), &keys.recv_flags());
    let mut flags = keys.send_flags();
    flags.extend_from_slice(extra);
    let s = send_logged(snap, port, src, &flags, &m);
    assert!(
        s.status.success(),
        "{tag}: sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let (r, _) = finish(rx, err);
    assert!(r.status.success(), "{tag}: receiver failed");
    let name = src
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".pbb")
        .to_string();
    assert!(
        std::fs::read(out.join(&name)).unwrap() == data,
        "{tag}: the file differs"
    );
    serde_json::from_str(std::fs::read_to_string(&m).unwrap().lines().last().unwrap()).unwrap()
}

#[test]
fn an_insecure_session_says_so_on_both_sides() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    std::fs::write(d.path().join("f"), b"plain text").unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let insecure = vec!["--insecure".to_string()];
    let (rx, port, err) = start_recv(&snap, &out, &m, &insecure);
    let s = send_one(&snap, port, &d.path().join("f"), &insecure);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let (r, _) = finish(rx, err);
    assert!(r.status.success());
    assert_eq!(std::fs::read(out.join("f")).unwrap(), b"plain text");
    for o in [&s.stdout, &r.stdout] {
        let t = String::from_utf8_lossy(o);
        assert!(t.contains("security: NONE (--insecure)"), "{t}");
    }
    let lines = std::fs::read_to_string(&m).unwrap();
    assert!(lines.contains("\"mode\":\"NONE (--insecure)\""), "{lines}");
}

#[test]
fn an_unknown_sender_gets_no_answer_and_no_file() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    std::fs::write(d.path().join("f"), b"not for you").unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let keys = KeyFiles::create(d.path());
    // A stranger: its own key, the receiver's right public key, not authorized.
    let sd = d.path().join("stranger");
    std::fs::create_dir(&sd).unwrap();
    let stranger = KeyFiles::create(&sd);
    let (rx, port, err) = start_recv_timeout(&snap, &out, &m, &keys.recv_flags(), "4");
    let flags = vec![
        "--identity".to_string(),
        stranger.sender_key.display().to_string(),
        "--receiver-key".into(),
        keys.receiver_pub.to_base64(),
    ];
    let s = send_one(&snap, port, &d.path().join("f"), &flags);
    let (r, rerr) = finish(rx, err);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success(), "the stranger's send succeeded");
    assert!(
        serr.contains("did not complete the handshake") && serr.contains("authorized-senders"),
        "sender: {serr}"
    );
    assert!(!r.status.success(), "the receiver should time out");
    assert!(
        rerr.contains("from keys not in the authorized senders refused"),
        "receiver: {rerr}"
    );
    assert!(!out.join("f").exists());
    assert!(!serr.contains("panicked") && !rerr.contains("panicked"));
}

#[test]
fn a_wrong_receiver_key_makes_the_sender_refuse() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    std::fs::write(d.path().join("f"), b"secret").unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let keys = KeyFiles::create(d.path());
    let od = d.path().join("other");
    std::fs::create_dir(&od).unwrap();
    let other = KeyFiles::create(&od);
    let (rx, port, err) = start_recv_timeout(&snap, &out, &m, &keys.recv_flags(), "4");
    let flags = vec![
        "--identity".to_string(),
        keys.sender_key.display().to_string(),
        "--receiver-key".into(),
        other.receiver_pub.to_base64(),
    ];
    let s = send_one(&snap, port, &d.path().join("f"), &flags);
    let (_, rerr) = finish(rx, err);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success());
    assert!(
        serr.contains(&format!(
            "expected to hold key {}",
            other.receiver_pub.to_base64()
        )),
        "sender: {serr}"
    );
    assert!(rerr.contains("bad mac1"), "receiver: {rerr}");
    assert!(!out.join("f").exists());
}

#[test]
fn keys_are_required_unless_insecure_and_loose_key_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    std::fs::write(d.path().join("f"), b"x").unwrap();
    // No keys at all: both commands say how to make them.
    let s = send_one(&snap, 9, &d.path().join("f"), &[]);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success());
    assert!(
        serr.contains("pfs keygen --out") && serr.contains("--insecure"),
        "{serr}"
    );
    let r = pfs()
        .args([
            "recv",
            "--transport",
            "udp",
            "--snapshot",
            &snap,
            "--out-dir",
        ])
        .arg(d.path().join("out"))
        .output()
        .unwrap();
    let rerr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        rerr.contains("pfs keygen --out") && rerr.contains("--insecure"),
        "{rerr}"
    );
    // A key file readable by others is refused, naming the mode.
    let keys = KeyFiles::create(d.path());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys.sender_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = send_one(&snap, 9, &d.path().join("f"), &keys.send_flags());
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success());
    assert!(serr.contains("644") || serr.contains("0600"), "{serr}");
    assert!(!serr.contains("panicked"), "{serr}");
}

/// A snapshot whose bytes changed after it was built (one byte altered in place, the size and
/// manifest unchanged) is refused by `pfs send` and `pfs recv` at start-up, by name, before
/// any session: a rebuild against it would produce wrong files.
#[test]
fn an_altered_snapshot_is_refused_at_start_by_both_commands() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "5");
    let file = d.path().join("f");
    std::fs::write(&file, b"a small file").unwrap();
    // file times tick with the kernel's coarse clock: let one tick pass after the build
    std::thread::sleep(std::time::Duration::from_millis(30));
    let bin = Path::new(&snap).join("snapshot.bin");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bin)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4321).unwrap();
    f.write_all_at(&[!b[0]], 4321).unwrap();
    let keys = KeyFiles::create(d.path());
    let s = send_one(&snap, 9, &file, &keys.send_flags());
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success());
    assert!(
        serr.contains("changed after it was built"),
        "sender: {serr}"
    );
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let r = udp_recv(&snap, "30")
        .args(keys.recv_flags())
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    let rerr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        rerr.contains("changed after it was built"),
        "receiver: {rerr}"
    );
    assert!(!serr.contains("panicked") && !rerr.contains("panicked"));
}

/// A file much larger than the sender's lead (16 MiB of unsent stream, `PULL_AHEAD`) is
/// streamed whole and bit-exact while the sender holds only part of it at any time: bytes
/// the receiver acknowledged are released and the producer's blocks wait in the channel.
#[test]
fn a_large_streamed_file_arrives_while_the_sender_holds_a_bounded_part() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let src = d.path().join("big");
    // 64 MiB the snapshot does not cover (noise): the stream is the file's bytes.
    let data = common::Rng(7).bytes(64 << 20);
    std::fs::write(&src, &data).unwrap();
    let out = d.path().join("out");
    let m = d.path().join("m.jsonl");
    let keys = KeyFiles::create(d.path());
    let (rx, port, err) = start_recv(&snap, &out, &m, &keys.recv_flags());
    let s = send_logged(&snap, port, &src, &keys.send_flags(), &m);
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let (r, _) = finish(rx, err);
    assert!(r.status.success(), "receiver failed");
    assert!(
        std::fs::read(out.join("big")).unwrap() == data,
        "big differs"
    );
    let lines = std::fs::read_to_string(&m).unwrap();
    let sent: serde_json::Value = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "send")
        .expect("the sender's metrics line");
    assert_eq!(sent["streamed_files"], 1, "{sent}");
    let peak = sent["stats"]["stream_held_peak"].as_u64().unwrap();
    let stream = sent["stream_bytes"].as_u64().unwrap();
    eprintln!("stream {stream} B, held at most {peak} B");
    assert!(peak > 0, "{sent}");
    assert!(
        peak <= stream * 3 / 4,
        "the sender held {peak} of a {stream} B stream at once"
    );
    let summary = String::from_utf8_lossy(&s.stdout);
    assert!(summary.contains("held for repairs"), "{summary}");
}

/// `pfs send --level` sets the blocks' coders: a file of snapshot stretches with scattered
/// changes and wordy text, streamed at `fast` (zstd) and at `default` (LZMA), arrives
/// bit-exact both times, and the `default` stream is at least a fifth smaller.
#[test]
fn each_level_streams_bit_exact_and_default_codes_smaller_blocks() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let snap_bytes = std::fs::read(Path::new(&snap).join("snapshot.bin")).unwrap();
    // covers with differences (every 61st byte changed) between text that compresses
    let mut data = Vec::new();
    let mut rng = common::Rng(11);
    let words = [
        "frame", "queue", "snapshot", "cover", "block", "stream", "receiver",
    ];
    for part in 0..4usize {
        let at = 50_000 + part * 200_000;
        let mut stretch = snap_bytes[at..at + 150_000].to_vec();
        for i in (0..stretch.len()).step_by(61) {
            stretch[i] ^= 0x5a;
        }
        data.extend_from_slice(&stretch);
        for _ in 0..8_000 {
            let w = words[rng.below(words.len() as u64) as usize];
            data.extend_from_slice(w.as_bytes());
            data.push(if rng.below(9) == 0 { b'\n' } else { b' ' });
        }
    }
    let src = d.path().join("mixed");
    std::fs::write(&src, &data).unwrap();
    let keys = KeyFiles::create(d.path());
    let mut streams = Vec::new();
    for level in ["fast", "default"] {
        let extra = ["--level".to_string(), level.to_string()];
        let sent = send_checked(d.path(), &snap, &keys, &src, &data, &extra, level);
        assert_eq!(sent["streamed_files"], 1, "{sent}");
        streams.push(sent["stream_bytes"].as_u64().unwrap());
    }
    eprintln!("stream bytes: fast {}, default {}", streams[0], streams[1]);
    // the two presets plan alike here (0.4% apart with zstd blocks at both): the coders
    // make the difference
    assert!(
        streams[1] * 5 < streams[0] * 4,
        "default (LZMA) {} B is not a fifth below fast (zstd) {} B",
        streams[1],
        streams[0]
    );
}

/// A `.pbb` named on the command line travels as its own streams (its coders, here LZMA at
/// `--level default`, and its reference model): the packed stream is the `.pbb` without its
/// 96-byte header and 32-byte trailer, plus the block's length prefix and two varints,
/// whatever `pfs send --level` says; the receiver rebuilds the original file bit-exact.
#[test]
fn a_pbb_travels_as_its_own_streams() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let snap_bytes = std::fs::read(Path::new(&snap).join("snapshot.bin")).unwrap();
    // covers with differences, then text
    let mut data = snap_bytes[70_000..370_000].to_vec();
    for i in (0..data.len()).step_by(53) {
        data[i] ^= 0x33;
    }
    for k in 0..20_000u32 {
        data.extend_from_slice(format!("line {k} of the file\n").as_bytes());
    }
    let src = d.path().join("doc");
    std::fs::write(&src, &data).unwrap();
    let pbb = plan_pbb(&snap, &src, "default");
    let pbb_len = std::fs::metadata(&pbb).unwrap().len();
    let keys = KeyFiles::create(d.path());
    let extra = ["--level".to_string(), "fast".to_string()];
    let sent = send_checked(d.path(), &snap, &keys, &pbb, &data, &extra, "pbb");
    assert_eq!(sent["packed_files"], 1, "{sent}");
    let stream = sent["stream_bytes"].as_u64().unwrap();
    let body = pbb_len - 96 - 32;
    assert!(
        (body + 4 + 2..=body + 4 + 20).contains(&stream),
        "stream {stream} B for a {pbb_len} B .pbb"
    );
}

/// With `--plan-whole`, a file no longer than it is planned whole while the session starts
/// and goes as one block of the streams `pfs plan` writes for it (its coders, its reference
/// predictions): the stream is `pfs plan --level fast`'s `.pbb` of the same file without its
/// header and trailer, plus the block's prefix, two varints and the stream's end record; the
/// file arrives bit-exact.
/// Without the flag the same file goes window by window (here, text and covers without
/// predictions, in about as many bytes).
#[test]
fn a_small_file_is_planned_whole_as_pfs_plan_does() {
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot(d.path(), "snap", "3");
    let snap_bytes = std::fs::read(Path::new(&snap).join("snapshot.bin")).unwrap();
    let mut data = snap_bytes[90_000..390_000].to_vec();
    for i in (0..data.len()).step_by(41) {
        data[i] = data[i].wrapping_add(3);
    }
    for k in 0..15_000u32 {
        data.extend_from_slice(format!("record {k}: queue {} frame {}\n", k % 7, k * 3).as_bytes());
    }
    let src = d.path().join("mixed");
    std::fs::write(&src, &data).unwrap();
    let pbb = plan_pbb(&snap, &src, "fast");
    let body = std::fs::metadata(&pbb).unwrap().len() - 96 - 32;
    let keys = KeyFiles::create(d.path());
    let mut streams = Vec::new();
    for whole in [true, false] {
        let extra: Vec<String> = if whole {
            vec!["--plan-whole".to_string(), (8u64 << 20).to_string()]
        } else {
            Vec::new()
        };
        let tag = if whole { "whole" } else { "windows" };
        let sent = send_checked(d.path(), &snap, &keys, &src, &data, &extra, tag);
        assert_eq!(sent["streamed_files"], 1, "{sent}");
        streams.push(sent["stream_bytes"].as_u64().unwrap());
    }
    // a streamed file's stream ends with its 36-byte end record
    let end = 36;
    assert!(
        (body + 4 + 2 + end..=body + 4 + 20 + end).contains(&streams[0]),
        "stream {} B, the .pbb's streams {body} B",
        streams[0]
    );
    assert_ne!(streams[1], streams[0], "window by window: another stream");
}

/// This machine's x86-64 `libstd-*.so` of rustup toolchain `tc`, if it has one.
fn toolchain_libstd(tc: &str) -> Option<std::path::PathBuf> {
    // through rustup itself: under `cargo test` the `rustc` first on PATH may be the
    // toolchain's own binary, which takes no `+toolchain`
    let o = std::process::Command::new("rustup")
        .args(["run", tc, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let lib = Path::new(String::from_utf8(o.stdout).ok()?.trim())
        .join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
    let mut found: Vec<_> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libstd-") && n.ends_with(".so"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// An x86-64 ELF release pair (the stable toolchain's libstd in the snapshot as a corpus
/// bank, the nightly's sent; skipped where either toolchain is missing) goes window by window
/// with its reference predictions: the file's first window planned carries the model, the
/// receiver adds the predictions back block by block, and the file arrives bit-exact, in
/// fewer stream bytes than with `--predict off` (which arrives bit-exact too).
#[test]
fn an_elf_release_pair_goes_window_by_window_with_predictions() {
    let (Some(old), Some(new)) = (toolchain_libstd("stable"), toolchain_libstd("nightly")) else {
        eprintln!("skipped: needs the stable and nightly toolchains' libstd-*.so");
        return;
    };
    let data = std::fs::read(&new).unwrap();
    if std::fs::read(&old).unwrap() == data {
        eprintln!("skipped: stable and nightly libstd are the same file");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let snap = build_snapshot_adding(d.path(), "snap", "3", &[&old]);
    let src = d.path().join("libstd.so");
    std::fs::write(&src, &data).unwrap();
    let keys = KeyFiles::create(d.path());
    let mut streams = Vec::new();
    for p in ["on", "off"] {
        let extra = ["--predict".to_string(), p.to_string()];
        let sent = send_checked(d.path(), &snap, &keys, &src, &data, &extra, p);
        assert_eq!(sent["streamed_files"], 1, "{sent}");
        streams.push(sent["stream_bytes"].as_u64().unwrap());
    }
    eprintln!(
        "libstd pair: {} stream bytes, {} without predictions",
        streams[0], streams[1]
    );
    assert!(
        streams[0] < streams[1],
        "with predictions {} stream bytes, without {}",
        streams[0],
        streams[1]
    );
}
