//! The secure channel's costs, each next to a baseline measured in the same run:
//! 1. seal + open of 1500-byte sealed datagrams per core (AES-256-GCM, ring), next to memcpy
//!    of the same bytes (goal >= 2 M frames/s);
//! 2. the handshake: its CPU on both sides in-process, and a complete handshake over
//!    loopback UDP (init sent -> response read; goal <= 2 ms);
//! 3. 100k forged handshake inits fed to a receiver's Guard: bad mac1 (dropped before any
//!    Diffie-Hellman; goal < 1 core-second), and valid mac1 from keys not authorized (full
//!    Noise work, with the per-source rate limit off and on).
//!
//! `cargo bench --bench secure`. Figures printed, not asserted.

use packetfs::proto::{Endpoint, MemSink, Receiver, ReceiverConfig};
use packetfs::secure::channel::{
    self, ChannelConfig, Initiator, Opener, Responder, Sealer, INIT_NOISE_LEN, RESP_NOISE_LEN,
    TAG_LEN,
};
use packetfs::secure::{AuthorizedSenders, Guard, GuardConfig, Identity, ReceiverKeys, Security};
use packetfs::wire::payload::{Frame, HandshakeInit, Payload};
use packetfs::wire::pfs::{self, FrameType, Packet};
use std::hint::black_box;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time of this thread.
fn cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn keys() -> (Identity, Identity) {
    (
        Identity::from_secret([7; 32]),
        Identity::from_secret([8; 32]),
    )
}

/// A complete handshake in memory: (sender keys, receiver keys).
fn handshake(s: &Identity, r: &Identity) -> (channel::SessionKeys, channel::SessionKeys) {
    let mut m1 = [0u8; INIT_NOISE_LEN];
    let init = Initiator::start(s, &r.public(), &[0; 32], 1, 1, &mut m1).unwrap();
    let resp = Responder::read_init(r, &[0; 32], &m1).unwrap();
    let mut m2 = [0u8; RESP_NOISE_LEN];
    let rk = resp.respond(&mut m2).unwrap();
    (init.finish(&m2).unwrap(), rk)
}

fn seal_open() {
    let (s, r) = keys();
    let (sk, rk) = handshake(&s, &r);
    let t = Instant::now();
    let (mut seal, _): (Sealer, Opener) = sk.into_channel(&ChannelConfig::default(), t);
    let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
    // A 1500-byte sealed datagram: header 32, payload 1452, tag 16.
    let plen = 1500 - pfs::HEADER_LEN - TAG_LEN;
    let mut frame = vec![0u8; 1500];
    for (i, b) in frame.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let n = 200_000u64;
    let start = Instant::now();
    for seq in 0..n {
        let mut p = Packet::new_unchecked(&mut frame[..]);
        p.set_seq(seq);
        p.set_flags(0);
        p.set_tag_len(0);
        p.set_reserved(0);
        p.set_payload_len(plen as u16);
        p.set_frame_type(FrameType::Data);
        let m = seal.seal(t, &mut frame, 1500 - TAG_LEN).unwrap();
        let o = open.open(t, &mut frame[..m]).unwrap();
        black_box(o);
    }
    let el = start.elapsed();
    let per_s = n as f64 / el.as_secs_f64();
    // Baseline, same run: copy the same 1500 bytes twice per frame (a seal and an open each
    // touch the frame once).
    let mut dst = vec![0u8; 1500];
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(black_box(&frame));
        frame.copy_from_slice(black_box(&dst));
    }
    let mc = start.elapsed();
    println!(
        "seal + open, 1500 B sealed datagrams, one core: {:.2} M frames/s ({:.0} ns per seal+open, {:.2} Gbit/s of frames); \
memcpy of the same bytes twice: {:.0} ns per frame ({:.1}x faster); goal >= 2 M/s: {}",
        per_s / 1e6,
        el.as_nanos() as f64 / n as f64,
        per_s * 1500.0 * 8.0 / 1e9,
        mc.as_nanos() as f64 / n as f64,
        el.as_secs_f64() / mc.as_secs_f64(),
        if per_s >= 2e6 { "met" } else { "NOT met" }
    );
}

/// ns per seal + open of a 1452-byte payload with a 32-byte AAD under `$alg` of the crate
/// `$aead` (ring's and aws-lc-rs's `aead` modules have the same API).
macro_rules! seal_open_ns {
    ($aead:path, $alg:expr, $key_len:expr) => {{
        use $aead as aead;
        let key = [3u8; 32];
        let aad = [9u8; 32];
        let n = 200_000u64;
        let mut buf = vec![0u8; 1452 + 16];
        let k = aead::LessSafeKey::new(aead::UnboundKey::new($alg, &key[..$key_len]).unwrap());
        let t = Instant::now();
        for i in 0..n {
            let mut nb = [0u8; 12];
            nb[4..].copy_from_slice(&i.to_le_bytes());
            let tag = k
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nb),
                    aead::Aad::from(aad),
                    &mut buf[..1452],
                )
                .unwrap();
            buf[1452..].copy_from_slice(tag.as_ref());
            black_box(
                k.open_in_place(
                    aead::Nonce::assume_unique_for_key(nb),
                    aead::Aad::from(aad),
                    &mut buf,
                )
                .unwrap(),
            );
        }
        t.elapsed().as_nanos() as f64 / n as f64
    }};
}

