//! [`Guard`]: an [`Endpoint`] that wraps the sender or the receiver state machine and
//! puts the secure channel around it, without touching its logic.
//!
//! * Sender side: the Guard runs the handshake first (HandshakeInit, retransmitted with
//!   backoff until a HandshakeResp or [`GuardConfig::hs_timeout`]); only then does the inner
//!   endpoint's first datagram (its Hello: snapshot id and manifest) go out, sealed.
//! * Receiver side: a HandshakeInit is checked in this order, each step dropping silently
//!   and counting: CRC and length (parse), mac1 (keyed by our public key: no Diffie-Hellman
//!   for a forged init), the per-source token bucket, the Noise message (DH), the sender's
//!   key in the authorized senders (strangers get no answer at all), the init's timestamp
//!   against the last one accepted from that key. The answer (80 bytes) is smaller than the
//!   init (160 bytes): no amplification. The sender's [`SenderPolicy`] goes to the inner
//!   endpoint ([`Guarded::apply_policy`]: limits and sub-directory) before its Hello.
//! * Both sides then seal every outgoing datagram in place after `inner.poll_transmit`
//!   (the inner endpoint builds datagrams [`TAG_LEN`] shorter than the path's) and open every
//!   incoming one in place before `inner.handle_datagram`. Frames of another session are
//!   dropped before any decryption; unsealed frames after the handshake are dropped.
//! * `--insecure` ([`Security::Insecure`]): no handshake; frames pass unsealed (tag len 0)
//!   and sealed or handshake frames are dropped.
//!
//! The session thread keeps every decision: counters, key phases, the replay window, the
//! handshake. Where the frame path has threads of its own (the AF_XDP workers) the AEAD work
//! moves to them: [`Endpoint::poll_transmit_split`] takes the counter, phase and sealed
//! header here and hands the phase's key ([`channel::AeadKey`], shared) with the frame for
//! the worker to seal; [`Endpoint::rx_unseal`] hands the opener's current phase key to the
//! workers, which open this session's frames of that phase in place, and
//! [`Endpoint::handle_unsealed`] then applies what [`Opener::open`] would have (the replay
//! window, the previous key's rule, the same counts). One key per direction serves all queues.

use super::channel::{
    self, AeadKey, ChannelConfig, ChannelError, Initiator, Opener, Responder, Sealer,
    INIT_NOISE_LEN, RESP_NOISE_LEN, TAG_LEN,
};
use super::keys::{AuthorizedSenders, Identity, PublicKey, SenderPolicy};
use crate::proto::{Endpoint, Event, Failure, Finish, Reason, Stats, Unseal};
use crate::wire::payload::{Frame, HandshakeInit, HandshakeResp, Payload};
use crate::wire::pfs::{self, FrameType, Packet};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sender's keys: its identity, the receiver's public key, the optional PSK.
#[derive(Clone, Debug)]
pub struct SenderKeys {
    pub identity: Arc<Identity>,
    pub receiver: PublicKey,
    pub psk: Option<[u8; 32]>,
}

/// The receiver's keys: its identity, who may send, the optional PSK.
#[derive(Clone, Debug)]
pub struct ReceiverKeys {
    pub identity: Arc<Identity>,
    pub authorized: Arc<AuthorizedSenders>,
    pub psk: Option<[u8; 32]>,
}

/// How a session is protected.
#[derive(Clone, Debug)]
pub enum Security {
    /// `--insecure`: plaintext frames, no handshake.
    Insecure,
    Sender(SenderKeys),
    Receiver(ReceiverKeys),
}

impl Security {
    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }
}

/// Timers and limits of a [`Guard`].
#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub channel: ChannelConfig,
    /// First handshake retransmission after this long; doubles up to `hs_retry_max`.
    pub hs_retry: Duration,
    pub hs_retry_max: Duration,
    /// The sender gives up when no handshake completed in this time.
    pub hs_timeout: Duration,
    /// Handshake inits accepted per second per source address, and the burst.
    pub init_rate: f64,
    pub init_burst: f64,
    /// Wall-clock time (ns since the Unix epoch) at the first `now` the Guard sees: the
    /// init's timestamp is this plus the time since then (the Guard reads no clock).
    pub wall_ns: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            channel: ChannelConfig::default(),
            hs_retry: Duration::from_millis(200),
            hs_retry_max: Duration::from_secs(1),
            hs_timeout: Duration::from_secs(10),
            init_rate: 20.0,
            init_burst: 40.0,
            wall_ns: 0,
        }
    }
}

/// Counters of the secure channel (summaries and metrics).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SecStats {
    /// Handshakes completed (sender: responses read; receiver: inits answered).
    pub handshakes: u64,
    /// Handshake inits sent (the sender's first and its retransmissions).
    pub inits_sent: u64,
    /// Receiver: valid inits from keys not in the authorized senders (not answered).
    pub refused: u64,
    /// Receiver: inits whose mac1 failed (dropped before any Diffie-Hellman).
    pub mac1_failures: u64,
    /// Receiver: inits over the per-source rate limit.
    pub rate_limited: u64,
    /// Receiver: inits whose Noise message did not verify, or with a timestamp not newer
    /// than the last accepted from that key, or arriving once the session was confirmed.
    pub bad_inits: u64,
    /// Sealed frames whose tag failed.
    pub tag_failures: u64,
    /// Sealed frames whose counter was seen before or is too old.
    pub replays: u64,
    /// Frames dropped before decryption: another session, unsealed after the handshake,
    /// sealed before it, unparsable.
    pub dropped: u64,
    /// Key phases moved to (both directions).
    pub rekeys: u64,
}

