//! The frame parsers on untrusted bytes: a whole Ethernet frame and a bare PacketFS datagram.
//! Properties: nothing panics; whatever parses re-emits to the same bytes (the parsers are
//! strict, so a frame has exactly one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::wire::payload::{Frame, GramRepr, Payload};
use packetfs::wire::{pfs, stack};

fn check_datagram(d: &[u8]) {
    let Ok(f) = Frame::parse(d) else {
        return;
    };
    if let Payload::Data(g) = &f.payload {
        // Walk every run and piece (the receiver's hot path).
        let mut total = 0u64;
        for run in g.runs() {
            for (_off, p) in run.pieces() {
                total = total.wrapping_add(p.len());
            }
        }
        let repr = GramRepr::from_gram(g);
        let mut again = vec![0u8; f.payload.buffer_len()];
        assert_eq!(repr.emit(&mut again), Some(again.len()));
        let _ = total;
    }
    if f.header.flags & pfs::FLAG_SEALED != 0 {
        // A sealed frame's payload is ciphertext until opened (crate::secure): its header
        // and payload parse, but it is not re-emitted (the emitter writes unsealed frames).
        return;
    }
    let n = pfs::HEADER_LEN + f.payload.buffer_len();
    let mut out = vec![0u8; n];
    let m = Frame::emit(f.header, &f.payload, &mut out);
    assert_eq!(m, n);
    assert_eq!(&out[..], &d[..n], "parse then emit changed the datagram");
}

fuzz_target!(|data: &[u8]| {
    check_datagram(data);
    if let Ok((_addrs, d)) = stack::parse(data) {
        check_datagram(d);
    }
});
