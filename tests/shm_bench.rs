//! `pfs bench shm` end to end: small runs verify, a skipped descriptor fails the check, bad
//! flags are refused in one line, and SIGINT leaves no child or shared memory behind.
//! No assertion here depends on timing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn pfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pfs"))
}

/// A small, quick configuration.
const SMALL: &[&str] = &[
    "bench",
    "shm",
    "--blob-mb",
    "8",
    "--ring-pow2",
    "10",
    "--dpf",
    "16",
    "--duration",
    "0.2",
    "--baseline-secs",
    "0.05",
    "--memcpy-secs",
    "0.05",
    "--hugepages",
    "off",
    "--no-metrics",
    "--json",
];

fn run_json(extra: &[&str]) -> (i32, serde_json::Value) {
    let out = pfs().args(SMALL).args(extra).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); code {code}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

#[test]
fn small_runs_verify_in_every_mode() {
    let variants: &[&[&str]] = &[
        &["--threads", "2", "--queues", "3"],
        &["--threads", "2", "--queues", "3", "--producers", "2"],
        &["--threads", "2", "--procs", "1", "--queues", "2"],
        &[
            "--threads",
            "1",
            "--queues",
            "2",
            "--mode",
            "queues",
            "--arith",
            "1",
        ],
        &[
            "--threads",
            "2",
            "--ports",
            "2",
            "--queues",
            "2",
            "--mode",
            "ports",
            "--vstream",
            "1",
        ],
        &[
            "--threads",
            "2",
            "--pcpu-op",
            "add",
            "--imm",
            "3",
            "--align",
            "128",
            "--seg-len",
            "100",
        ],
        &["--threads", "2", "--pcpu", "0"],
    ];
    for extra in variants {
        let (code, v) = run_json(extra);
        assert_eq!(code, 0, "{extra:?}: {v}");
        assert_eq!(v["verify_ok"], true, "{extra:?}");
        assert!(
            v["ring_descs"].as_u64().unwrap() > 0,
            "{extra:?}: no work done"
        );
        assert_eq!(v["unaccounted_descs"], 0);
        assert_eq!(v["verify"]["bytes_checked"], 8 << 20);
        for k in ["aggregate_mbps", "cpupwn", "ring_efficiency", "memcpy_mbps"] {
            assert!(v[k].as_f64().is_some(), "{extra:?}: {k} missing");
        }
        assert!(v["baseline"]["mbps"].as_f64().is_some());
        assert!(v["ceiling"]["mbps"].as_f64().is_some());
    }
}

#[test]
fn a_skipped_descriptor_fails_the_check() {
    let (code, v) = run_json(&["--threads", "2", "--queues", "2", "--fault-skip-desc", "5"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["verify_ok"], false);
    assert_eq!(v["consumers"][0]["skipped"], 1);
    assert_eq!(v["verify"]["bad_slots"], 1, "{}", v["verify"]);
}

#[test]
fn bad_flags_get_one_line_before_anything_runs() {
    let cases: &[&[&str]] = &[
        &["--duration", "0"],
        &["--blob-mb", "1", "--seg-len", "4194304"],
        &["--ring-pow2", "30", "--queues", "16"],
        &["--blob-mb", "100000000"],
        &["--threads", "4", "--queues", "2"],
        &["--dpf", "2048", "--ring-pow2", "10"],
        &["--align", "3"],
        &["--producers", "2", "--mode", "queues"],
        &["--producers", "0"],
    ];
    for extra in cases {
        let out = pfs()
            .args(["bench", "shm", "--no-metrics"])
            .args(*extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        assert!(err.starts_with("pfs: error: "), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?} ran something");
    }
    // Values clap rejects (not a 0/1 flag) also fail without a panic.
    let out = pfs()
        .args(["bench", "shm", "--arith", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn is_pfs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "pfs")
}

fn dev_shm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn sigint_leaves_no_child_and_no_shared_memory() {
    let shm_before = dev_shm();
    let mut child = pfs()
        .args([
            "bench",
            "shm",
            "--blob-mb",
            "32",
            "--ring-pow2",
            "12",
            "--duration",
            "600",
            "--threads",
            "2",
            "--no-metrics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the ring phase runs (the consumers are forked before that line).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "pfs ended early");
        if line.contains("ring phase") {
            break;
        }
    }
    // The children exist and are pfs processes (they may still be pinning themselves).
    let mut kids = Vec::new();
    while kids.len() < 2 {
        kids = children_of(pid);
        std::thread::yield_now();
    }
    assert!(kids.iter().all(|&k| is_pfs(k)), "children {kids:?}");
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let rest: Vec<String> = err.lines().map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr after SIGINT: {rest:?}");
    for k in kids {
        assert!(!is_pfs(k), "consumer process {k} outlived SIGINT");
    }
    assert_eq!(dev_shm(), shm_before, "/dev/shm changed");
    // The interrupted run still verified what it did.
    let out = String::from_utf8_lossy(&child.stdout.take().map_or(Vec::new(), |mut s| {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut v).unwrap();
        v
    }))
    .into_owned();
    assert!(out.contains("verify: OK"), "{out}");
}

#[test]
fn killing_the_parent_kills_the_consumers() {
    let mut child = pfs()
        .args([
            "bench",
            "shm",
            "--blob-mb",
            "16",
            "--ring-pow2",
            "12",
            "--duration",
            "600",
            "--threads",
            "2",
            "--no-metrics",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "pfs ended early");
        if line.contains("ring phase") {
            break;
        }
    }
    let mut kids = Vec::new();
    while kids.len() < 2 {
        kids = children_of(pid);
        std::thread::yield_now();
    }
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    // PR_SET_PDEATHSIG delivers SIGKILL to each child; wait until they are gone (or zombies
    // waiting for init to reap them). The bound only keeps a failure from hanging the suite.
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for k in kids {
        while is_pfs(k) && !is_zombie(k) {
            assert!(
                std::time::Instant::now() < guard,
                "consumer {k} outlived its parent"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        })
        .unwrap_or(true)
}
