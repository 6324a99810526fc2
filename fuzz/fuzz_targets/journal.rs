//! The resume journal (`.NAME.pfs-jrnl-H`, read from the receiver's output directory, which a
//! local user or a failing disk may have written) on untrusted bytes. Properties: nothing
//! panics; an accepted journal has its prefix within its size and a plain relative name, and
//! re-encodes to the same bytes (one encoding per journal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::journal::Journal;

fuzz_target!(|data: &[u8]| {
    if let Ok(j) = Journal::parse(data) {
        assert!(j.prefix <= j.size);
        assert_eq!(
            packetfs::proto::sink::sanitize_name(&j.name).as_deref(),
            Some(j.name.as_str())
        );
        assert_eq!(j.to_bytes(), data);
    }
});
