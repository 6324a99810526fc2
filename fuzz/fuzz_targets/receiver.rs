//! The receiver state machine fed hostile datagrams: the input is split into datagrams by a
//! 2-byte length prefix, each handed to a receiver at an advancing virtual time. Properties:
//! nothing panics, and the receiver never commits a file whose bytes differ from its
//! manifest's BLAKE3 (MemSink is checked after every step).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::proto::{Endpoint, MemSink, Receiver, ReceiverConfig};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let snap: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let cfg = ReceiverConfig {
        max_file_size: 1 << 20,
        max_total_size: 1 << 22,
        max_files: 64,
        ..ReceiverConfig::default()
    };
    let mut r = Receiver::new(cfg, [0x5a; 32], &snap, MemSink::new());
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (d, tail) = rest[2..].split_at(n);
        rest = tail;
        let d = &mut d.to_vec();
        step += 1;
        let now = t0 + Duration::from_millis(step);
        r.handle_datagram(now, d);
        r.handle_timeout(now);
        while r.poll_transmit(now, &mut buf).is_some() {}
        while r.poll_event().is_some() {}
    }
    let sink = r.sink();
    for (i, f) in r.files().iter().enumerate() {
        if let Some(bytes) = sink.committed(i) {
            assert_eq!(blake3::hash(bytes).as_bytes(), &f.hash);
        }
    }
});
