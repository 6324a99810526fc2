//! The secure channel, sans-IO and without a clock (time is passed in): the Noise IKpsk2
//! handshake and the per-frame AEAD that follows it.
//!
//! * Handshake: `Noise_IKpsk2_25519_AESGCM_BLAKE2s` (snow). The sender is the initiator (it
//!   knows the receiver's static key); the receiver responds. The init's payload carries a
//!   timestamp (ns; the receiver refuses one not newer than the last it accepted from that
//!   sender) and the session id. [`mac1`] (keyed BLAKE3 under a key derived from the
//!   receiver's public key) lets the receiver drop forged inits before any Diffie-Hellman.
//! * Keys: the handshake's two split keys, one per direction; each direction's IV is
//!   derived from its key. Nonce = the frame's sequence number (a per-direction packet
//!   counter, never a file offset) XOR the IV; the 32-byte PacketFS header is the
//!   associated data; the 16-byte tag follows the payload (the header's `tag len`).
//! * Rekey: the sender of a direction moves to the next key (BLAKE3 `derive_key` of the
//!   current one) after [`ChannelConfig::rekey_packets`] frames or
//!   [`ChannelConfig::rekey_interval`], flipping the header's key-phase bit; the opener
//!   keeps the previous key for [`ChannelConfig::prev_key_grace`] to open late frames.
//! * Replay: a [`ReplayWindow`] per direction, checked before and updated only after the
//!   tag verifies.

use super::keys::{Identity, PublicKey};
use super::window::ReplayWindow;
use crate::wire::pfs::{self, Packet};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_AESGCM_BLAKE2s";
/// Bytes of the AEAD tag after a sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes of mac1 after the init's Noise message.
pub const MAC_LEN: usize = 16;
/// The init's Noise payload: timestamp (ns) and session id, little-endian.
pub const INIT_PAYLOAD_LEN: usize = 16;
/// Noise message 1 of IK: e (32), s encrypted (32 + 16), payload encrypted (16 + 16).
pub const INIT_NOISE_LEN: usize = 32 + 32 + TAG_LEN + INIT_PAYLOAD_LEN + TAG_LEN;
/// Noise message 2: e (32) and an empty payload's tag.
pub const RESP_NOISE_LEN: usize = 32 + TAG_LEN;

const MAC1_CONTEXT: &str = "pfs mac1 v3";
const IV_CONTEXT: &str = "pfs iv v3";
const REKEY_CONTEXT: &str = "pfs rekey v3";

/// What can go wrong in the channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("the handshake failed: {0}")]
    Noise(String),
    #[error("the handshake message has the wrong length")]
    Length,
    #[error("the init's payload does not match its header")]
    Binding,
    #[error("not a sealed frame")]
    NotSealed,
    #[error("the frame counter was seen before or is too old")]
    Replay,
    #[error("the authentication tag did not verify")]
    Tag,
    #[error("the frame does not fit its buffer")]
    Truncated,
    #[error("the packet counter of this direction was reused")]
    CounterReuse,
}

fn noise(e: snow::Error) -> ChannelError {
    ChannelError::Noise(e.to_string())
}

/// Timers and limits of the channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Frames sealed under one key before the next key (AES-GCM's confidentiality limit per
    /// key is 2^23 full-size packets, RFC 9001 6.6; this stays well below it).
    pub rekey_packets: u64,
    /// The longest one key seals.
    pub rekey_interval: Duration,
    /// How long an opener keeps the previous key after the peer moved on.
    pub prev_key_grace: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            rekey_packets: 1 << 22,
            rekey_interval: Duration::from_secs(120),
            prev_key_grace: Duration::from_secs(5),
        }
    }
}

/// The mac1 key of a receiver: BLAKE3 `derive_key("pfs mac1 v3", its public key)`.
pub fn mac1_key(receiver: &PublicKey) -> [u8; 32] {
    blake3::derive_key(MAC1_CONTEXT, receiver.as_bytes())
}

/// mac1 over `covered` (the init's header up to its CRC, then its Noise message).
pub fn mac1(key: &[u8; 32], header: &[u8], noise_msg: &[u8]) -> [u8; MAC_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(header);
    h.update(noise_msg);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..MAC_LEN]);
    out
}

/// Compare in constant time.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn builder<'a>(psk: &'a [u8; 32]) -> Result<snow::Builder<'a>, ChannelError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(noise)?;
    snow::Builder::new(params).psk(2, psk).map_err(noise)
}

