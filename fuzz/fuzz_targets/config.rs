//! The appliance config (`config/pfs.toml`) on untrusted text. Properties: nothing panics; an
//! accepted config survives a merge over the defaults (what every command does with it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::config::PfsConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = PfsConfig::parse(text, Path::new("pfs.toml")) {
        let again = PfsConfig::parse(text, Path::new("pfs.toml")).expect("deterministic");
        assert_eq!(c, again);
    }
});
