//! The shared-memory ring: FIFO order, full and empty, wraparound, whole frames, a model
//! test of the cursor logic, and a producer and consumer in two processes.

use packetfs::shm::region::SharedRegion;
use packetfs::shm::ring::RingRef;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

fn region(pow2: u32) -> SharedRegion {
    SharedRegion::normal(
        "pfs-test-ring",
        RingRef::<u64>::bytes_for(pow2) + 4096,
        false,
    )
    .unwrap()
}

#[test]
fn empty_ring_gives_nothing_and_full_ring_takes_nothing() {
    let mut mem = region(3);
    let ring = RingRef::<u64>::init(mem.bytes_mut(), 3).unwrap();
    let mut p = ring.take_producer().unwrap();
    let mut c = ring.take_consumer().unwrap();
    assert_eq!(c.available(), 0);
    assert_eq!(
        c.consume_with(100, |_| panic!("empty ring yielded a slot")),
        0
    );
    assert_eq!(p.free(), 8);
    assert!(p.try_publish(&[1, 2, 3, 4, 5, 6, 7, 8]));
    assert_eq!(p.free(), 0);
    assert!(!p.try_publish(&[9]), "a full ring took a slot");
    // All or nothing: 2 slots free, a batch of 3 does not go in.
    let mut got = Vec::new();
    assert_eq!(c.consume_with(2, |v| got.push(v)), 2);
    assert!(!p.try_publish(&[9, 10, 11]));
    assert!(p.try_publish(&[9, 10]));
    assert_eq!(c.consume_with(100, |v| got.push(v)), 8);
    assert_eq!(got, (1..=10).collect::<Vec<u64>>());
    assert_eq!(c.available(), 0);
    assert_eq!(ring.published(), 10);
    assert_eq!(ring.consumed(), 10);
}

#[test]
fn cursors_wrap_around_many_times_in_order() {
    let mut mem = region(4);
    let ring = RingRef::<u64>::init(mem.bytes_mut(), 4).unwrap();
    let mut p = ring.take_producer().unwrap();
    let mut c = ring.take_consumer().unwrap();
    let (mut next_in, mut next_out) = (0u64, 0u64);
    // Batch sizes that do not divide the capacity, so batches straddle the end of the slots.
    for round in 0..10_000u64 {
        let n = (round % 7 + 1) as usize;
        if p.try_publish_with(n, |i| next_in + i as u64) {
            next_in += n as u64;
        }
        c.consume_with((round % 5 + 1) as usize, |v| {
            assert_eq!(v, next_out);
            next_out += 1;
        });
    }
    c.consume_with(usize::MAX, |v| {
        assert_eq!(v, next_out);
        next_out += 1;
    });
    assert_eq!(next_in, next_out);
    assert!(
        next_in > 16 * 1000,
        "the cursors wrapped {} times",
        next_in / 16
    );
}

#[test]
fn consumers_take_whole_frames_only() {
    let mut mem = region(6);
    let ring = RingRef::<u64>::init(mem.bytes_mut(), 6).unwrap();
    let mut p = ring.take_producer().unwrap();
    let mut c = ring.take_consumer().unwrap();
    for f in 0..3u64 {
        assert!(p.try_publish_with(5, |i| f * 5 + i as u64));
    }
    // 15 available, max 12: two frames of 5.
    assert_eq!(c.consume_frames(5, 12, |_| {}), 10);
    // 5 available, max 4: less than a frame, nothing.
    assert_eq!(c.consume_frames(5, 4, |_| {}), 0);
    let mut last = Vec::new();
    assert_eq!(c.consume_frames(5, 64, |v| last.push(v)), 5);
    assert_eq!(last, vec![10, 11, 12, 13, 14]);
}

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Consume(usize),
    Free,
    Available,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..20).prop_map(Op::Publish),
        (0usize..20).prop_map(Op::Consume),
        Just(Op::Free),
        Just(Op::Available),
    ]
}

