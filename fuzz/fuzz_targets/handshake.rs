//! The handshake on untrusted bytes: a receiver's Guard (authorizing one key) and a sender's
//! Guard (expecting one receiver key) fed arbitrary datagrams, plus the views and the Noise
//! readers directly. Properties: nothing panics; a receiver never answers bytes that were not
//! a valid init from its authorized sender (the fuzzer cannot forge one); a forged response
//! never completes the sender's handshake; sealed frames never reach a Guard without keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use packetfs::proto::{Endpoint, MemSink, Receiver, ReceiverConfig, Sender, SenderConfig};
use packetfs::secure::channel::{Responder, INIT_NOISE_LEN};
use packetfs::secure::{
    AuthorizedSenders, Guard, GuardConfig, Identity, ReceiverKeys, Security, SenderKeys,
};
use packetfs::wire::payload::{HandshakeInit, HandshakeResp};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Keys {
    me: Arc<Identity>,
    friend: Arc<Identity>,
    authorized: Arc<AuthorizedSenders>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let me = Arc::new(Identity::from_secret([2; 32]));
        let friend = Arc::new(Identity::from_secret([1; 32]));
        let line = format!("{} friend\n", friend.public().to_base64());
        let authorized = Arc::new(AuthorizedSenders::parse(&line, "fuzz").unwrap());
        Keys { me, friend, authorized }
    })
}

/// The length-prefixed datagrams of `data`.
fn datagrams(mut rest: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    std::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let d = rest[2..2 + n].to_vec();
        rest = &rest[2 + n..];
        Some(d)
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&side, data)) = input.split_first() else {
        return;
    };
    let k = keys();
    let me = &k.me;
    let friend = &k.friend;
    let t0 = Instant::now();
    let mut out = vec![0u8; 2048];
    if side & 1 == 1 {
        // A sender's Guard waiting for a response.
        let tx = Sender::new(SenderConfig::default(), [0; 32], Vec::new()).unwrap();
        let ssec = Security::Sender(SenderKeys {
            identity: friend.clone(),
            receiver: me.public(),
            psk: None,
        });
        let mut s = Guard::new(tx, ssec, Some(1), GuardConfig::default());
        let _ = s.poll_transmit(t0, &mut out); // its init (discarded)
        for (step, mut d) in datagrams(data).enumerate() {
            let now = t0 + Duration::from_millis(step as u64 + 1);
            s.handle_datagram(now, &mut d);
            assert!(!s.is_established(), "a forged response completed the handshake");
        }
        return;
    }
    // The views and the responder's reader on the raw bytes.
    let _ = HandshakeInit::parse(data);
    let _ = HandshakeResp::parse(data);
    if data.len() >= INIT_NOISE_LEN {
        let _ = Responder::read_init(&me, &[0; 32], &data[..INIT_NOISE_LEN]);
    }
    // A receiver's Guard: datagrams split by a length prefix.
    let snap = [0u8; 64];
    let rx = Receiver::new(ReceiverConfig::default(), [0; 32], &snap, MemSink::new());
    let sec = Security::Receiver(ReceiverKeys {
        identity: me.clone(),
        authorized: k.authorized.clone(),
        psk: None,
    });
    let mut g = Guard::new(rx, sec, None, GuardConfig::default());
    for (step, mut d) in datagrams(data).enumerate() {
        let now = t0 + Duration::from_millis(step as u64 + 1);
        g.handle_datagram(now, &mut d);
        assert!(g.poll_transmit(now, &mut out).is_none(), "answered a forged init");
    }
    assert_eq!(g.sec_stats().handshakes, 0);
});
