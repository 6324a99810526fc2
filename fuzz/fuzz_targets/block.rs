//! Packed transfer blocks (v3 streams) fed hostile bytes: one block body decoded at a file
//! offset taken from the first input byte, then the whole input as a packed stream.
//! Properties: nothing panics, declared lengths are refused before allocation, and an
//! accepted block validates against the snapshot and rebuilds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::blueprint::block::{self, Limits};

fuzz_target!(|data: &[u8]| {
    let snap: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let lim = Limits {
        max_body: 1 << 20,
        max_spill: 1 << 20,
        max_segments: 1 << 16,
    };
    let Some((&b0, body)) = data.split_first() else {
        return;
    };
    let base = b0 as u64 * 1000;
    if let Ok(b) = block::decode_body(body, &lim, snap.len() as u64, base) {
        let bp = b.into_blueprint([0; 32]);
        bp.validate_at(snap.len() as u64, base)
            .expect("decode_body returned an invalid block");
        // self copies reach before the block: rebuild only blocks that stand alone
        if bp.file_len <= 1 << 20 && !bp.has_self_copies() {
            let mut out = vec![0u8; bp.file_len as usize];
            bp.rebuild_into(&snap, &mut out).expect("a valid block rebuilds");
        }
    }
    let _ = block::decode_all(body, &lim, [0; 32], snap.len() as u64, 1 << 16, [0; 32]);
});
