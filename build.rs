//! Embeds the XDP steering program (ebpf/steer) into `pfs`.
//!
//! The object is built by `scripts/build-ebpf.sh` (nightly + bpf-linker). This script runs it
//! when the eBPF sources change, then copies the object to `$OUT_DIR/pfs-steer.o`, which
//! `src/steer` includes. When the toolchain is missing the build does not fail: a cargo
//! warning says so, an empty object is embedded, and loading it returns an error that names
//! `scripts/setup.sh`. Pure-code builds and tests work either way.
//!
//! Environment:
//! - `PFS_EBPF_OBJ=path`: embed this object instead of building one.
//! - `PFS_NO_EBPF_BUILD=1`: never run the eBPF build; embed whatever object already exists.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("pfs-steer.o");
    let built = root.join("ebpf/target/bpfel-unknown-none/release/pfs-steer");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PFS_EBPF_OBJ");
    println!("cargo:rerun-if-env-changed=PFS_NO_EBPF_BUILD");
    for p in [
        "ebpf/Cargo.toml",
        "ebpf/Cargo.lock",
        "ebpf/common/Cargo.toml",
        "ebpf/common/src",
        "ebpf/steer/Cargo.toml",
        "ebpf/steer/src",
        "scripts/build-ebpf.sh",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo::rustc-check-cfg=cfg(pfs_ebpf)");

    let obj = match env::var_os("PFS_EBPF_OBJ") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if env::var_os("PFS_NO_EBPF_BUILD").is_none() {
                build_object(&root);
            }
            built.exists().then_some(built.clone())
        }
    };
    // A manual scripts/build-ebpf.sh run also re-embeds.
    println!("cargo:rerun-if-changed={}", built.display());

    match obj {
        Some(src) => {
            fs::copy(&src, &out).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
            println!("cargo:rustc-cfg=pfs_ebpf");
        }
        None => {
            fs::write(&out, b"").expect("write empty eBPF object");
            println!(
                "cargo:warning=the XDP program is not built (needs nightly + bpf-linker): \
                 `pfs` cannot steer until you run scripts/setup.sh and rebuild"
            );
        }
    }
}

/// Runs scripts/build-ebpf.sh when nightly and bpf-linker are there; warns otherwise.
fn build_object(root: &Path) {
    let have_nightly = run_ok(Command::new("rustc").args(["+nightly", "--version"]));
    let have_linker = run_ok(Command::new("bpf-linker").arg("--version"));
    if !have_nightly || !have_linker {
        let what = match (have_nightly, have_linker) {
            (false, false) => "nightly and bpf-linker",
            (false, true) => "nightly",
            _ => "bpf-linker",
        };
        println!("cargo:warning=not building the XDP program: {what} missing (scripts/setup.sh)");
        return;
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/build-ebpf.sh"))
        .current_dir(root)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            for line in err
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("cargo:warning=build-ebpf: {line}");
            }
            println!("cargo:warning=scripts/build-ebpf.sh failed; using any older object");
        }
        Err(e) => println!("cargo:warning=cannot run scripts/build-ebpf.sh: {e}"),
    }
}

fn run_ok(cmd: &mut Command) -> bool {
    let home_bin = env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    if let (Some(bin), Some(path)) = (home_bin, env::var_os("PATH")) {
        let mut paths = vec![bin];
        paths.extend(env::split_paths(&path));
        if let Ok(joined) = env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
    }
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}
