//! The key files on untrusted text: an identity, an authorized-senders file and a
//! known-receivers file (operators edit them; a reload reads them while sessions run).
//! Properties: nothing panics; an accepted identity's public key round-trips through its
//! base64 line, as the authorized-senders file writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::secure::{AuthorizedSenders, Identity, KnownReceivers};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = Identity::parse(text, "fuzz") {
        let line = format!("{} fuzz\n", id.public().to_base64());
        AuthorizedSenders::parse(&line, "fuzz").expect("a public key line is accepted");
    }
    let _ = AuthorizedSenders::parse(text, "fuzz");
    let _ = KnownReceivers::parse(text, "fuzz");
});