/// What a summary says about the channel.
#[derive(Debug, Clone, Serialize)]
pub struct SecuritySummary {
    /// `Noise IKpsk2 + AES-256-GCM` or `NONE (--insecure)`.
    pub mode: String,
    /// The peer's name (receiver: from the authorized senders; sender: `receiver`).
    pub peer_name: Option<String>,
    /// The peer's public key, base64.
    pub peer_key: Option<String>,
    pub psk: bool,
    pub counters: SecStats,
}

impl SecuritySummary {
    /// The summary line: `security: Noise IKpsk2 + AES-256-GCM, peer NAME (KEY...)`.
    pub fn line(&self) -> String {
        match (&self.peer_name, &self.peer_key) {
            (Some(n), Some(k)) => format!(
                "security: {}, peer {} ({}...){}",
                self.mode,
                n,
                &k[..k.len().min(12)],
                if self.psk { ", psk" } else { "" }
            ),
            _ => format!("security: {}", self.mode),
        }
    }
}

/// What the Guard asks of the endpoint it wraps beyond [`Endpoint`].
pub trait Guarded: Endpoint {
    /// The receiver authenticated the sender: apply its policy (limits, sub-directory)
    /// before the sender's Hello is read. On an error the endpoint refuses the session itself
    /// (answering the Hello with a reason); the Guard logs the error and keeps the channel.
    fn apply_policy(&mut self, _policy: &SenderPolicy) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Guarded + ?Sized> Guarded for &mut E {
    fn apply_policy(&mut self, policy: &SenderPolicy) -> Result<(), String> {
        (**self).apply_policy(policy)
    }
}

/// Most source addresses the init rate limiter keeps a bucket for.
const MAX_BUCKETS: usize = 4096;

/// A token bucket per source address for handshake inits (a Guard's own, and the receiver
/// service's across sessions), bounded at [`MAX_BUCKETS`] sources.
pub(crate) struct InitLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<Option<IpAddr>, (f64, Instant)>,
}

impl InitLimiter {
    /// `rate` inits per second per source, `burst` at once.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        InitLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Take a token for an init from `src` (None: unknown source); false when it has none.
    pub(crate) fn allow(&mut self, mut src: Option<IpAddr>, now: Instant) -> bool {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&src) {
            // Bounded memory under a spoofed-source flood: forget the buckets that have
            // refilled (their sources are quiet); if that frees nothing, new sources share
            // one overflow bucket.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|k, (tokens, t)| {
                k.is_none()
                    || *tokens + now.saturating_duration_since(*t).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_BUCKETS {
                src = None;
            }
        }
        let (tokens, t) = self.buckets.entry(src).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*t).as_secs_f64() * self.rate).min(self.burst);
        *t = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The sender's handshake in progress.
struct Initiating {
    keys: SenderKeys,
    mac1_key: [u8; 32],
    hs: Option<Initiator>,
    /// The last init sent, to repeat it as is (same timestamp: a retransmission).
    started: Option<Instant>,
    next_retry: Option<Instant>,
    backoff: Duration,
    pending: bool,
}

/// The receiver's side before and after its answer.
struct Responding {
    keys: ReceiverKeys,
    mac1_key: [u8; 32],
    limiter: InitLimiter,
    /// Last timestamp accepted per sender key.
    last_ts: HashMap<PublicKey, u64>,
    /// The answered sender and session; an answer waiting to go out.
    bound: Option<(PublicKey, u64)>,
    resp: Option<[u8; RESP_NOISE_LEN]>,
    /// A sealed frame opened: the sender has the keys, no more inits are taken.
    confirmed: bool,
}

enum Mode {
    Insecure,
    Sender(Box<Initiating>),
    Receiver(Box<Responding>),
}

/// The channel once keys exist.
struct Established {
    seal: Sealer,
    open: Opener,
}

/// The secure wrapper around an endpoint (see the module docs).
pub struct Guard<E: Guarded> {
    inner: E,
    cfg: GuardConfig,
    mode: Mode,
    session: Option<u64>,
    chan: Option<Established>,
    first_now: Option<Instant>,
    src: Option<IpAddr>,
    peer: Option<(String, PublicKey)>,
    psk: bool,
    failure: Option<Failure>,
    events: VecDeque<Event>,
    stats: SecStats,
    hs_seq: u64,
    /// The opener's current key as last handed to receiving threads ([`Endpoint::rx_unseal`]).
    unseal: Option<Arc<PhaseUnseal>>,
    /// Channels set up so far (a receiver answers a repeated init with new keys): part of
    /// an [`Unseal`]'s epoch, so a frame opened with an earlier channel's key is not taken.
    chan_gen: u64,
}

/// Bits of an [`Unseal`] epoch that hold the opener's key epoch (the rest: the channel).
const EPOCH_BITS: u32 = 40;

