//! Rebuild speed of one `.pbb` next to memcpy, measured in the same run:
//!
//!   cargo run --release --example rebuild_probe -- SNAPSHOT_DIR FILE.pbb
//!
//! For each snapshot backing (file mapping, then the default), best of 5: `rebuild_into`;
//! the same snapshot and cover segments copied with plain `copy_from_slice` (what the
//! kernels did before they streamed their stores); one flat memcpy of the file's size.
use packetfs::blueprint::{pbb, Source};
use packetfs::pob::{HugePolicy, Snapshot};
use std::time::Instant;
fn best<F: FnMut()>(mut f: F) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}
fn pol_name(p: &HugePolicy) -> &str {
    match p {
        HugePolicy::Off => "off",
        HugePolicy::Auto => "auto",
        HugePolicy::On => "on",
    }
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        eprintln!("usage: rebuild_probe SNAPSHOT_DIR FILE.pbb");
        std::process::exit(2);
    }
    for pol in [HugePolicy::Off, HugePolicy::Auto] {
        let snap = Snapshot::open(std::path::Path::new(&a[1]), pol).expect("open the snapshot");
        let s = snap.bytes();
        let bytes = std::fs::read(&a[2]).expect("read the .pbb");
        let bp = pbb::unpack(&bytes, &snap.id, s.len() as u64).expect("a .pbb of this snapshot");
        let n = bp.file_len as usize;
        let mut out = vec![0u8; n];
        bp.rebuild_into(s, &mut out).unwrap();
        let t = best(|| bp.rebuild_into(s, &mut out).unwrap());
        // the same copies as plain memcpy of snapshot ranges (covers as copies)
        let mut segs_copy = || {
            let mut o = 0;
            for seg in &bp.segments {
                let l = seg.len as usize;
                match seg.src {
                    Source::Snap { off, .. } | Source::Cover { off } => {
                        out[o..o + l].copy_from_slice(&s[off as usize..off as usize + l])
                    }
                    _ => {}
                }
                o += l;
            }
        };
        let tc = best(&mut segs_copy);
        let src: Vec<u8> = vec![1u8; n];
        let mut dst = vec![0u8; n];
        dst.copy_from_slice(&src);
        let tm = best(|| dst.copy_from_slice(std::hint::black_box(&src)));
        let g = |t: f64| n as f64 / t / 1e9;
        println!("{} backing={}: rebuild {:.2} GB/s, same segments as memcpy from snapshot {:.2}, flat memcpy {:.2}; ratio {:.2}",
            pol_name(&pol), snap.backing_name(), g(t), g(tc), g(tm), tm / t);
    }
}