/// The AEAD primitive alone: ring's AES-256-GCM (what the channel uses), next to ring's
/// AES-128-GCM and ChaCha20-Poly1305 and (with `--features aws-lc-compare`) aws-lc-rs's
/// AES-256-GCM: seal + open of a 1452-byte payload, same machine, same run.
fn aead_libraries() {
    let ring_ns = seal_open_ns!(ring::aead, &ring::aead::AES_256_GCM, 32);
    let ring128_ns = seal_open_ns!(ring::aead, &ring::aead::AES_128_GCM, 16);
    let chacha_ns = seal_open_ns!(ring::aead, &ring::aead::CHACHA20_POLY1305, 32);
    let m = |ns: f64| 1e3 / ns;
    #[cfg(feature = "aws-lc-compare")]
    let aws = {
        let ns = seal_open_ns!(aws_lc_rs::aead, &aws_lc_rs::aead::AES_256_GCM, 32);
        format!("aws-lc-rs {ns:.0} ns ({:.2} M/s)", m(ns))
    };
    #[cfg(not(feature = "aws-lc-compare"))]
    let aws = "aws-lc-rs not built (--features aws-lc-compare)".to_string();
    println!(
        "seal + open of 1452 B, the primitive alone: ring AES-256-GCM {ring_ns:.0} ns ({:.2} M/s); {aws}; ring AES-128-GCM {ring128_ns:.0} ns ({:.2} M/s); ring ChaCha20-Poly1305 {chacha_ns:.0} ns ({:.2} M/s)",
        m(ring_ns),
        m(ring128_ns),
        m(chacha_ns)
    );
}

fn handshake_costs() {
    let (s, r) = keys();
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        black_box(handshake(&s, &r));
    }
    let cpu = start.elapsed() / n;
    // Over loopback UDP: a receiver thread answers inits as the Guard does (mac1, Noise).
    let rs = UdpSocket::bind("127.0.0.1:0").unwrap();
    let raddr = rs.local_addr().unwrap();
    let ss = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rounds = 200;
    let rpub = r.public();
    let h = std::thread::spawn(move || {
        let r = Identity::from_secret([8; 32]);
        let mk = channel::mac1_key(&r.public());
        let mut buf = [0u8; 2048];
        for _ in 0..rounds {
            let (len, from) = rs.recv_from(&mut buf).unwrap();
            let f = Frame::parse(&buf[..len]).unwrap();
            let Payload::HandshakeInit(init) = f.payload else {
                panic!()
            };
            assert!(channel::ct_eq(
                &channel::mac1(&mk, &buf[..28], init.noise),
                init.mac1
            ));
            let resp = Responder::read_init(&r, &[0; 32], init.noise).unwrap();
            let mut m2 = [0u8; RESP_NOISE_LEN];
            black_box(resp.respond(&mut m2).unwrap());
            rs.send_to(&m2, from).unwrap();
        }
    });
    let mk = channel::mac1_key(&rpub);
    let mut times = Vec::new();
    let mut buf = vec![0u8; 2048];
    for i in 0..rounds {
        let t0 = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        let init = Initiator::start(&s, &rpub, &[0; 32], i as u64 + 1, 5, &mut m1).unwrap();
        let mac = [0u8; 16];
        let hdr = pfs::Repr {
            frame_type: FrameType::HandshakeInit,
            flags: 0,
            session: 5,
            seq: i as u64,
            payload_len: 0,
        };
        let n = Frame::emit(
            hdr,
            &Payload::HandshakeInit(HandshakeInit {
                noise: &m1,
                mac1: &mac,
            }),
            &mut buf,
        );
        let m = channel::mac1(&mk, &buf[..28], &m1);
        buf[pfs::HEADER_LEN + INIT_NOISE_LEN..pfs::HEADER_LEN + INIT_NOISE_LEN + 16]
            .copy_from_slice(&m);
        Packet::new_unchecked(&mut buf[..n]).fill_crc();
        ss.send_to(&buf[..n], raddr).unwrap();
        let mut rb = [0u8; 256];
        let k = ss.recv(&mut rb).unwrap();
        black_box(init.finish(&rb[..k]).unwrap());
        times.push(t0.elapsed());
    }
    h.join().unwrap();
    times.sort();
    let med = times[times.len() / 2];
    println!(
        "handshake: CPU of both sides in one thread {:.0} us; over loopback UDP (init built, sent, answered, response read) median {:.0} us, p99 {:.0} us of {rounds}; goal <= 2 ms: {}",
        cpu.as_secs_f64() * 1e6,
        med.as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6,
        if med <= Duration::from_millis(2) { "met" } else { "NOT met" }
    );
}

