//! The sealed channel (AES-256-GCM frames with key phases and a replay window) against a
//! forger. The input is a script: each step seals a frame (payload and counter from the input)
//! and may flip one bit of it, rewrite its counter or key phase, or replay an earlier frame,
//! before the opener sees it. Properties: nothing panics; a frame opens only when it is
//! exactly what the sealer produced and its counter was not opened before; an opened payload
//! equals what was sealed; a failed open leaves the header and the tag as they were.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::secure::channel::{ChannelConfig, Opener, Sealer, TAG_LEN};
use packetfs::wire::pfs::{FrameType, Packet, Repr, HEADER_LEN};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let cfg = ChannelConfig {
        rekey_packets: 4,
        rekey_interval: Duration::from_secs(3600),
        prev_key_grace: Duration::from_secs(5),
    };
    let t0 = Instant::now();
    let key = [7u8; 32];
    let mut sealer = Sealer::new(&key, cfg.clone(), t0);
    let mut opener = Opener::new(&key, cfg);
    let mut seq = 0u64;
    let mut opened: HashSet<u64> = HashSet::new();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut plain: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 4 {
        let (op, arg, n) = (rest[0], rest[1], (rest[2] as usize).min(rest.len() - 4));
        let payload = &rest[4..4 + n];
        let skip = rest[3] as u64 % 8;
        rest = &rest[4 + n..];
        step += 1;
        let now = t0 + Duration::from_millis(step);
        seq += skip;
        let mut buf = vec![0u8; HEADER_LEN + n + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + n].copy_from_slice(payload);
        let repr = Repr {
            frame_type: FrameType::Data,
            flags: 0,
            session: 1,
            seq,
            payload_len: n as u16,
        };
        repr.emit_header(&mut Packet::new_unchecked(&mut buf[..]));
        let len = sealer.seal(now, &mut buf, HEADER_LEN + n).expect("seal");
        assert_eq!(len, buf.len());
        sent.push(buf.clone());
        plain.push(payload.to_vec());
        let this_seq = seq;
        seq += 1;
        let (mut frame, genuine, fseq) = match op % 4 {
            0 => (buf, true, this_seq),
            1 => {
                let mut f = buf;
                let i = (arg as usize * 7 + step as usize) % f.len();
                f[i] ^= 1 << (arg % 8);
                (f, false, this_seq)
            }
            2 => {
                let k = arg as usize % sent.len();
                let f = sent[k].clone();
                let s = Packet::new_unchecked(&f[..]).seq();
                (f, true, s)
            }
            _ => {
                let mut f = buf;
                let mut p = Packet::new_unchecked(&mut f[..]);
                p.set_seq(this_seq ^ (1 + arg as u64));
                (f, false, 0)
            }
        };
        let before = frame.clone();
        match opener.open(now, &mut frame) {
            Ok(n2) => {
                assert!(genuine, "a forged frame opened");
                assert!(opened.insert(fseq), "a replayed counter opened twice");
                assert_eq!(n2, frame.len());
                let plen = Packet::new_unchecked(&frame[..]).payload_len() as usize;
                let k = sent
                    .iter()
                    .position(|s| Packet::new_unchecked(&s[..]).seq() == fseq)
                    .expect("sent");
                assert_eq!(&frame[HEADER_LEN..HEADER_LEN + plen], &plain[k][..], "payload");
            }
            Err(_) => {
                // the payload may be scratch after a tag failure; the header and tag are not
                let tag = frame.len() - TAG_LEN;
                assert_eq!(frame[..HEADER_LEN], before[..HEADER_LEN], "header changed");
                assert_eq!(frame[tag..], before[tag..], "tag changed");
            }
        }
    }
});
