//! The settings a transfer command runs with: the merged configuration (built-in defaults,
//! `--config FILE`, the flags given) and the keys it names, turned into the session's
//! [`Security`] for `pfs send` and `pfs recv` (and a service's reload).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use packetfs::config::PfsConfig;
use packetfs::secure::{
    AuthorizedSenders, Identity, KnownReceivers, PublicKey, ReceiverKeys, Security, SenderKeys,
};

/// The configuration a command runs with: the built-in defaults, under `--config FILE`'s
/// values (when given), under the flags given.
pub(super) fn merged(file: Option<&Path>, flags: PfsConfig) -> anyhow::Result<PfsConfig> {
    let base = match file {
        Some(path) => PfsConfig::defaults().overlay(PfsConfig::load(path)?),
        None => PfsConfig::defaults(),
    };
    Ok(base.overlay(flags))
}

/// How to make keys, for the error when none are given.
const KEYS_HOWTO: &str = "create a key pair with `pfs keygen --out pfs.key` on each host, \
give the sender `--identity pfs.key --receiver-key RECEIVER_PUB` and the receiver \
`--identity pfs.key --authorized-senders FILE` (lines `SENDER_PUB NAME`), \
or pass --insecure on both sides for a plaintext session";

fn load_psk(c: &PfsConfig) -> anyhow::Result<Option<[u8; 32]>> {
    c.psk_file
        .as_deref()
        .map(|p| packetfs::secure::keys::load_psk(p).map_err(anyhow::Error::from))
        .transpose()
}

fn load_identity(c: &PfsConfig, side: &str) -> anyhow::Result<Arc<Identity>> {
    let Some(p) = c.identity.as_deref() else {
        bail!("pfs {side} needs --identity (config key `identity`): {KEYS_HOWTO}");
    };
    Ok(Arc::new(Identity::load(p)?))
}

/// The sender's protection from the merged configuration, for receiver `dst`.
pub(super) fn sender_security(c: &PfsConfig, dst: SocketAddr) -> anyhow::Result<Security> {
    if c.insecure == Some(true) {
        return Ok(Security::Insecure);
    }
    let identity = load_identity(c, "send")?;
    let receiver = match (&c.receiver_key, &c.known_receivers) {
        (Some(k), _) => PublicKey::from_base64(k.trim())
            .with_context(|| format!("--receiver-key {k:?}"))?,
        (None, Some(f)) => {
            let known = KnownReceivers::load(f)?;
            known.get(dst).with_context(|| {
                format!("{} names no key for the receiver {dst}", f.display())
            })?
        }
        (None, None) => bail!(
            "pfs send needs the receiver's public key: --receiver-key PUB or --known-receivers FILE \
(config keys `receiver-key`, `known-receivers`): {KEYS_HOWTO}"
        ),
    };
    Ok(Security::Sender(SenderKeys {
        identity,
        receiver,
        psk: load_psk(c)?,
    }))
}

/// The receiver's protection from the merged configuration.
pub(super) fn receiver_security(c: &PfsConfig) -> anyhow::Result<Security> {
    if c.insecure == Some(true) {
        return Ok(Security::Insecure);
    }
    let identity = load_identity(c, "recv")?;
    let Some(f) = c.authorized_senders.as_deref() else {
        bail!(
            "pfs recv needs --authorized-senders FILE (config key `authorized-senders`): {KEYS_HOWTO}"
        );
    };
    let authorized = AuthorizedSenders::load(f)?;
    if authorized.is_empty() {
        bail!(
            "{}: no authorized sender: every handshake would be refused",
            f.display()
        );
    }
    Ok(Security::Receiver(ReceiverKeys {
        identity,
        authorized: Arc::new(authorized),
        psk: load_psk(c)?,
    }))
}