/// The two directions' raw keys once a handshake completed.
pub struct SessionKeys {
    /// What this side seals with, and what it opens with.
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.send.zeroize();
        self.recv.zeroize();
    }
}

impl SessionKeys {
    /// The sealer and opener for these keys.
    pub fn into_channel(self, cfg: &ChannelConfig, now: Instant) -> (Sealer, Opener) {
        (
            Sealer::new(&self.send, cfg.clone(), now),
            Opener::new(&self.recv, cfg.clone()),
        )
    }
}

/// The sender's half of the handshake.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Start a handshake towards `receiver`; writes Noise message 1 (timestamp and session
    /// id inside) into `out` ([`INIT_NOISE_LEN`] bytes).
    pub fn start(
        me: &Identity,
        receiver: &PublicKey,
        psk: &[u8; 32],
        timestamp_ns: u64,
        session: u64,
        out: &mut [u8; INIT_NOISE_LEN],
    ) -> Result<Initiator, ChannelError> {
        let mut hs = builder(psk)?
            .local_private_key(me.secret())
            .map_err(noise)?
            .remote_public_key(receiver.as_bytes())
            .map_err(noise)?
            .build_initiator()
            .map_err(noise)?;
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        payload[..8].copy_from_slice(&timestamp_ns.to_le_bytes());
        payload[8..].copy_from_slice(&session.to_le_bytes());
        let n = hs.write_message(&payload, out).map_err(noise)?;
        if n != INIT_NOISE_LEN {
            return Err(ChannelError::Length);
        }
        Ok(Initiator { hs })
    }

    /// Read the receiver's message 2: the handshake is complete, here are the keys.
    pub fn finish(mut self, resp: &[u8]) -> Result<SessionKeys, ChannelError> {
        if resp.len() != RESP_NOISE_LEN {
            return Err(ChannelError::Length);
        }
        let mut payload = [0u8; 64];
        let n = self.hs.read_message(resp, &mut payload).map_err(noise)?;
        if n != 0 || !self.hs.is_handshake_finished() {
            return Err(ChannelError::Length);
        }
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok(SessionKeys {
            send: i2r,
            recv: r2i,
        })
    }
}

/// A receiver that has read a valid init: who sent it, and what it claims.
pub struct Responder {
    hs: snow::HandshakeState,
    /// The sender's static key (proved by the init).
    pub peer: PublicKey,
    pub timestamp_ns: u64,
    pub session: u64,
}

impl Responder {
    /// Read Noise message 1 (after mac1 was checked: this does the Diffie-Hellman work).
    pub fn read_init(me: &Identity, psk: &[u8; 32], msg: &[u8]) -> Result<Responder, ChannelError> {
        if msg.len() != INIT_NOISE_LEN {
            return Err(ChannelError::Length);
        }
        let mut hs = builder(psk)?
            .local_private_key(me.secret())
            .map_err(noise)?
            .build_responder()
            .map_err(noise)?;
        let mut payload = [0u8; 64];
        let n = hs.read_message(msg, &mut payload).map_err(noise)?;
        if n != INIT_PAYLOAD_LEN {
            return Err(ChannelError::Length);
        }
        let peer: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(ChannelError::Length)?;
        Ok(Responder {
            hs,
            peer: PublicKey(peer),
            timestamp_ns: u64::from_le_bytes(payload[..8].try_into().unwrap()),
            session: u64::from_le_bytes(payload[8..16].try_into().unwrap()),
        })
    }

    /// Answer: write Noise message 2 into `out` and take the keys.
    pub fn respond(mut self, out: &mut [u8; RESP_NOISE_LEN]) -> Result<SessionKeys, ChannelError> {
        let n = self.hs.write_message(&[], out).map_err(noise)?;
        if n != RESP_NOISE_LEN || !self.hs.is_handshake_finished() {
            return Err(ChannelError::Length);
        }
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok(SessionKeys {
            send: r2i,
            recv: i2r,
        })
    }
}

/// The checked header view of a sealed datagram: `Truncated` when no header fits,
/// `NotSealed` without the sealed flag or with another tag length.
pub(crate) fn sealed(buf: &[u8]) -> Result<Packet<&[u8]>, ChannelError> {
    let p = Packet::new_checked(buf).map_err(|_| ChannelError::Truncated)?;
    if p.flags() & pfs::FLAG_SEALED == 0 || p.tag_len() as usize != TAG_LEN {
        return Err(ChannelError::NotSealed);
    }
    Ok(p)
}

