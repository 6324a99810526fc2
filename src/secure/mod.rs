//! Authenticated, encrypted sessions between known hosts (issue #12).
//!
//! * [`keys`]: identities (static X25519 key files, mode 0600), the receiver's
//!   authorized-senders file, the sender's known-receivers file, the pre-shared key.
//!
//! The handshake (Noise IKpsk2), the per-frame AEAD, the replay window and the endpoint
//! wrapper that seals and opens frames in place join this module; it does no I/O beyond
//! reading key files.

pub mod keys;

pub use keys::{AuthorizedSenders, Identity, KeyError, KnownReceivers, PublicKey, SenderPolicy};