/// A phase key with which the receiving threads open this session's frames of that phase
/// ([`Unseal`]); anything else (another session, the other phase, unsealed) they leave to
/// the session thread. Once a frame of the other phase above this phase's first counter was
/// seen (the peer moved on: the frames of the phase before are all below it), frames of this
/// phase bit above it belong to the phase after next, under another key: they go to the
/// session thread too, instead of failing here.
pub struct PhaseUnseal {
    session: u64,
    epoch: u64,
    phase: u8,
    /// The lowest counter opened in this phase when the key was handed over.
    first: u64,
    /// The lowest counter of the next phase seen by any receiving thread.
    fence: AtomicU64,
    key: Arc<AeadKey>,
}

impl Unseal for PhaseUnseal {
    fn epoch(&self) -> u64 {
        self.epoch
    }
    fn try_open(&self, datagram: &mut [u8]) -> Option<bool> {
        let p = super::channel::sealed(datagram).ok()?;
        if p.session() != self.session {
            return None;
        }
        let seq = p.seq();
        if p.reserved() != self.phase {
            if seq > self.first {
                self.fence.fetch_min(seq, Ordering::Relaxed);
            }
            return None;
        }
        if seq > self.fence.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.key.open_only(datagram).is_ok())
    }
}

impl Finish for AeadKey {
    fn finish(&self, datagram: &mut [u8]) -> bool {
        match self.seal_prepared(datagram) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("sealing a frame failed: {e}");
                false
            }
        }
    }
}

/// Receiver side, before anything is built for a datagram that would open a new session:
/// true when it is a HandshakeInit whose mac1 matches `mac1_key` (see
/// [`channel::mac1_key`] of the receiver's public key). A service checks this first, so a
/// forged init costs a parse and one keyed BLAKE3, not a session's set-up.
pub fn init_mac1_ok(mac1_key: &[u8; 32], datagram: &[u8]) -> bool {
    let Ok(frame) = Frame::parse(datagram) else {
        return false;
    };
    let Payload::HandshakeInit(init) = frame.payload else {
        return false;
    };
    let Some(hdr) = datagram.get(..28) else {
        return false;
    };
    channel::ct_eq(&channel::mac1(mac1_key, hdr, init.noise), init.mac1)
}

impl<E: Guarded> Guard<E> {
    /// Wrap `inner`. A sender's `session` is its session id (the handshake carries it); a
    /// receiver learns it from the init it answers.
    pub fn new(inner: E, security: Security, session: Option<u64>, cfg: GuardConfig) -> Self {
        let mut psk = false;
        let mode = match security {
            Security::Insecure => Mode::Insecure,
            Security::Sender(keys) => {
                psk = keys.psk.is_some();
                Mode::Sender(Box::new(Initiating {
                    mac1_key: channel::mac1_key(&keys.receiver),
                    keys,
                    hs: None,
                    started: None,
                    next_retry: None,
                    backoff: cfg.hs_retry,
                    pending: false,
                }))
            }
            Security::Receiver(keys) => {
                psk = keys.psk.is_some();
                Mode::Receiver(Box::new(Responding {
                    mac1_key: channel::mac1_key(&keys.identity.public()),
                    keys,
                    limiter: InitLimiter::new(cfg.init_rate, cfg.init_burst),
                    last_ts: HashMap::new(),
                    bound: None,
                    resp: None,
                    confirmed: false,
                }))
            }
        };
        Guard {
            inner,
            cfg,
            mode,
            session,
            chan: None,
            first_now: None,
            src: None,
            peer: None,
            psk,
            failure: None,
            events: VecDeque::new(),
            stats: SecStats::default(),
            hs_seq: 0,
            unseal: None,
            chan_gen: 0,
        }
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }
    pub fn into_inner(self) -> E {
        self.inner
    }
    pub fn sec_stats(&self) -> SecStats {
        let mut s = self.stats.clone();
        if let Some(c) = &self.chan {
            s.rekeys = c.seal.rekeys + c.open.rekeys;
        }
        s
    }
    /// Receiver: the sender key and timestamp of the init this Guard answered (a service
    /// holding many Guards keeps the timestamps per key across sessions: a replayed init
    /// opens no second session).
    pub fn accepted_init(&self) -> Option<(PublicKey, u64)> {
        let Mode::Receiver(r) = &self.mode else {
            return None;
        };
        let (k, _) = r.bound?;
        r.last_ts.get(&k).map(|&t| (k, t))
    }

    /// The authenticated peer (name, key), once known.
    pub fn peer(&self) -> Option<&(String, PublicKey)> {
        self.peer.as_ref()
    }
    /// True once the handshake completed.
    pub fn is_established(&self) -> bool {
        self.chan.is_some()
    }

    /// The summary of the channel.
    pub fn summary(&self) -> SecuritySummary {
        let insecure = matches!(self.mode, Mode::Insecure);
        SecuritySummary {
            mode: if insecure {
                "NONE (--insecure)".into()
            } else {
                "Noise IKpsk2 + AES-256-GCM".into()
            },
            peer_name: self.peer.as_ref().map(|p| p.0.clone()),
            peer_key: self.peer.as_ref().map(|p| p.1.to_base64()),
            psk: self.psk,
            counters: self.sec_stats(),
        }
    }

