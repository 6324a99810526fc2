//! Hostile manifests fed to the receiver state machine over the real file sink (no network):
//! built with the wire types directly, as a rogue sender could. Each is refused with a named
//! reason or its entry skipped, and nothing is ever created outside the receiver's
//! directory.

use packetfs::fsink::MmapSink;
use packetfs::proto::sink::Skip;
use packetfs::proto::{Endpoint, Event, Reason, Receiver, ReceiverConfig};
use packetfs::wire::payload::{Attrs, FileEntry, Frame, GramWriter, Hello, Payload};
use packetfs::wire::pfs;
use std::path::Path;
use std::time::Instant;

const ID: [u8; 32] = [5; 32];
static SNAP: [u8; 64] = [0; 64];

fn frame(seq: u64, p: &Payload<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 4000];
    let hdr = pfs::Repr {
        frame_type: p.frame_type(),
        flags: 0,
        session: 9,
        seq,
        payload_len: 0,
    };
    let n = Frame::emit(hdr, p, &mut buf);
    buf.truncate(n);
    buf
}

/// A gram carrying `bytes` raw at offset 0 of file `file`.
fn data(seq: u64, file: u32, bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8; 1400];
    let mut w = GramWriter::new(&mut body, 0);
    assert_eq!(w.push_raw(file, 0, bytes), bytes.len());
    let n = w.finish();
    let mut buf = vec![0u8; pfs::HEADER_LEN + n];
    buf[pfs::HEADER_LEN..].copy_from_slice(&body[..n]);
    let hdr = pfs::Repr {
        frame_type: pfs::FrameType::Data,
        flags: 0,
        session: 9,
        seq,
        payload_len: n as u16,
    };
    hdr.emit(&mut pfs::Packet::new_unchecked(&mut buf[..]));
    buf
}

fn file(name: &str, bytes: &[u8]) -> FileEntry {
    FileEntry::direct(
        name.into(),
        bytes.len() as u64,
        *blake3::hash(bytes).as_bytes(),
    )
}

fn link(name: &str, target: &str) -> FileEntry {
    FileEntry::symlink(name.into(), target.into(), None)
}

/// What a session came to.
struct Outcome {
    failure: Option<Reason>,
    skipped: Vec<(u32, Skip)>,
    finished: bool,
}

/// Run a receiver into `out` over `entries` (each regular file's contents in `contents`, by
/// entry index); returns its outcome.
fn run(out: &Path, entries: Vec<FileEntry>, contents: &[(u32, &[u8])]) -> Outcome {
    let sink = MmapSink::new(out, "hostile").unwrap();
    let mut r = Receiver::new(ReceiverConfig::default(), ID, &SNAP, sink);
    let now = Instant::now();
    let hello = Payload::Hello(Hello {
        snapshot_id: ID,
        nfiles: entries.len() as u32,
        first: 0,
        entries,
    });
    r.handle_datagram(now, &mut frame(0, &hello));
    for (k, (fi, bytes)) in contents.iter().enumerate() {
        r.handle_datagram(now, &mut data(1 + k as u64, *fi, bytes));
    }
    let mut o = Outcome {
        failure: None,
        skipped: Vec::new(),
        finished: false,
    };
    while let Some(e) = r.poll_event() {
        match e {
            Event::Aborted(f) => o.failure = Some(f.reason),
            Event::Skipped { file, why } => o.skipped.push((file, why)),
            Event::Finished => o.finished = true,
            _ => {}
        }
    }
    o
}

/// `root/out` (the receiver's directory) beside `root/outside` (which must stay empty).
fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let outside = t.path().join("outside");
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&outside).unwrap();
    (t, out, outside)
}

fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(d, d);
    v.sort();
    v
}

fn walk(base: &Path, d: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        v.push(p.strip_prefix(base).unwrap().display().to_string());
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            v.extend(walk(base, &p));
        }
    }
    v
}

#[test]
fn dot_dot_and_absolute_names_are_refused_as_bad_names() {
    for name in [
        "../escape",
        "a/../../escape",
        "/tmp/escape",
        "a/./b",
        "a//b",
    ] {
        let (_t, out, outside) = dirs();
        let o = run(&out, vec![file(name, b"x")], &[]);
        assert!(
            matches!(o.failure, Some(Reason::BadName { file: 0 })),
            "{name}: {:?}",
            o.failure
        );
        assert!(listing(&outside).is_empty(), "{name}");
        assert!(listing(&out).is_empty(), "{name}: {:?}", listing(&out));
    }
}