/// One phase's AEAD key and its direction's IV: what seals or opens a frame. Shared
/// (`Arc`) with the threads that seal or open off the session thread (the AF_XDP workers):
/// ring's [`LessSafeKey`] is `Send + Sync`, and the nonce comes from the frame's own counter.
pub struct AeadKey {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl AeadKey {
    /// Seal a datagram whose header [`Sealer::prepare`] wrote (sealed flag, tag length, key
    /// phase, CRC zeroed): `datagram` is the header, the plaintext payload and [`TAG_LEN`]
    /// bytes for the tag, exactly. The payload is encrypted in place and the tag written.
    pub fn seal_prepared(&self, datagram: &mut [u8]) -> Result<(), ChannelError> {
        let p = sealed(&*datagram)?;
        let (seq, plen) = (p.seq(), p.payload_len() as usize);
        if datagram.len() != pfs::HEADER_LEN + plen + TAG_LEN {
            return Err(ChannelError::Truncated);
        }
        let (hdr, rest) = datagram.split_at_mut(pfs::HEADER_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&self.iv, seq), Aad::from(&*hdr), &mut rest[..plen])
            .map_err(|_| ChannelError::Tag)?;
        rest[plen..].copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Open the sealed datagram `buf` (header, payload, tag; checked) in place with this
    /// key alone: no replay window, no key phase. Returns the datagram's length.
    pub fn open_only(&self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        let p = sealed(&*buf)?;
        let (seq, plen, total) = (p.seq(), p.payload_len() as usize, p.total_len());
        let (hdr, rest) = buf[..total].split_at_mut(pfs::HEADER_LEN);
        self.key
            .open_in_place(
                nonce(&self.iv, seq),
                Aad::from(&*hdr),
                &mut rest[..plen + TAG_LEN],
            )
            .map_err(|_| ChannelError::Tag)?;
        Ok(total)
    }
}

/// One key of one direction: the raw bytes (to derive the next) and ring's key.
struct PhaseKey {
    raw: [u8; 32],
    key: Arc<AeadKey>,
}

impl Drop for PhaseKey {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

impl PhaseKey {
    fn new(raw: &[u8; 32], iv: [u8; 12]) -> PhaseKey {
        let key = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, raw).expect("32-byte key"));
        PhaseKey {
            raw: *raw,
            key: Arc::new(AeadKey { key, iv }),
        }
    }
    fn next(&self) -> PhaseKey {
        let mut raw = blake3::derive_key(REKEY_CONTEXT, &self.raw);
        let k = PhaseKey::new(&raw, self.key.iv);
        raw.zeroize();
        k
    }
}

fn iv_for(raw: &[u8; 32]) -> [u8; 12] {
    let d = blake3::derive_key(IV_CONTEXT, raw);
    d[..12].try_into().unwrap()
}

fn nonce(iv: &[u8; 12], seq: u64) -> Nonce {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_le_bytes()) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(n)
}

/// Seals one direction's frames in place.
pub struct Sealer {
    cfg: ChannelConfig,
    key: PhaseKey,
    phase: u8,
    in_phase: u64,
    phase_start: Instant,
    /// The next counter allowed (counters only grow: a nonce is never reused).
    next_seq: u64,
    /// Key phases moved to so far.
    pub rekeys: u64,
}

impl Sealer {
    pub fn new(raw: &[u8; 32], cfg: ChannelConfig, now: Instant) -> Sealer {
        Sealer {
            cfg,
            key: PhaseKey::new(raw, iv_for(raw)),
            phase: 0,
            in_phase: 0,
            phase_start: now,
            next_seq: 0,
            rekeys: 0,
        }
    }

    /// Seal the unsealed PacketFS datagram `buf[..len]` (header, payload) in place: the
    /// header gets the sealed flag, tag length and key phase, its CRC field is zeroed (the
    /// tag covers every byte), the payload is encrypted and the tag is written after it.
    /// `buf` needs [`TAG_LEN`] bytes of room past `len`. Returns the sealed length.
    /// ([`Sealer::prepare`], then [`AeadKey::seal_prepared`] on the same thread.)
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, ChannelError> {
        let (n, key) = self.prepare(now, buf, len)?;
        key.seal_prepared(&mut buf[..n])?;
        Ok(n)
    }

