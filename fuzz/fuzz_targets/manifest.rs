//! The snapshot manifest (`manifest.json`, read from a snapshot directory another host or a
//! tool may have written) on untrusted bytes. Properties: nothing panics; an accepted manifest
//! has a 64-hex-digit id and banks that follow each other and add up to its size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::pob::Snapshot;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Snapshot::parse_manifest(data, Path::new("manifest.json")) {
        assert!(packetfs::util::parse_hex32(&m.snapshot_id).is_some());
        let mut end = 0u64;
        for b in &m.banks {
            assert_eq!(b.offset, end, "an accepted bank does not follow the previous one");
            end = b.offset + b.len;
        }
        assert_eq!(end, m.size, "accepted banks do not add up to the size");
    }
});