/// A receiver Guard over an in-memory receiver, authorizing only `allowed`.
fn guard<'a>(
    r: &Arc<Identity>,
    allowed: &Identity,
    snap: &'a [u8],
    rate_limit: bool,
) -> Guard<Receiver<'a, MemSink>> {
    let line = format!("{} ok\n", allowed.public().to_base64());
    let sec = Security::Receiver(ReceiverKeys {
        identity: r.clone(),
        authorized: Arc::new(AuthorizedSenders::parse(&line, "bench").unwrap()),
        psk: None,
    });
    let mut g = GuardConfig::default();
    if !rate_limit {
        g.init_rate = 1e12;
        g.init_burst = 1e12;
    }
    let inner = Receiver::new(ReceiverConfig::default(), [0; 32], snap, MemSink::new());
    Guard::new(inner, sec, None, g)
}

/// An init from `from` to `to`, with a valid mac1 unless `bad_mac`.
fn init_frame(from: &Identity, to: &Identity, session: u64, bad_mac: bool) -> Vec<u8> {
    let mut m1 = [0u8; INIT_NOISE_LEN];
    Initiator::start(from, &to.public(), &[0; 32], session, session, &mut m1).unwrap();
    let mut buf = vec![0u8; pfs::HEADER_LEN + INIT_NOISE_LEN + 16];
    let hdr = pfs::Repr {
        frame_type: FrameType::HandshakeInit,
        flags: 0,
        session,
        seq: 0,
        payload_len: 0,
    };
    let mac = [0u8; 16];
    let n = Frame::emit(
        hdr,
        &Payload::HandshakeInit(HandshakeInit {
            noise: &m1,
            mac1: &mac,
        }),
        &mut buf,
    );
    let mut m = channel::mac1(&channel::mac1_key(&to.public()), &buf[..28], &m1);
    if bad_mac {
        m[0] ^= 1;
    }
    buf[pfs::HEADER_LEN + INIT_NOISE_LEN..n].copy_from_slice(&m);
    Packet::new_unchecked(&mut buf[..n]).fill_crc();
    buf.truncate(n);
    buf
}

fn forged_inits() {
    let (_, r) = keys();
    let r = Arc::new(r);
    let friend = Identity::from_secret([9; 32]);
    let snap = vec![0u8; 4096];
    let n = 100_000usize;
    // Distinct forged inits (the attacker's work, not timed): 1000 strangers' keys, each
    // init used 100 times (the receiver redoes the work for every copy: a stranger's
    // timestamp is never recorded).
    let strangers: Vec<Identity> = (0..1000u32)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = 0x55;
            Identity::from_secret(k)
        })
        .collect();
    let valid: Vec<Vec<u8>> = strangers
        .iter()
        .enumerate()
        .map(|(i, s)| init_frame(s, &r, i as u64 + 1, false))
        .collect();
    let bad: Vec<Vec<u8>> = strangers
        .iter()
        .enumerate()
        .map(|(i, s)| init_frame(s, &r, i as u64 + 1, true))
        .collect();
    let now = Instant::now();
    let run = |frames: &[Vec<u8>], rate_limit: bool| {
        let mut g = guard(&r, &friend, &snap, rate_limit);
        let mut b = vec![0u8; 2048];
        let (c0, t0) = (cpu_time(), Instant::now());
        for i in 0..n {
            let f = &frames[i % frames.len()];
            b[..f.len()].copy_from_slice(f);
            g.note_source("10.0.0.9".parse().unwrap());
            black_box(g.handle_datagram(now, &mut b[..f.len()]));
        }
        let (cpu, wall) = (cpu_time() - c0, t0.elapsed());
        let mut out = [0u8; 2048];
        let answered = g.poll_transmit(now, &mut out).is_some();
        (cpu, wall, g.sec_stats(), answered)
    };
    let (cpu, wall, st, ans) = run(&bad, true);
    println!(
        "100k inits with a bad mac1: {:.3} core-seconds ({:.0} ns each, wall {:.3} s); mac1 failures {}; answered: {ans}; goal < 1 core-second: {}",
        cpu.as_secs_f64(),
        cpu.as_nanos() as f64 / n as f64,
        wall.as_secs_f64(),
        st.mac1_failures,
        if cpu < Duration::from_secs(1) { "met" } else { "NOT met" }
    );
    let (cpu, wall, st, ans) = run(&valid, false);
    println!(
        "100k inits with a valid mac1 from unknown keys, no rate limit: {:.3} core-seconds ({:.1} us each: Noise DH work, wall {:.3} s); refused {}; answered: {ans}",
        cpu.as_secs_f64(),
        cpu.as_nanos() as f64 / n as f64 / 1e3,
        wall.as_secs_f64(),
        st.refused
    );
    let (cpu, wall, st, ans) = run(&valid, true);
    println!(
        "the same from one source with the default rate limit (20/s, burst 40): {:.3} core-seconds (wall {:.3} s); rate-limited {}, refused {}; answered: {ans}",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        st.rate_limited,
        st.refused
    );
}

fn main() {
    println!(
        "secure channel benchmarks ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for _ in 0..3 {
        aead_libraries();
    }
    seal_open();
    handshake_costs();
    forged_inits();
}