    /// The session thread's half of [`Sealer::seal`]: takes the frame's counter (refusing
    /// one not above the last), moves to the next key phase when due and writes the sealed
    /// header (flag, tag length, phase, CRC zeroed); the payload stays plaintext. Returns
    /// the sealed length and the phase's key: [`AeadKey::seal_prepared`] on `buf[..n]`
    /// finishes the frame, on any thread, before it is sent.
    pub fn prepare(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Result<(usize, Arc<AeadKey>), ChannelError> {
        if len < pfs::HEADER_LEN || buf.len() < len + TAG_LEN {
            return Err(ChannelError::Truncated);
        }
        let mut p = Packet::new_unchecked(&mut buf[..len]);
        let seq = p.seq();
        if seq < self.next_seq {
            return Err(ChannelError::CounterReuse);
        }
        let plen = p.payload_len() as usize;
        if pfs::HEADER_LEN + plen != len {
            return Err(ChannelError::Truncated);
        }
        if self.in_phase >= self.cfg.rekey_packets
            || now.saturating_duration_since(self.phase_start) >= self.cfg.rekey_interval
        {
            self.key = self.key.next();
            self.phase ^= 1;
            self.in_phase = 0;
            self.phase_start = now;
            self.rekeys += 1;
        }
        p.set_flags(p.flags() | pfs::FLAG_SEALED);
        p.set_tag_len(TAG_LEN as u8);
        p.set_reserved(self.phase);
        p.set_crc(0);
        self.next_seq = seq + 1;
        self.in_phase += 1;
        Ok((len + TAG_LEN, self.key.key.clone()))
    }
}

/// Opens one direction's frames in place.
pub struct Opener {
    cfg: ChannelConfig,
    cur: PhaseKey,
    phase: u8,
    /// The lowest counter opened under the current phase (a frame of the other phase below
    /// it is late, from the previous key; above it, from the next).
    phase_first: u64,
    prev: Option<(PhaseKey, Instant)>,
    /// The next phase's key, derived once at the first frame that names it (a forged frame
    /// of the other phase then costs no key derivation and no AES key schedule).
    next: Option<Box<PhaseKey>>,
    window: ReplayWindow,
    /// Key phases the peer moved to so far.
    pub rekeys: u64,
}

impl Opener {
    pub fn new(raw: &[u8; 32], cfg: ChannelConfig) -> Opener {
        Opener {
            cfg,
            cur: PhaseKey::new(raw, iv_for(raw)),
            phase: 0,
            phase_first: 0,
            prev: None,
            next: None,
            window: ReplayWindow::new(),
            rekeys: 0,
        }
    }

    /// Open the sealed datagram `buf` in place. On success the payload is plaintext (the
    /// header and tag stay as they were) and its counter is recorded; returns the datagram's
    /// length (header, payload, tag). On failure no counter is recorded and no key phase
    /// moves, the header and tag stay as they were, and after a tag failure the payload
    /// bytes are unspecified (ring's `open_in_place` leaves them so): the frame is dropped.
    pub fn open(&mut self, now: Instant, buf: &mut [u8]) -> Result<usize, ChannelError> {
        let p = sealed(&*buf)?;
        let phase = p.reserved();
        if phase > 1 {
            return Err(ChannelError::NotSealed);
        }
        let seq = p.seq();
        let total = p.total_len();
        if !self.window.check(seq) {
            return Err(ChannelError::Replay);
        }
        enum Which {
            Cur,
            Prev,
            Next,
        }
        let which = if phase == self.phase {
            Which::Cur
        } else if seq < self.phase_first
            && self.prev.as_ref().is_some_and(|(_, until)| now < *until)
        {
            Which::Prev
        } else {
            Which::Next
        };
        let key = match &which {
            Which::Cur => &self.cur.key,
            Which::Prev => &self.prev.as_ref().unwrap().0.key,
            Which::Next => {
                let cur = &self.cur;
                &self.next.get_or_insert_with(|| Box::new(cur.next())).key
            }
        };
        // On a tag failure ring leaves the payload bytes unspecified: the frame is dropped.
        key.open_only(buf)?;
        self.window.update(seq);
        if let Which::Next = which {
            let k = self.next.take().expect("derived above");
            let old = std::mem::replace(&mut self.cur, *k);
            self.prev = Some((old, now + self.cfg.prev_key_grace));
            self.phase = phase;
            self.phase_first = seq;
            self.rekeys += 1;
        }
        if self.prev.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.prev = None;
        }
        Ok(total)
    }