#[test]
fn a_path_through_a_link_of_the_same_session_is_refused() {
    let (_t, out, outside) = dirs();
    let o = run(
        &out,
        vec![link("l", "../outside"), file("l/x", b"payload")],
        &[(1, b"payload")],
    );
    assert!(
        matches!(o.failure, Some(Reason::PathConflict { file: 1, other: 0 })),
        "{:?}",
        o.failure
    );
    assert!(listing(&outside).is_empty());
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn a_link_then_a_file_of_the_same_name_and_duplicate_names_are_refused() {
    let (_t, out, outside) = dirs();
    let o = run(&out, vec![link("a", "b"), file("a", b"x")], &[]);
    assert!(
        matches!(o.failure, Some(Reason::DuplicateName { file: 1, other: 0 })),
        "{:?}",
        o.failure
    );
    let o = run(&out, vec![file("d", b"x"), file("d", b"y")], &[]);
    assert!(
        matches!(o.failure, Some(Reason::DuplicateName { file: 1, other: 0 })),
        "{:?}",
        o.failure
    );
    let o = run(
        &out,
        vec![FileEntry::dir("d".into(), None), file("d", b"y")],
        &[],
    );
    assert!(matches!(o.failure, Some(Reason::DuplicateName { .. })));
    assert!(listing(&outside).is_empty());
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn a_file_beneath_a_file_is_refused() {
    let (_t, out, _outside) = dirs();
    let o = run(&out, vec![file("f", b"x"), file("f/g", b"y")], &[]);
    assert!(
        matches!(o.failure, Some(Reason::PathConflict { file: 1, other: 0 })),
        "{:?}",
        o.failure
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn links_out_of_the_tree_are_skipped_and_safe_ones_made_after_the_files() {
    let (_t, out, outside) = dirs();
    let attrs = Attrs::new(0o640, 1_000_000_000, 5).unwrap();
    let entries = vec![
        FileEntry {
            attrs: Some(attrs),
            ..file("t/f", b"hello")
        },
        link("t/abs", "/etc/passwd"),
        link("t/up", "../../outside"),
        link("t/mid", "sub/../../../outside"),
        link("t/ok", "f"),
        link("t/sub/ok2", "../f"),
        FileEntry::dir("t/sub".into(), Some(Attrs::new(0o750, 7, 0).unwrap())),
    ];
    let o = run(&out, entries, &[(0, b"hello")]);
    assert!(o.failure.is_none(), "{:?}", o.failure);
    assert!(o.finished);
    assert_eq!(
        o.skipped,
        [
            (1, Skip::AbsoluteLink),
            (2, Skip::LinkClimbsOut),
            (3, Skip::LinkClimbsOut)
        ]
    );
    assert_eq!(
        listing(&out),
        ["t", "t/f", "t/ok", "t/sub", "t/sub/ok2"],
        "only the safe links"
    );
    assert_eq!(std::fs::read(out.join("t/ok")).unwrap(), b"hello");
    assert_eq!(std::fs::read(out.join("t/sub/ok2")).unwrap(), b"hello");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(out.join("t/f")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
    let d = std::fs::metadata(out.join("t/sub")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o750, 7));
    assert!(listing(&outside).is_empty());
}

#[test]
fn setuid_and_sticky_bits_are_dropped_by_default() {
    let (_t, out, _outside) = dirs();
    let e = FileEntry {
        attrs: Some(Attrs::new(0o4755, 0, 0).unwrap()),
        ..file("s", b"x")
    };
    let d = FileEntry::dir("d".into(), Some(Attrs::new(0o1777, 0, 0).unwrap()));
    let o = run(&out, vec![e, d], &[(0, b"x")]);
    assert!(o.failure.is_none(), "{:?}", o.failure);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(out.join("s")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(out.join("d")).unwrap().mode() & 0o7777,
        0o777
    );
}

#[test]
fn a_planted_link_in_the_out_dir_is_never_followed() {
    let (_t, out, outside) = dirs();
    std::os::unix::fs::symlink(&outside, out.join("planted")).unwrap();
    for entries in [
        vec![FileEntry::dir("planted/d".into(), None)],
        vec![file("planted/f", b"x")],
        vec![link("planted/l", "x")],
        vec![FileEntry::dir("planted".into(), None)],
    ] {
        let o = run(&out, entries.clone(), &[(0, b"x")]);
        assert!(
            matches!(
                o.failure,
                Some(Reason::BadName { .. }) | Some(Reason::FileExists { .. })
            ),
            "{entries:?}: {:?}",
            o.failure
        );
        assert!(listing(&outside).is_empty(), "{entries:?}");
    }
}
