//! `.pbb` (v1, v2 and v3) fed hostile bytes. The input is the body; the target appends the
//! right BLAKE3 trailer so that the fuzzer reaches the header, directory, stream decoders,
//! table joins and reference predictions instead of stopping at the checksum, and it takes the
//! snapshot id the input declares. Properties: nothing panics, no allocation beyond the
//! bounds (libFuzzer's -rss_limit_mb), and an accepted blueprint validates and rebuilds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::blueprint::pbb;

fuzz_target!(|data: &[u8]| {
    let snap: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut b = data.to_vec();
    b.extend_from_slice(blake3::hash(data).as_bytes());
    let id: [u8; 32] = match b.get(12..44) {
        Some(x) => x.try_into().unwrap(),
        None => [0; 32],
    };
    if let Ok(bp) = pbb::unpack_with(&b, &id, &snap) {
        bp.validate(snap.len() as u64).expect("unpack returned an invalid blueprint");
        if bp.file_len <= 1 << 20 {
            let mut out = vec![0u8; bp.file_len as usize];
            bp.rebuild_into(&snap, &mut out).expect("a valid blueprint rebuilds");
        }
    }
});