    /// The datagram size the inner endpoint must build for a path of `max_datagram`.
    pub fn inner_datagram(security: &Security, max_datagram: usize) -> usize {
        if security.is_insecure() {
            max_datagram
        } else {
            max_datagram - TAG_LEN
        }
    }

    fn timestamp(&mut self, now: Instant) -> u64 {
        let first = *self.first_now.get_or_insert(now);
        self.cfg
            .wall_ns
            .saturating_add(now.saturating_duration_since(first).as_nanos() as u64)
    }

    fn fail(&mut self, reason: Reason) {
        if self.failure.is_none() {
            let f = Failure {
                reason,
                by_peer: false,
            };
            self.events.push_back(Event::Aborted(f.clone()));
            self.failure = Some(f);
        }
    }

    /// Write an unsealed handshake frame.
    fn write_hs(&mut self, buf: &mut [u8], payload: &Payload<'_>) -> Option<usize> {
        let session = self.session?;
        let hdr = pfs::Repr {
            frame_type: payload.frame_type(),
            flags: 0,
            session,
            seq: self.hs_seq,
            payload_len: 0,
        };
        if buf.len() < pfs::HEADER_LEN + payload.buffer_len() {
            return None;
        }
        self.hs_seq += 1;
        Some(Frame::emit(hdr, payload, buf))
    }

    /// Sender: the next init, if one is due.
    fn sender_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let ts = self.timestamp(now);
        let session = self.session?;
        let Mode::Sender(s) = &mut self.mode else {
            return None;
        };
        if !s.pending {
            return None;
        }
        let mut noise = [0u8; INIT_NOISE_LEN];
        let me = s.keys.identity.clone();
        let psk = s.keys.psk.unwrap_or([0; 32]);
        match Initiator::start(&me, &s.keys.receiver, &psk, ts, session, &mut noise) {
            Ok(hs) => s.hs = Some(hs),
            Err(e) => {
                let msg = e.to_string();
                self.fail(Reason::Handshake { detail: msg });
                return None;
            }
        }
        s.pending = false;
        let mac_key = s.mac1_key;
        let mac = [0u8; channel::MAC_LEN];
        let n = self.write_hs(
            buf,
            &Payload::HandshakeInit(HandshakeInit {
                noise: &noise,
                mac1: &mac,
            }),
        )?;
        // mac1 over the header up to its CRC and the Noise message, then the CRC again.
        let m = channel::mac1(&mac_key, &buf[..28], &noise);
        let off = pfs::HEADER_LEN + INIT_NOISE_LEN;
        buf[off..off + channel::MAC_LEN].copy_from_slice(&m);
        Packet::new_unchecked(&mut buf[..n]).fill_crc();
        self.stats.inits_sent += 1;
        Some(n)
    }

    /// Receiver: a HandshakeInit arrived.
    fn on_init(
        &mut self,
        now: Instant,
        hdr_bytes: &[u8; 28],
        session: u64,
        init: HandshakeInit<'_>,
    ) {
        let src = self.src;
        let Mode::Receiver(r) = &mut self.mode else {
            self.stats.dropped += 1;
            return;
        };
        let want = channel::mac1(&r.mac1_key, hdr_bytes, init.noise);
        if !channel::ct_eq(&want, init.mac1) {
            self.stats.mac1_failures += 1;
            return;
        }
        if !r.limiter.allow(src, now) {
            self.stats.rate_limited += 1;
            return;
        }
        if r.confirmed {
            self.stats.bad_inits += 1;
            return;
        }
        let psk = r.keys.psk.unwrap_or([0; 32]);
        let resp = match Responder::read_init(&r.keys.identity, &psk, init.noise) {
            Ok(resp) => resp,
            Err(_) => {
                self.stats.bad_inits += 1;
                return;
            }
        };
        if resp.session != session {
            self.stats.bad_inits += 1;
            return;
        }
        let Some(policy) = r.keys.authorized.get(&resp.peer).cloned() else {
            self.stats.refused += 1;
            return;
        };
        if r.last_ts
            .get(&resp.peer)
            .is_some_and(|&t| resp.timestamp_ns <= t)
        {
            self.stats.bad_inits += 1;
            return;
        }
        if let Some((k, s)) = r.bound {
            // One session per receiver: only the bound sender may redo its handshake (its
            // answer was lost) until a sealed frame confirms the keys.
            if k != resp.peer || s != session {
                self.stats.bad_inits += 1;
                return;
            }
        }
        r.last_ts.insert(resp.peer, resp.timestamp_ns);
        let peer = resp.peer;
        let mut out = [0u8; RESP_NOISE_LEN];
        let keys = match resp.respond(&mut out) {
            Ok(k) => k,
            Err(_) => {
                self.stats.bad_inits += 1;
                return;
            }
        };
        let first = r.bound.is_none();
        r.bound = Some((peer, session));
        r.resp = Some(out);
        let (seal, open) = keys.into_channel(&self.cfg.channel, now);
        self.chan = Some(Established { seal, open });
        self.chan_gen += 1;
        self.session = Some(session);
        self.stats.handshakes += 1;
        if first {
            self.peer = Some((policy.name.clone(), peer));
            if let Err(e) = self.inner.apply_policy(&policy) {
                // the handshake is still answered: the inner endpoint refuses the session at
                // its Hello with a reason, so the sender hears why instead of timing out
                tracing::warn!(
                    "sender {}: its policy could not be applied: {e}",
                    policy.name
                );
            }
        }
    }

    /// Sender: a HandshakeResp arrived.
    fn on_resp(&mut self, now: Instant, resp: HandshakeResp<'_>) {
        let Mode::Sender(s) = &mut self.mode else {
            self.stats.dropped += 1;
            return;
        };
        if self.chan.is_some() {
            self.stats.dropped += 1;
            return;
        }
        let Some(hs) = s.hs.take() else {
            self.stats.dropped += 1;
            return;
        };
        match hs.finish(resp.noise) {
            Ok(keys) => {
                let (seal, open) = keys.into_channel(&self.cfg.channel, now);
                self.chan = Some(Established { seal, open });
                self.chan_gen += 1;
                self.stats.handshakes += 1;
                self.peer = Some(("receiver".into(), s.keys.receiver));
                s.next_retry = None;
            }
            Err(_) => {
                // A late answer to an earlier init (or garbage): wait for the next one.
                self.stats.bad_inits += 1;
            }
        }
    }
}

