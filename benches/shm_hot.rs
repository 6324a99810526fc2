//! Hot paths of the SHM ring benchmark, in nanoseconds per descriptor (single thread):
//! span generation, encode + publish, consume + decode, and the whole produce/consume cycle
//! without touching the blob. `cargo bench --bench shm_hot` (plain timing, no harness).

use packetfs::blueprint::Transform;
use packetfs::shm::desc::{Decoder, Desc, Encoder, Span};
use packetfs::shm::region::SharedRegion;
use packetfs::shm::ring::RingRef;
use packetfs::shm::spans::Layout;
use std::hint::black_box;
use std::time::Instant;

const N: u64 = 20_000_000;

fn report(what: &str, t: Instant, n: u64) {
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("{what:<40} {ns:6.2} ns/desc  ({:.1} M desc/s)", 1e3 / ns);
}

fn main() {
    let layout = Layout::new(1 << 30, 3, 256, false, 64, 1).unwrap();
    let mut s = layout.stream(0);
    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..N {
        let (o, l) = s.next_span();
        acc = acc.wrapping_add(o ^ l as u64);
    }
    black_box(acc);
    report("span stream next_span", t, N);

    let mut s = layout.stream(0);
    let mut slots = vec![0u64; 32];
    let mut spans = vec![(0u64, 0u32); 32];
    let t = Instant::now();
    for _ in 0..N / 32 {
        s.fill_spans(&mut slots, &mut spans);
        for &(o, l) in &spans {
            acc = acc.wrapping_add(o ^ l as u64);
        }
    }
    black_box(acc);
    report("span stream fill_spans (32 at a time)", t, N / 32 * 32);

    let pow2 = 19;
    let mut mem =
        SharedRegion::normal("pfs-bench", RingRef::<Desc>::bytes_for(pow2), false).unwrap();
    mem.bytes_mut().fill(0);
    let ring = RingRef::<Desc>::init(mem.bytes_mut(), pow2).unwrap();
    let mut p = ring.take_producer().unwrap();
    let mut c = ring.take_consumer().unwrap();
    let dpf = 32;
    let batch = 512;
    let mut enc = Encoder::new(false);
    let mut dec = Decoder::new();
    let mut s = layout.stream(0);

    // Encode + publish only (the consumer just releases, without decoding).
    let t = Instant::now();
    let mut n = 0;
    let mut slots = vec![0u64; dpf];
    let mut spans = vec![(0u64, 0u32); dpf];
    while n < N {
        loop {
            s.fill_spans(&mut slots, &mut spans);
            if !p.try_publish_with(dpf, |i| {
                let (offset, len) = spans[i];
                enc.encode(
                    Span {
                        offset,
                        len,
                        op: Transform::Xor,
                        imm: 255,
                    },
                    i == 0,
                )
            }) {
                break;
            }
            n += dpf as u64;
        }
        c.consume_frames(dpf, usize::MAX, |d| {
            black_box(d);
        });
    }
    report("generate + encode + publish (+ release)", t, n);

    // Consume + decode from a full ring, refilled with fixed descriptors (cheap).
    let d0 = enc.encode(
        Span {
            offset: 4096,
            len: 256,
            op: Transform::Xor,
            imm: 255,
        },
        true,
    );
    let t = Instant::now();
    let mut n = 0u64;
    let mut sum = 0u64;
    while n < N {
        while p.try_publish_with(dpf, |_| d0) {}
        loop {
            let k = c.consume_frames(dpf, batch, |d| {
                let sp = dec.decode(d).unwrap();
                sum = sum.wrapping_add(sp.offset);
            });
            if k == 0 {
                break;
            }
            n += k as u64;
        }
    }
    black_box(sum);
    // Subtract nothing: the refill of a fixed descriptor is part of this figure.
    report("publish fixed + consume + decode", t, n);

    // Apply only: XOR 256 B random spans of a 1 GiB buffer (private memory, 4 KiB pages).
    let mut blob = vec![0u8; 1 << 30];
    blob.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let mut s = layout.stream(0);
    let spans: Vec<(usize, usize)> = (0..(1 << 16))
        .map(|_| {
            let (o, l) = s.next_span();
            (o as usize, l as usize)
        })
        .collect();
    let m = 8_000_000u64;
    let t = Instant::now();
    for i in 0..m {
        let (o, l) = spans[(i as usize * 40503) & 0xffff];
        packetfs::blueprint::apply::transform_in_place(Transform::Xor, 255, &mut blob[o..o + l]);
    }
    report("apply xor 256 B (shard 0 spans, 64k set)", t, m);
}