    /// The current phase's key, for opening off the session thread
    /// ([`AeadKey::open_only`]), with its epoch (the phases moved to so far,
    /// [`Opener::rekeys`]), its phase bit and the lowest counter opened in it so far.
    pub fn current(&self) -> (u64, u8, u64, Arc<AeadKey>) {
        (
            self.rekeys,
            self.phase,
            self.phase_first,
            self.cur.key.clone(),
        )
    }

    /// The session thread's half of [`Opener::open`] for a frame another thread opened
    /// with the key of `epoch` (from [`Opener::current`]; its tag verified): what `open`
    /// would decide for it, with the same counts. The replay window is checked and the
    /// counter recorded; a frame of the epoch before the current one is taken only where
    /// `open` would have used the previous key (below the current phase's first counter,
    /// within the grace); any other epoch or phase is a tag failure, as `open` would have
    /// tried another key. Returns the datagram's length.
    pub fn accept_opened(
        &mut self,
        now: Instant,
        buf: &[u8],
        epoch: u64,
    ) -> Result<usize, ChannelError> {
        let p = sealed(buf)?;
        let (phase, seq, total) = (p.reserved(), p.seq(), p.total_len());
        if phase > 1 {
            return Err(ChannelError::NotSealed);
        }
        if !self.window.check(seq) {
            return Err(ChannelError::Replay);
        }
        let ok = if epoch == self.rekeys {
            phase == self.phase
        } else {
            epoch + 1 == self.rekeys
                && phase != self.phase
                && seq < self.phase_first
                && self.prev.as_ref().is_some_and(|(_, until)| now < *until)
        };
        if !ok {
            return Err(ChannelError::Tag);
        }
        self.window.update(seq);
        if self.prev.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.prev = None;
        }
        Ok(total)
    }

    /// The session thread's half of [`Opener::open`] for a sealed frame of the current
    /// phase whose tag another thread found wrong: [`ChannelError::Replay`] where `open`
    /// would have refused its counter before opening, else [`ChannelError::Tag`]. Nothing
    /// is recorded.
    pub fn refused_opened(&self, buf: &[u8]) -> ChannelError {
        match Packet::new_checked(buf) {
            Ok(p) if !self.window.check(p.seq()) => ChannelError::Replay,
            Ok(_) => ChannelError::Tag,
            Err(_) => ChannelError::Truncated,
        }
    }
}