impl<E: Guarded> Endpoint for Guard<E> {
    fn note_source(&mut self, src: IpAddr) {
        self.src = Some(src);
        self.inner.note_source(src);
    }

    fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let chan_ok = self.chan.is_some();
        match &mut self.mode {
            Mode::Insecure => {
                let sealed_or_hs = Packet::new_checked(&*datagram).is_ok_and(|p| {
                    p.flags() & pfs::FLAG_SEALED != 0
                        || matches!(
                            FrameType::from_u8(p.frame_type()),
                            Some(FrameType::HandshakeInit | FrameType::HandshakeResp)
                        )
                });
                if sealed_or_hs {
                    self.stats.dropped += 1;
                    return false;
                }
                self.inner.handle_datagram(now, datagram)
            }
            Mode::Sender(_) | Mode::Receiver(_) => {
                let Ok(p) = Packet::new_checked(&*datagram) else {
                    self.stats.dropped += 1;
                    return false;
                };
                let sealed = p.flags() & pfs::FLAG_SEALED != 0;
                if !sealed {
                    // Only the handshake travels unsealed.
                    let Ok(frame) = Frame::parse(datagram) else {
                        self.stats.dropped += 1;
                        return false;
                    };
                    let session = frame.header.session;
                    match frame.payload {
                        Payload::HandshakeInit(init) => {
                            let mut hdr = [0u8; 28];
                            hdr.copy_from_slice(&datagram[..28]);
                            let before = self.stats.handshakes;
                            self.on_init(now, &hdr, session, init);
                            // A datagram that advanced the handshake tells the path its peer.
                            self.stats.handshakes > before
                        }
                        Payload::HandshakeResp(resp) if Some(session) == self.session => {
                            let before = self.stats.handshakes;
                            self.on_resp(now, resp);
                            self.stats.handshakes > before
                        }
                        _ => {
                            self.stats.dropped += 1;
                            false
                        }
                    }
                } else {
                    // Unknown session or no keys yet: dropped before any decryption.
                    if !chan_ok || Some(p.session()) != self.session {
                        self.stats.dropped += 1;
                        return false;
                    }
                    let chan = self.chan.as_mut().expect("checked");
                    let r = chan.open.open(now, datagram);
                    self.after_open(now, datagram, r)
                }
            }
        }
    }

    fn rx_unseal(&mut self) -> Option<Arc<dyn Unseal>> {
        if self.failure.is_some() {
            return None;
        }
        let (Some(chan), Some(session)) = (&self.chan, self.session) else {
            return None;
        };
        let (epoch, phase, first, key) = chan.open.current();
        let epoch = (self.chan_gen << EPOCH_BITS) | (epoch & ((1 << EPOCH_BITS) - 1));
        if !self
            .unseal
            .as_ref()
            .is_some_and(|u| u.epoch == epoch && u.session == session)
        {
            self.unseal = Some(Arc::new(PhaseUnseal {
                session,
                epoch,
                phase,
                first,
                fence: AtomicU64::new(u64::MAX),
                key,
            }));
        }
        self.unseal.clone().map(|u| u as Arc<dyn Unseal>)
    }

    fn handle_unsealed(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        epoch: u64,
        opened: bool,
    ) -> bool {
        if self.failure.is_some() {
            return false;
        }
        // The receiving thread checked the session and phase against the keys it had.
        let Some(chan) = self.chan.as_mut() else {
            self.stats.dropped += 1;
            return false;
        };
        let r = if epoch >> EPOCH_BITS != self.chan_gen {
            // Opened (or not) with an earlier channel's key: `open` would have used this
            // channel's, which that frame does not verify under.
            Err(ChannelError::Tag)
        } else if opened {
            chan.open
                .accept_opened(now, datagram, epoch & ((1 << EPOCH_BITS) - 1))
        } else {
            Err(chan.open.refused_opened(datagram))
        };
        self.after_open(now, datagram, r)
    }

    fn poll_transmit_split(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(usize, Option<Arc<dyn Finish>>)> {
        self.transmit(now, buf, true)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.failure.is_some() {
            return;
        }
        let established = self.chan.is_some();
        let timeout = self.cfg.hs_timeout;
        let retry_max = self.cfg.hs_retry_max;
        if let Mode::Sender(s) = &mut self.mode {
            if !established {
                let started = *s.started.get_or_insert(now);
                if now >= started + timeout {
                    let ms = timeout.as_millis() as u64;
                    self.fail(Reason::HandshakeTimeout { ms });
                    return;
                }
                if s.next_retry.is_none_or(|t| now >= t) {
                    s.pending = true;
                    if s.next_retry.is_some() {
                        s.backoff = (s.backoff * 2).min(retry_max);
                    }
                    s.next_retry = Some(now + s.backoff);
                }
                return;
            }
        }
        if let Mode::Receiver(_) = self.mode {
            if !established {
                return;
            }
        }
        self.inner.handle_timeout(now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.transmit(now, buf, false).map(|(n, _)| n)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.failure.is_some() {
            return None;
        }
        match &self.mode {
            Mode::Sender(s) if self.chan.is_none() => {
                let deadline = s.started.map(|t| t + self.cfg.hs_timeout);
                match (s.next_retry, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Mode::Receiver(_) if self.chan.is_none() => None,
            _ => self.inner.poll_timeout(),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.inner.poll_event()
    }

    fn is_closed(&self) -> bool {
        self.failure.is_some() || self.inner.is_closed()
    }

    fn stats(&self) -> &Stats {
        self.inner.stats()
    }

    fn outcome(&self) -> Option<Result<(), Failure>> {
        if let Some(f) = &self.failure {
            return Some(Err(f.clone()));
        }
        self.inner.outcome()
    }

    fn cancel(&mut self, now: Instant) {
        if self.chan.is_none() && !matches!(self.mode, Mode::Insecure) {
            self.fail(Reason::Cancelled);
            return;
        }
        self.inner.cancel(now)
    }
}

impl<E: Guarded> Guard<E> {
    /// The next datagram; `split`: a sealed one's payload is left for the thread that sends
    /// it, with the key ([`Endpoint::poll_transmit_split`]).
    fn transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        split: bool,
    ) -> Option<(usize, Option<Arc<dyn Finish>>)> {
        if self.failure.is_some() {
            return None;
        }
        match &mut self.mode {
            Mode::Insecure => self.inner.poll_transmit(now, buf).map(|n| (n, None)),
            Mode::Sender(s) => {
                if self.chan.is_none() {
                    if s.started.is_none() {
                        s.started = Some(now);
                        s.pending = true;
                        s.next_retry = Some(now + s.backoff);
                    }
                    return self.sender_transmit(now, buf).map(|n| (n, None));
                }
                self.seal_next(now, buf, split)
            }
            Mode::Receiver(r) => {
                if let Some(out) = r.resp.take() {
                    return self
                        .write_hs(buf, &Payload::HandshakeResp(HandshakeResp { noise: &out }))
                        .map(|n| (n, None));
                }
                if self.chan.is_none() || !r.confirmed {
                    return None;
                }
                self.seal_next(now, buf, split)
            }
        }
    }

    /// The inner endpoint's next datagram, sealed in place; `split`: only its counter,
    /// phase and header ([`Sealer::prepare`]), the payload left for the key returned.
    fn seal_next(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        split: bool,
    ) -> Option<(usize, Option<Arc<dyn Finish>>)> {
        if buf.len() <= TAG_LEN {
            return None;
        }
        let room = buf.len() - TAG_LEN;
        let n = self.inner.poll_transmit(now, &mut buf[..room])?;
        let chan = self.chan.as_mut()?;
        let r = if split {
            chan.seal
                .prepare(now, buf, n)
                .map(|(m, key)| (m, Some(key as Arc<dyn Finish>)))
        } else {
            chan.seal.seal(now, buf, n).map(|m| (m, None))
        };
        match r {
            Ok(m) => Some(m),
            Err(e) => {
                // A counter reused or a frame that does not parse: a bug; never send it.
                tracing::error!("sealing a frame failed: {e}");
                self.fail(Reason::Protocol);
                None
            }
        }
    }

    /// A sealed datagram was opened (or not): count, confirm, hand it in.
    fn after_open(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        r: Result<usize, ChannelError>,
    ) -> bool {
        match r {
            Ok(_) => {
                if let Mode::Receiver(r) = &mut self.mode {
                    r.confirmed = true;
                    r.resp = None;
                }
                self.inner.handle_datagram(now, datagram)
            }
            Err(ChannelError::Replay) => {
                self.stats.replays += 1;
                false
            }
            Err(ChannelError::Tag) => {
                self.stats.tag_failures += 1;
                false
            }
            Err(_) => {
                self.stats.dropped += 1;
                false
            }
        }
    }
}

impl<S: crate::proto::FileSink> Guarded for crate::proto::Receiver<'_, S> {
    fn apply_policy(&mut self, policy: &SenderPolicy) -> Result<(), String> {
        self.limit_sizes(policy.max_file, policy.max_session);
        self.sink_mut().set_owner(&policy.key.to_base64());
        if let Some(dir) = &policy.dir {
            if let Err(e) = self.sink_mut().confine_to(dir) {
                self.refuse(Reason::Io);
                return Err(format!("{}: {e}", dir.display()));
            }
        }
        Ok(())
    }
}

impl Guarded for crate::proto::Sender {}
impl Guarded for crate::prepare::stream::Feed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_mac1_precheck_passes_real_inits_only() {
        let recv = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let send = Arc::new(Identity::generate().unwrap());
        let sender =
            crate::proto::Sender::new(crate::proto::SenderConfig::default(), [1; 32], vec![])
                .unwrap();
        let mut g = Guard::new(
            sender,
            Security::Sender(SenderKeys {
                identity: send,
                receiver: recv.public(),
                psk: None,
            }),
            Some(7),
            GuardConfig::default(),
        );
        let mut buf = vec![0u8; 1500];
        let n = g.poll_transmit(Instant::now(), &mut buf).expect("an init");
        let init = &buf[..n];
        assert!(init_mac1_ok(&channel::mac1_key(&recv.public()), init));
        assert!(!init_mac1_ok(&channel::mac1_key(&other.public()), init));
        let mut flipped = init.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(!init_mac1_ok(&channel::mac1_key(&recv.public()), &flipped));
        assert!(!init_mac1_ok(
            &channel::mac1_key(&recv.public()),
            &init[..20]
        ));
    }

    #[test]
    fn init_limiter_per_source_and_bounded() {
        let t = Instant::now();
        let mut l = InitLimiter {
            rate: 20.0,
            burst: 40.0,
            buckets: HashMap::new(),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!((0..100).filter(|_| l.allow(Some(a), t)).count(), 40);
        // Another source has its own bucket; the first refills at 20/s.
        assert!(l.allow(Some(b), t));
        let later = t + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| l.allow(Some(a), later)).count(), 10);
        // A flood from many sources keeps the map bounded.
        for i in 0..20_000u32 {
            l.allow(Some(IpAddr::from(i.to_be_bytes())), later);
        }
        assert!(l.buckets.len() <= MAX_BUCKETS + 1, "{}", l.buckets.len());
    }

    /// A stand-in endpoint: sends Probe frames (its own counter as the sequence number) and
    /// records the ones it is handed.
    struct Prober {
        session: u64,
        seq: u64,
        got: Vec<u64>,
        stats: Stats,
    }

    impl Prober {
        fn new(session: u64) -> Self {
            Prober {
                session,
                seq: 0,
                got: vec![],
                stats: Stats::default(),
            }
        }
    }

    impl Guarded for Prober {}

    impl Endpoint for Prober {
        fn handle_datagram(&mut self, _now: Instant, d: &mut [u8]) -> bool {
            match Frame::parse(d) {
                Ok(f) if matches!(f.payload, Payload::Probe(_)) => {
                    self.got.push(f.header.seq);
                    true
                }
                _ => false,
            }
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<usize> {
            let p = Payload::Probe(crate::wire::payload::Probe {
                sent: self.seq * 7,
                srtt_us: 1,
                flags: 0,
            });
            let hdr = pfs::Repr {
                frame_type: FrameType::Probe,
                flags: 0,
                session: self.session,
                seq: self.seq,
                payload_len: 0,
            };
            if buf.len() < pfs::HEADER_LEN + p.buffer_len() {
                return None;
            }
            self.seq += 1;
            Some(Frame::emit(hdr, &p, buf))
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<Event> {
            None
        }
        fn is_closed(&self) -> bool {
            false
        }
        fn stats(&self) -> &Stats {
            &self.stats
        }
        fn outcome(&self) -> Option<Result<(), Failure>> {
            None
        }
        fn cancel(&mut self, _now: Instant) {}
    }

    /// A sender and a receiver Guard around [`Prober`]s, handshake done.
    fn pair(cfg: GuardConfig) -> (Guard<Prober>, Guard<Prober>) {
        let send = Arc::new(Identity::from_secret([0x31; 32]));
        let recv = Arc::new(Identity::from_secret([0x32; 32]));
        let line = format!("{} tester\n", send.public().to_base64());
        let authorized = Arc::new(AuthorizedSenders::parse(&line, "test").unwrap());
        let mut s = Guard::new(
            Prober::new(7),
            Security::Sender(SenderKeys {
                identity: send,
                receiver: recv.public(),
                psk: None,
            }),
            Some(7),
            cfg.clone(),
        );
        let mut r = Guard::new(
            Prober::new(7),
            Security::Receiver(ReceiverKeys {
                identity: recv,
                authorized,
                psk: None,
            }),
            None,
            cfg,
        );
        let t = Instant::now();
        let mut buf = vec![0u8; 1500];
        let n = s.poll_transmit(t, &mut buf).expect("init");
        assert!(r.handle_datagram(t, &mut buf[..n]));
        let n = r.poll_transmit(t, &mut buf).expect("resp");
        assert!(s.handle_datagram(t, &mut buf[..n]));
        assert!(s.is_established() && r.is_established());
        (s, r)
    }

    /// Frames sealed by the split path (the key's step on another thread) and by the whole
    /// path, opened by a receiving thread with the handed-over keys or by the session
    /// thread, tampered with or replayed: each side ends with the frames and counters the
    /// whole path gives, across key phases.
    #[test]
    fn split_paths_keep_frames_and_counters_exact() {
        let cfg = GuardConfig {
            channel: ChannelConfig {
                rekey_packets: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = Instant::now();
        // The same frames through both receivers: the whole path and the split one.
        let (mut s, mut r_split) = pair(cfg.clone());
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 1500];
        for i in 0..24 {
            let (n, job) = s.poll_transmit_split(t, &mut buf).expect("a frame");
            let mut f = buf[..n].to_vec();
            match job {
                // The worker's part, on another thread.
                Some(job) => {
                    f = std::thread::spawn(move || {
                        assert!(job.finish(&mut f));
                        f
                    })
                    .join()
                    .unwrap()
                }
                None => panic!("frame {i}: a keyed frame comes with its sealing"),
            }
            frames.push(f);
        }
        // Forgeries (before the genuine frame: after it, its counter is a replay) and
        // replays among them.
        let mut wire: Vec<Vec<u8>> = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            if i % 4 == 1 {
                let mut bad = f.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x40;
                wire.push(bad);
            }
            wire.push(f.clone());
            if i % 6 == 2 {
                wire.push(f.clone());
            }
        }
        let mut whole = {
            // A receiver seeing the same keys: the split pair's handshake is deterministic
            // only in its keys' use, so run the whole path on a second pair's receiver fed
            // by its own sender's frames built the whole way.
            let (mut s2, r2) = pair(cfg.clone());
            let mut w2 = Vec::new();
            for f in &frames {
                let n = s2.poll_transmit(t, &mut buf).unwrap();
                let mut g = buf[..n].to_vec();
                // Same plaintext, same counter and phase as the split frame.
                assert_eq!(g.len(), f.len());
                assert_eq!(g[..pfs::HEADER_LEN], f[..pfs::HEADER_LEN]);
                g.truncate(n);
                w2.push(g);
            }
            (r2, w2)
        };
        let mut wire2: Vec<Vec<u8>> = Vec::new();
        for (i, f) in whole.1.iter().enumerate() {
            if i % 4 == 1 {
                let mut bad = f.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x40;
                wire2.push(bad);
            }
            wire2.push(f.clone());
            if i % 6 == 2 {
                wire2.push(f.clone());
            }
        }
        // Whole path.
        for mut f in wire2 {
            whole.0.handle_datagram(t, &mut f);
        }
        // Split path: a "worker" opens with the keys last handed over (refreshed every
        // third frame, so some frames of a new phase reach the session thread first).
        let mut unseal = r_split.rx_unseal().expect("keys once established");
        for (i, mut f) in wire.into_iter().enumerate() {
            if i % 3 == 0 {
                unseal = r_split.rx_unseal().unwrap();
            }
            match unseal.try_open(&mut f) {
                Some(ok) => {
                    r_split.handle_unsealed(t, &mut f, unseal.epoch(), ok);
                }
                None => {
                    r_split.handle_datagram(t, &mut f);
                }
            }
        }
        assert_eq!(r_split.inner().got, whole.0.inner().got);
        assert_eq!(r_split.inner().got, (0..24).collect::<Vec<u64>>());
        let (a, b) = (r_split.sec_stats(), whole.0.sec_stats());
        assert_eq!(a, b);
        assert_eq!((a.tag_failures, a.replays, a.rekeys), (6, 4, 4));
    }

    /// Frames opened with an earlier channel's keys (a receiver that answered a repeated
    /// init has new ones) are not taken.
    #[test]
    fn unseal_of_an_earlier_channel_is_refused() {
        let (mut s, mut r) = pair(GuardConfig::default());
        let old = r.rx_unseal().unwrap();
        r.chan_gen += 1;
        let t = Instant::now();
        let mut buf = vec![0u8; 1500];
        let n = s.poll_transmit(t, &mut buf).unwrap();
        let mut f = buf[..n].to_vec();
        assert_eq!(old.try_open(&mut f), Some(true));
        assert!(!r.handle_unsealed(t, &mut f, old.epoch(), true));
        assert_eq!(r.sec_stats().tag_failures, 1);
        assert!(r.inner().got.is_empty());
    }

    /// A receiving thread that keeps phase 0's key while the peer moves through phase 1
    /// into phase 2 (the same phase bit) leaves phase 2's frames to the session thread
    /// instead of failing them under the wrong key: nothing is lost or miscounted.
    #[test]
    fn a_stale_key_leaves_the_phase_after_next_to_the_session_thread() {
        let cfg = GuardConfig {
            channel: ChannelConfig {
                rekey_packets: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let (mut s, mut r) = pair(cfg);
        let t = Instant::now();
        let mut buf = vec![0u8; 1500];
        let frames: Vec<Vec<u8>> = (0..9)
            .map(|_| {
                let n = s.poll_transmit(t, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        let unseal = r.rx_unseal().unwrap();
        let mut by_worker = 0;
        for mut f in frames {
            match unseal.try_open(&mut f) {
                Some(ok) => {
                    assert!(ok);
                    by_worker += 1;
                    assert!(r.handle_unsealed(t, &mut f, unseal.epoch(), ok));
                }
                None => assert!(r.handle_datagram(t, &mut f)),
            }
        }
        assert_eq!(by_worker, 3);
        assert_eq!(r.inner().got, (0..9).collect::<Vec<u64>>());
        let st = r.sec_stats();
        assert_eq!((st.tag_failures, st.replays, st.rekeys), (0, 0, 2));
    }
}