proptest! {
    /// The ring behaves like a bounded FIFO queue, whatever the interleaving of batched
    /// publishes and consumes.
    #[test]
    fn ring_matches_a_bounded_queue(pow2 in 0u32..5, ops in proptest::collection::vec(op(), 1..300)) {
        let mut mem = region(pow2);
        let ring = RingRef::<u64>::init(mem.bytes_mut(), pow2).unwrap();
        let cap = 1usize << pow2;
        let mut p = ring.take_producer().unwrap();
        let mut c = ring.take_consumer().unwrap();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = 0u64;
        for o in ops {
            match o {
                Op::Publish(n) => {
                    let fits = model.len() + n <= cap;
                    let ok = p.try_publish_with(n, |i| next + i as u64);
                    prop_assert_eq!(ok, fits);
                    if ok {
                        model.extend(next..next + n as u64);
                        next += n as u64;
                    }
                }
                Op::Consume(n) => {
                    let mut got = Vec::new();
                    let k = c.consume_with(n, |v| got.push(v));
                    let want: Vec<u64> = model.drain(..n.min(model.len())).collect();
                    prop_assert_eq!(k, want.len());
                    prop_assert_eq!(got, want);
                }
                Op::Free => prop_assert_eq!(p.free() as usize, cap - model.len()),
                Op::Available => prop_assert_eq!(c.available() as usize, model.len()),
            }
            prop_assert_eq!(ring.published() - ring.consumed(), model.len() as u64);
        }
    }
}

#[test]
fn producer_and_consumer_in_two_processes() {
    const N: u64 = 2_000_000;
    const FRAME: usize = 32;
    let pow2 = 10;
    let mut mem = SharedRegion::normal(
        "pfs-test-ring2",
        RingRef::<u64>::bytes_for(pow2) + 128,
        false,
    )
    .unwrap();
    let (ring_mem, result_mem) = mem
        .bytes_mut()
        .split_at_mut(RingRef::<u64>::bytes_for(pow2));
    let ring = RingRef::<u64>::init(ring_mem, pow2).unwrap();
    // Safety: `result_mem` is 128 bytes of zeroed, 8-aligned shared memory borrowed for the
    // test; all-zero is a valid AtomicU64.
    let result = unsafe { &*result_mem.as_ptr().cast::<AtomicU64>() };
    // Safety: the child does not allocate or take locks: it only runs the ring's lock-free
    // consumer over shared memory and stores to an atomic, then exits.
    let pid = unsafe {
        packetfs::shm::proc::fork_child(|| {
            let Some(mut c) = ring.take_consumer() else {
                return 2;
            };
            let (mut expect, mut sum) = (0u64, 0u64);
            let mut bad = false;
            while expect < N {
                c.consume_frames(FRAME, 256, |v| {
                    bad |= v != expect;
                    expect += 1;
                    sum = sum.wrapping_add(v);
                });
            }
            result.store(sum, Ordering::Release);
            if bad {
                1
            } else {
                0
            }
        })
    }
    .unwrap();
    let mut kids = packetfs::shm::proc::Children::new();
    kids.push(pid);
    let mut p = ring.take_producer().unwrap();
    let mut next = 0u64;
    while next < N {
        if p.try_publish_with(FRAME, |i| next + i as u64) {
            next += FRAME as u64;
        } else {
            std::hint::spin_loop();
        }
    }
    let exits = kids.wait_all(std::time::Duration::from_secs(300));
    assert_eq!(exits.len(), 1);
    assert!(exits[0].1.success(), "child: {}", exits[0].1);
    assert_eq!(result.load(Ordering::Acquire), N * (N - 1) / 2);
    assert_eq!(ring.consumed(), N);
}

#[test]
fn a_second_consumer_in_another_process_is_refused() {
    let mut mem = region(3);
    let ring = RingRef::<u64>::init(mem.bytes_mut(), 3).unwrap();
    let _c = ring.take_consumer().unwrap();
    // Safety: the child only does a compare-and-swap on shared memory and exits.
    let pid = unsafe {
        packetfs::shm::proc::fork_child(|| if ring.take_consumer().is_none() { 0 } else { 1 })
    }
    .unwrap();
    let mut kids = packetfs::shm::proc::Children::new();
    kids.push(pid);
    let exits = kids.wait_all(std::time::Duration::from_secs(60));
    assert!(exits[0].1.success());
}