// The channel's lengths are the wire's.
const _: () = assert!(INIT_NOISE_LEN == crate::wire::payload::INIT_NOISE_LEN);
const _: () = assert!(MAC_LEN == crate::wire::payload::INIT_MAC_LEN);
const _: () = assert!(RESP_NOISE_LEN == crate::wire::payload::RESP_NOISE_LEN);
const _: () = assert!(TAG_LEN == crate::wire::pfs::SEALED_TAG_LEN as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::{Frame, Payload, Probe};

    fn ids() -> (Identity, Identity) {
        (
            Identity::from_secret([1; 32]),
            Identity::from_secret([2; 32]),
        )
    }

    fn handshake(
        psk_s: [u8; 32],
        psk_r: [u8; 32],
    ) -> Result<(SessionKeys, SessionKeys), ChannelError> {
        let (s, r) = ids();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        let init = Initiator::start(&s, &r.public(), &psk_s, 42, 7, &mut m1)?;
        let resp = Responder::read_init(&r, &psk_r, &m1)?;
        assert_eq!(resp.peer, s.public());
        assert_eq!((resp.timestamp_ns, resp.session), (42, 7));
        let mut m2 = [0u8; RESP_NOISE_LEN];
        let rk = resp.respond(&mut m2)?;
        let sk = init.finish(&m2)?;
        Ok((sk, rk))
    }

    fn frame(seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; 256];
        let p = Payload::Probe(Probe {
            sent: seq * 1000 + 1,
            srtt_us: 5,
            flags: 0,
        });
        let hdr = pfs::Repr {
            frame_type: pfs::FrameType::Probe,
            flags: 0,
            session: 9,
            seq,
            payload_len: 0,
        };
        let n = Frame::emit(hdr, &p, &mut b);
        b.truncate(n + TAG_LEN);
        b
    }

    #[test]
    fn handshake_agrees_and_frames_round_trip() {
        let (sk, rk) = handshake([0; 32], [0; 32]).unwrap();
        assert_eq!(sk.send, rk.recv);
        assert_eq!(sk.recv, rk.send);
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&ChannelConfig::default(), t);
        let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
        for seq in 0..10 {
            let plain = frame(seq);
            let mut b = plain.clone();
            let n = seal.seal(t, &mut b, plain.len() - TAG_LEN).unwrap();
            assert_eq!(n, b.len());
            assert_ne!(
                b[32..n - TAG_LEN],
                plain[32..n - TAG_LEN],
                "payload is encrypted"
            );
            assert_eq!(open.open(t, &mut b).unwrap(), n);
            assert_eq!(b[32..n - TAG_LEN], plain[32..n - TAG_LEN]);
            let f = Frame::parse(&b).unwrap();
            assert!(matches!(f.payload, Payload::Probe(p) if p.sent == seq * 1000 + 1));
        }
    }

    /// From the `sealed` fuzz target's first finding: after a tag failure ring leaves the
    /// payload bytes unspecified (the doc said nothing changes): the header and tag must stay,
    /// no counter is recorded, and the genuine frame with that counter still opens.
    #[test]
    fn a_failed_open_keeps_header_tag_and_counter() {
        let (sk, rk) = handshake([4; 32], [4; 32]).unwrap();
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&ChannelConfig::default(), t);
        let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
        let plain = frame(0);
        let mut genuine = plain.clone();
        let n = seal.seal(t, &mut genuine, plain.len() - TAG_LEN).unwrap();
        let mut forged = genuine.clone();
        forged[pfs::HEADER_LEN] ^= 1;
        let before = forged.clone();
        assert!(matches!(open.open(t, &mut forged), Err(ChannelError::Tag)));
        assert_eq!(forged[..pfs::HEADER_LEN], before[..pfs::HEADER_LEN]);
        assert_eq!(forged[n - TAG_LEN..], before[n - TAG_LEN..]);
        assert_eq!(open.open(t, &mut genuine).unwrap(), n);
        assert_eq!(
            genuine[pfs::HEADER_LEN..n - TAG_LEN],
            plain[pfs::HEADER_LEN..n - TAG_LEN]
        );
    }

    #[test]
    fn different_psk_fails() {
        assert!(handshake([0; 32], [1; 32]).is_err());
    }

    #[test]
    fn tamper_replay_and_reuse() {
        let (sk, rk) = handshake([3; 32], [3; 32]).unwrap();
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&ChannelConfig::default(), t);
        let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
        let plain = frame(0);
        let mut b = plain.clone();
        let n = seal.seal(t, &mut b, plain.len() - TAG_LEN).unwrap();
        // Every byte counts: the header (CRC field included, zero on the wire) is the
        // associated data, the payload and the tag are checked by the tag.
        for i in 0..n {
            let mut c = b.clone();
            c[i] ^= 0x04;
            assert!(
                open.open(t, &mut c).is_err(),
                "bit flip at byte {i} accepted"
            );
        }
        let mut ok = b.clone();
        open.open(t, &mut ok).unwrap();
        let mut again = b.clone();
        assert_eq!(open.open(t, &mut again), Err(ChannelError::Replay));
        // The sealer refuses to reuse a counter.
        let mut d = plain.clone();
        assert_eq!(
            seal.seal(t, &mut d, plain.len() - TAG_LEN),
            Err(ChannelError::CounterReuse)
        );
    }

    #[test]
    fn rekey_after_packets_with_late_frames() {
        let (sk, rk) = handshake([0; 32], [0; 32]).unwrap();
        let cfg = ChannelConfig {
            rekey_packets: 4,
            ..Default::default()
        };
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&cfg, t);
        let (_, mut open) = rk.into_channel(&cfg, t);
        let sealed: Vec<Vec<u8>> = (0..20)
            .map(|s| {
                let mut b = frame(s);
                let l = b.len() - TAG_LEN;
                seal.seal(t, &mut b, l).unwrap();
                b
            })
            .collect();
        assert_eq!(seal.rekeys, 4);
        // Deliver with frame 3 (phase 0) late, after phase 1 began.
        let order = [
            0, 1, 2, 4, 5, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
        ];
        for i in order {
            let mut b = sealed[i].clone();
            open.open(t, &mut b)
                .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        }
        assert_eq!(open.rekeys, 4);
    }

    #[test]
    fn rekey_after_time() {
        let (sk, rk) = handshake([0; 32], [0; 32]).unwrap();
        let cfg = ChannelConfig::default();
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&cfg, t);
        let (_, mut open) = rk.into_channel(&cfg, t);
        for (s, dt) in [(0u64, 0u64), (1, 60), (2, 121), (3, 200), (4, 242)] {
            let now = t + Duration::from_secs(dt);
            let mut b = frame(s);
            let l = b.len() - TAG_LEN;
            seal.seal(now, &mut b, l).unwrap();
            open.open(now, &mut b).unwrap();
        }
        assert_eq!((seal.rekeys, open.rekeys), (2, 2));
    }

    /// The sealing split in two (counter and header on this thread, the AEAD on another
    /// with the phase's key) gives the bytes `seal` gives, and each path opens the other's.
    #[test]
    fn split_seal_and_open_match_the_whole_path() {
        let (sk, rk) = handshake([5; 32], [5; 32]).unwrap();
        let t = Instant::now();
        let raw = sk.send;
        let (mut seal, _) = sk.into_channel(&ChannelConfig::default(), t);
        let mut seal2 = Sealer::new(&raw, ChannelConfig::default(), t);
        let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
        let mut open2 = Opener::new(&raw, ChannelConfig::default());
        for seq in 0..8 {
            let plain = frame(seq);
            let l = plain.len() - TAG_LEN;
            let mut whole = plain.clone();
            seal.seal(t, &mut whole, l).unwrap();
            let mut split = plain.clone();
            let (n, key) = seal2.prepare(t, &mut split, l).unwrap();
            assert_eq!(split[pfs::HEADER_LEN..l], plain[pfs::HEADER_LEN..l]);
            let split = std::thread::spawn(move || {
                key.seal_prepared(&mut split[..n]).unwrap();
                split
            })
            .join()
            .unwrap();
            assert_eq!(whole, split, "frame {seq}");
            // Split sealed, opened whole.
            let mut a = split.clone();
            assert_eq!(open.open(t, &mut a).unwrap(), n);
            assert_eq!(a[pfs::HEADER_LEN..l], plain[pfs::HEADER_LEN..l]);
            // Whole sealed, opened split: the key on another thread, the rest here.
            let (epoch, phase, _, key) = open2.current();
            assert_eq!((epoch, phase), (0, 0));
            let b = std::thread::spawn(move || {
                let mut b = whole;
                key.open_only(&mut b).unwrap();
                b
            })
            .join()
            .unwrap();
            assert_eq!(b[pfs::HEADER_LEN..l], plain[pfs::HEADER_LEN..l]);
            assert_eq!(open2.accept_opened(t, &b, epoch).unwrap(), n);
            // The counter is recorded: the same frame again is a replay.
            assert_eq!(open2.accept_opened(t, &b, epoch), Err(ChannelError::Replay));
        }
    }

    /// A frame tampered with fails where it is opened off the session thread, and the
    /// session thread counts it as `open` would have (tag, or replay for a used counter);
    /// nothing is recorded, so the genuine frame still opens.
    #[test]
    fn split_open_refuses_tampered_frames_as_open_would() {
        let (sk, rk) = handshake([6; 32], [6; 32]).unwrap();
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&ChannelConfig::default(), t);
        let raw = rk.recv;
        let (_, mut open) = rk.into_channel(&ChannelConfig::default(), t);
        let mut whole = Opener::new(&raw, ChannelConfig::default());
        let mut genuine = frame(0);
        let l = genuine.len() - TAG_LEN;
        let (n, key) = seal.prepare(t, &mut genuine, l).unwrap();
        key.seal_prepared(&mut genuine[..n]).unwrap();
        let (epoch, phase, _, key) = open.current();
        for i in 0..n {
            let mut c = genuine.clone();
            c[i] ^= 0x10;
            let mut w = c.clone();
            let want = whole.open(t, &mut w).unwrap_err();
            // As a worker does: only the current phase is opened there.
            let other = Packet::new_checked(&c[..]).is_ok_and(|p| p.reserved() != phase);
            let got = if other {
                open.open(t, &mut c).unwrap_err()
            } else {
                match key.open_only(&mut c) {
                    Ok(_) => open.accept_opened(t, &c, epoch).unwrap_err(),
                    Err(ChannelError::Tag) => open.refused_opened(&c),
                    Err(e) => e,
                }
            };
            assert_eq!(got, want, "bit flip at byte {i}");
        }
        let mut g = genuine.clone();
        key.open_only(&mut g).unwrap();
        open.accept_opened(t, &g, epoch).unwrap();
        // A tampered copy of a frame already taken: a replay, as `open` says.
        let mut c = genuine.clone();
        c[n - 1] ^= 1;
        assert!(key.open_only(&mut c).is_err());
        assert_eq!(open.refused_opened(&c), ChannelError::Replay);
        // A prepared frame without its sealed header, or of the wrong length, is refused.
        let mut short = genuine.clone();
        assert_eq!(
            key.seal_prepared(&mut short[..n - 1]),
            Err(ChannelError::Truncated)
        );
    }

    /// Key phases across the split: the sender prepares and its "workers" seal; the
    /// receiver's workers open the current phase with the key they were handed, the session
    /// thread opens the next phase itself (moving to it) and hands the new key over late; a
    /// frame the workers opened with the previous key is taken only where `open` would.
    #[test]
    fn rekey_across_the_split() {
        let (sk, rk) = handshake([7; 32], [7; 32]).unwrap();
        let cfg = ChannelConfig {
            rekey_packets: 4,
            ..Default::default()
        };
        let t = Instant::now();
        let (mut seal, _) = sk.into_channel(&cfg, t);
        let raw = rk.recv;
        let (_, mut open) = rk.into_channel(&cfg, t);
        let sealed: Vec<Vec<u8>> = (0..16)
            .map(|s| {
                let mut b = frame(s);
                let l = b.len() - TAG_LEN;
                let (n, key) = seal.prepare(t, &mut b, l).unwrap();
                key.seal_prepared(&mut b[..n]).unwrap();
                b
            })
            .collect();
        assert_eq!(seal.rekeys, 3);
        // The workers hold phase 0's key throughout frames 0..6 (handed over late).
        let (e0, p0, _, k0) = open.current();
        let mut taken = 0;
        for i in [0, 1, 4, 5] {
            let mut b = sealed[i].clone();
            if Packet::new_checked(&b[..]).unwrap().reserved() == p0 {
                k0.open_only(&mut b).unwrap();
                open.accept_opened(t, &b, e0).unwrap();
            } else {
                // Another phase: the session thread opens it (and moves to it).
                open.open(t, &mut b).unwrap();
            }
            taken += 1;
        }
        assert_eq!((open.rekeys, taken), (1, 4));
        // Frame 3 (phase 0) arrives late; the workers still hold phase 0's key: it is taken
        // (below the new phase's first counter, within the grace).
        let mut late = sealed[3].clone();
        k0.open_only(&mut late).unwrap();
        open.accept_opened(t, &late, e0).unwrap();
        // After the grace, frame 2 opened with the old key is refused as `open` would.
        let mut again = sealed[2].clone();
        k0.open_only(&mut again).unwrap();
        let after = t + cfg.prev_key_grace + Duration::from_secs(1);
        let mut w = sealed[2].clone();
        let mut whole = Opener::new(&raw, cfg.clone());
        for i in [0, 1, 4, 5, 3] {
            whole.open(t, &mut sealed[i].clone()).unwrap();
        }
        assert_eq!(whole.open(after, &mut w), Err(ChannelError::Tag));
        assert_eq!(
            open.accept_opened(after, &again, e0),
            Err(ChannelError::Tag)
        );
        // The workers now get phase 1's key; the rest goes through them or the session
        // thread by phase, keys handed over after each move.
        let (mut e, mut p, _, mut k) = open.current();
        for b in &sealed[6..] {
            let mut b = b.clone();
            if Packet::new_checked(&b[..]).unwrap().reserved() == p {
                k.open_only(&mut b).unwrap();
                open.accept_opened(t, &b, e).unwrap();
            } else {
                open.open(t, &mut b).unwrap();
                (e, p, _, k) = open.current();
            }
        }
        assert_eq!(open.rekeys, 3);
        // A frame of phase 2 (the same bit as phase 0) opened with phase 0's key fails;
        // one accepted as epoch 0 now is a tag failure, as `open` would say.
        let mut b = sealed[8].clone();
        assert_eq!(k0.open_only(&mut b), Err(ChannelError::Tag));
        let mut fake = sealed[1].clone();
        k0.open_only(&mut fake).unwrap();
        Packet::new_unchecked(&mut fake[..]).set_seq(100);
        assert_eq!(open.accept_opened(t, &fake, e0), Err(ChannelError::Tag));
    }

    #[test]
    fn mac1_depends_on_receiver_key() {
        let (s, r) = ids();
        let k1 = mac1_key(&r.public());
        let k2 = mac1_key(&s.public());
        assert_ne!(mac1(&k1, b"h", b"m"), mac1(&k2, b"h", b"m"));
        assert!(ct_eq(&mac1(&k1, b"h", b"m"), &mac1(&k1, b"h", b"m")));
    }
}
