//! The snapshot recipe (TOML) on untrusted text. Properties: nothing panics; an accepted
//! recipe's bank lengths add up to its declared size (the builder allocates by them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::pob::recipe::Recipe;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Recipe::parse(text) {
        let lens = r.bank_lengths();
        assert_eq!(lens.len(), r.banks.len());
        assert_eq!(lens.iter().sum::<u64>(), r.size_mb << 20);
    }
});
