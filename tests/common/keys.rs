//! Keys for the tests: identities and authorized-senders files made through the library,
//! the matching `Security` values for library-level tests, and the flags of both commands.

use packetfs::secure::{
    AuthorizedSenders, Identity, PublicKey, ReceiverKeys, Security, SenderKeys,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A sender and a receiver that know each other, in memory.
pub struct TestKeys {
    pub sender: Arc<Identity>,
    pub receiver: Arc<Identity>,
    pub psk: Option<[u8; 32]>,
}

impl TestKeys {
    /// Fixed keys (deterministic simulations).
    pub fn fixed() -> TestKeys {
        TestKeys {
            sender: Arc::new(Identity::from_secret([0x11; 32])),
            receiver: Arc::new(Identity::from_secret([0x22; 32])),
            psk: None,
        }
    }

    /// The receiver's authorized senders: this sender, as `name`, with optional extras
    /// (`dir=...`, `max-file=...`).
    pub fn authorized(&self, extra: &str) -> AuthorizedSenders {
        let line = format!("{} tester {extra}\n", self.sender.public().to_base64());
        AuthorizedSenders::parse(&line, "test").unwrap()
    }

    pub fn sender_security(&self) -> Security {
        Security::Sender(SenderKeys {
            identity: self.sender.clone(),
            receiver: self.receiver.public(),
            psk: self.psk,
        })
    }

    pub fn receiver_security(&self) -> Security {
        self.receiver_security_with("")
    }

    pub fn receiver_security_with(&self, extra: &str) -> Security {
        Security::Receiver(ReceiverKeys {
            identity: self.receiver.clone(),
            authorized: Arc::new(self.authorized(extra)),
            psk: self.psk,
        })
    }
}

/// Key files in a directory: each side's key file (mode 0600), the receiver's
/// authorized-senders file, and the receiver's public key.
pub struct KeyFiles {
    pub sender_key: PathBuf,
    pub receiver_key: PathBuf,
    pub authorized: PathBuf,
    pub receiver_pub: PublicKey,
    pub sender_pub: PublicKey,
}

impl KeyFiles {
    /// Fresh identities for both sides under `dir`; the sender is authorized as `tester`.
    pub fn create(dir: &Path) -> KeyFiles {
        let s = Identity::generate().unwrap();
        let r = Identity::generate().unwrap();
        let sender_key = dir.join("sender.key");
        let receiver_key = dir.join("receiver.key");
        s.save_new(&sender_key).unwrap();
        r.save_new(&receiver_key).unwrap();
        let authorized = dir.join("authorized-senders");
        std::fs::write(&authorized, format!("{} tester\n", s.public().to_base64())).unwrap();
        KeyFiles {
            sender_key,
            receiver_key,
            authorized,
            receiver_pub: r.public(),
            sender_pub: s.public(),
        }
    }

    /// `pfs send` flags.
    pub fn send_flags(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            self.sender_key.display().to_string(),
            "--receiver-key".into(),
            self.receiver_pub.to_base64(),
        ]
    }

    /// `pfs send` flags naming the receiver through a known-receivers file (written in the
    /// sender key's directory): `ADDR PUB` for `addr`, and a wrong key for everyone else.
    pub fn send_flags_known(&self, addr: &str) -> Vec<String> {
        let dir = self.sender_key.parent().unwrap();
        let path = dir.join("known_receivers");
        let other = Identity::from_secret([0x5e; 32]).public();
        std::fs::write(
            &path,
            format!(
                "* {}\n{addr} {}\n",
                other.to_base64(),
                self.receiver_pub.to_base64()
            ),
        )
        .unwrap();
        vec![
            "--identity".into(),
            self.sender_key.display().to_string(),
            "--known-receivers".into(),
            path.display().to_string(),
        ]
    }

    /// `pfs recv` flags.
    pub fn recv_flags(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            self.receiver_key.display().to_string(),
            "--authorized-senders".into(),
            self.authorized.display().to_string(),
        ]
    }

    /// The sender's `Security` (library-level tests over real sockets).
    pub fn sender_security(&self) -> Security {
        Security::Sender(SenderKeys {
            identity: Arc::new(Identity::load(&self.sender_key).unwrap()),
            receiver: self.receiver_pub,
            psk: None,
        })
    }

    pub fn receiver_security(&self) -> Security {
        Security::Receiver(ReceiverKeys {
            identity: Arc::new(Identity::load(&self.receiver_key).unwrap()),
            authorized: Arc::new(AuthorizedSenders::load(&self.authorized).unwrap()),
            psk: None,
        })
    }
}
