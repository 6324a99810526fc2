//! Authenticated, encrypted sessions between known hosts (issue #12).
//!
//! * [`keys`]: identities (static X25519 key files, mode 0600), the receiver's
//!   authorized-senders file, the sender's known-receivers file, the pre-shared key.
//!
//! * [`channel`]: the Noise IKpsk2 handshake, the per-frame AES-256-GCM sealer and opener
//!   with key phases (rekey), mac1.
//! * [`window`]: the anti-replay window.
//! * [`guard`]: [`Guard`], the endpoint wrapper that runs the handshake and seals and opens
//!   every frame in place around the sender or receiver state machine.
//!
//! No I/O beyond reading key files, and no clock: time is passed in.

pub mod channel;
pub mod guard;
pub mod keys;
pub mod window;

pub use guard::{
    Guard, GuardConfig, Guarded, ReceiverKeys, SecStats, Security, SecuritySummary, SenderKeys,
};
pub use keys::{AuthorizedSenders, Identity, KeyError, KnownReceivers, PublicKey, SenderPolicy};
