//! `pfs keygen` and `pfs key pub` (docs/security.md): key files are written with mode 0600
//! and never over an existing file; the public key printed at creation is the one `pfs key
//! pub` prints again; key files that group or others may read, and files that hold no key,
//! are refused with a clear message; pre-shared key files round-trip.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn pfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn keygen(p: &Path) -> String {
    let o = pfs(&["keygen", "--out", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 1, "one line on stdout: {out:?}");
    out.trim().to_string()
}

#[test]
fn keygen_writes_mode_0600_and_key_pub_prints_the_same_public_key() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("host.key");
    let public = keygen(&k);
    assert_eq!(mode(&k), 0o600);
    // One base64 word of 32 bytes, and it is the public half, not the private key.
    assert_eq!(public.len(), 44, "{public}");
    let public_key = packetfs::secure::PublicKey::from_base64(&public).unwrap();
    let private = std::fs::read_to_string(&k).unwrap();
    assert_ne!(private.trim(), public);
    let id = packetfs::secure::Identity::load(&k).unwrap();
    assert_eq!(id.public(), public_key);
    let o = pfs(&["key", "pub", k.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), public);
    // The hint on stderr gives the peer's lines with this key.
    let again = d.path().join("second.key");
    let o = pfs(&["keygen", "--out", again.to_str().unwrap()]);
    let hint = text(&o.stderr);
    let second = text(&o.stdout).trim().to_string();
    assert!(
        hint.contains("authorized-senders") && hint.contains(&format!("--receiver-key {second}")),
        "{hint}"
    );
    assert_ne!(second, public, "two keys differ");
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_file() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("host.key");
    let public = keygen(&k);
    let before = std::fs::read(&k).unwrap();
    for extra in [&[][..], &["--psk"][..]] {
        let mut args = vec!["keygen", "--out", k.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = pfs(&args);
        let e = text(&o.stderr);
        assert!(!o.status.success());
        assert!(
            e.contains("already exists") && e.contains("host.key"),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(o.stdout.is_empty());
    }
    assert_eq!(std::fs::read(&k).unwrap(), before, "the key is unchanged");
    let o = pfs(&["key", "pub", k.to_str().unwrap()]);
    assert_eq!(text(&o.stdout).trim(), public);
}

#[test]
fn a_key_file_readable_by_others_is_refused_with_the_chmod_hint() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("open.key");
    keygen(&k);
    for m in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(m)).unwrap();
        let o = pfs(&["key", "pub", k.to_str().unwrap()]);
        let e = text(&o.stderr);
        assert!(!o.status.success(), "mode {m:o} accepted");
        assert!(o.stdout.is_empty(), "nothing printed on stdout");
        assert!(
            e.contains("too open") && e.contains(&format!("chmod 600 {}", k.display())),
            "{e}"
        );
    }
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(pfs(&["key", "pub", k.to_str().unwrap()]).status.success());
}

#[test]
fn files_that_hold_no_key_are_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 5] = [
        ("garbage", b"this is not a key\n"),
        ("short", b"AAAA\n"),
        ("empty", b""),
        ("binary", &[0xff, 0x00, 0x13, 0x37]),
        ("two", b"KX/g/BpukHfDiiBafX3zG9iTdgTMAL0S7vOKwKlOix4= KX/g/BpukHfDiiBafX3zG9iTdgTMAL0S7vOKwKlOix4=\n"),
    ];
    for (name, bytes) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = pfs(&["key", "pub", p.to_str().unwrap()]);
        let e = text(&o.stderr);
        assert!(!o.status.success(), "{name} accepted");
        assert!(
            e.starts_with("pfs: error: ") && e.contains(name),
            "{name}: {e}"
        );
        assert!(!e.contains("panicked"), "{name}: {e}");
    }
    let o = pfs(&["key", "pub", d.path().join("missing").to_str().unwrap()]);
    let e = text(&o.stderr);
    assert!(
        !o.status.success() && e.contains("missing") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn a_pre_shared_key_file_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("psk");
    let o = pfs(&["keygen", "--psk", "--out", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty(), "a pre-shared key is never printed");
    assert!(text(&o.stderr).contains("--psk-file"));
    assert_eq!(mode(&p), 0o600);
    let k = packetfs::secure::keys::load_psk(&p).unwrap();
    let q = d.path().join("psk2");
    assert!(pfs(&["keygen", "--psk", "--out", q.to_str().unwrap()])
        .status
        .success());
    assert_ne!(packetfs::secure::keys::load_psk(&q).unwrap(), k, "random");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = packetfs::secure::keys::load_psk(&p).unwrap_err();
    assert!(e.to_string().contains("too open"), "{e}");
}

#[test]
fn help_explains_each_command() {
    let o = pfs(&["keygen", "--help"]);
    let h = text(&o.stdout);
    for w in [
        "--out",
        "--psk",
        "0600",
        "authorized-senders",
        "--receiver-key",
        "security.md",
    ] {
        assert!(h.contains(w), "keygen --help lacks {w}: {h}");
    }
    let h = text(&pfs(&["key", "pub", "--help"]).stdout);
    assert!(h.contains("public key") && h.contains("KEYFILE"), "{h}");
}
