//! Identities and the files that name peers.
//!
//! * A key file holds one static X25519 private key as one base64 line (the WireGuard
//!   format), created with mode 0600; one that group or others may read is refused, as ssh
//!   refuses such keys. The public key is derived from it.
//! * The receiver's authorized-senders file: one sender per line,
//!   `PUBKEY NAME [dir=SUBDIR] [max-file=SIZE] [max-session=SIZE]` (`#` starts a comment).
//! * The sender's known-receivers file: one receiver per line, `ADDRESS PUBKEY`, where
//!   ADDRESS is `IP`, `IP:PORT` or `*` (any address).
//! * The optional pre-shared key file: 32 bytes as one base64 line, same mode rule.
//!
//! Parsing is pure (`parse` functions take text); `load` functions add the file reads and
//! the mode checks. Every error names the file and, for text, the line.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Length of keys (X25519 public and private keys, the pre-shared key).
pub const KEY_LEN: usize = 32;

/// Largest key or policy file read (a guard, not a format limit).
const MAX_FILE: u64 = 1 << 20;

/// What can go wrong with keys and the files that hold them.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: permissions {mode:04o} are too open: a private key must not be readable by \
         group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: already exists (refusing to overwrite a key; remove it first to replace it)", path.display())]
    Exists { path: PathBuf },
    #[error("{origin}:{line}: {reason}")]
    Malformed {
        origin: String,
        line: usize,
        reason: String,
    },
    #[error("not a key: {0}")]
    BadKey(String),
    #[error("{}: larger than {MAX_FILE} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// An X25519 public key: who a peer is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// From one base64 word (44 characters, padded).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_key(s.trim()).map(PublicKey)
    }
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_base64()[..8])
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::from_base64(s)
    }
}

fn decode_key(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let mut v = B64
        .decode(s)
        .map_err(|e| KeyError::BadKey(format!("{e} (expected {KEY_LEN} bytes in base64)")))?;
    let out: Result<[u8; KEY_LEN], _> = v.as_slice().try_into();
    let n = v.len();
    v.zeroize();
    out.map_err(|_| KeyError::BadKey(format!("{n} bytes, expected {KEY_LEN}")))
}

/// A static X25519 key pair: this host's identity. The private half is wiped on drop and
/// never printed.
pub struct Identity {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public {:?})", self.public)
    }
}

impl Identity {
    /// A fresh key pair from the system random source.
    pub fn generate() -> Result<Identity, KeyError> {
        let mut secret = [0u8; KEY_LEN];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        let id = Identity::from_secret(secret);
        secret.zeroize();
        Ok(id)
    }

    /// The pair whose private key is `secret` (clamped as X25519 requires when used).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Identity {
        let s = x25519_dalek::StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes());
        Identity { secret, public }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private key bytes (for the handshake).
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// Parse the key file format (one base64 line).
    pub fn parse(text: &str, origin: &str) -> Result<Identity, KeyError> {
        let word = single_word(text, origin)?;
        let mut secret = decode_key(word).map_err(|e| KeyError::Malformed {
            origin: origin.to_owned(),
            line: 1,
            reason: e.to_string(),
        })?;
        let id = Identity::from_secret(secret);
        secret.zeroize();
        Ok(id)
    }

    /// Read a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Identity, KeyError> {
        let mut text = read_private(path)?;
        let id = Identity::parse(&text, &path.display().to_string());
        text.zeroize();
        id
    }

    /// Write the private key to a new file `path` with mode 0600 (never over an existing
    /// file).
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let mut line = B64.encode(self.secret);
        let r = write_private_new(path, &line);
        line.zeroize();
        r
    }
}

/// Write a fresh pre-shared key to a new file `path` (mode 0600, never over an existing
/// file), in the format [`load_psk`] reads.
pub fn save_new_psk(path: &Path) -> Result<(), KeyError> {
    let mut line = generate_psk_line()?;
    let r = write_private_new(path, &line);
    line.zeroize();
    r
}

/// Create `path` (mode 0600, `O_EXCL`, no symlink followed) holding `word` and a newline.
fn write_private_new(path: &Path, word: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let mut line = format!("{word}\n");
    let r = f.write_all(line.as_bytes()).and_then(|_| f.sync_all());
    line.zeroize();
    r.map_err(io)
}

/// Read the pre-shared key file (32 bytes, one base64 line; same mode rule as key files).
pub fn load_psk(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let mut text = read_private(path)?;
    let origin = path.display().to_string();
    let r = single_word(&text, &origin).and_then(|w| {
        decode_key(w).map_err(|e| KeyError::Malformed {
            origin: origin.clone(),
            line: 1,
            reason: e.to_string(),
        })
    });
    text.zeroize();
    r
}

/// A fresh random pre-shared key, as the base64 line its file holds.
pub fn generate_psk_line() -> Result<String, KeyError> {
    let mut k = [0u8; KEY_LEN];
    getrandom::fill(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
    let s = B64.encode(k);
    k.zeroize();
    Ok(s)
}

fn single_word<'a>(text: &'a str, origin: &str) -> Result<&'a str, KeyError> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(w), None) => Ok(w),
        (None, _) => Err(KeyError::Malformed {
            origin: origin.to_owned(),
            line: 1,
            reason: "empty: expected one base64 key".into(),
        }),
        (Some(_), Some(_)) => Err(KeyError::Malformed {
            origin: origin.to_owned(),
            line: 1,
            reason: "expected exactly one base64 key".into(),
        }),
    }
}

/// Read a file that holds a secret: refused when group or others may read it.
fn read_private(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_bounded(f, path)
}

fn read_bounded(f: File, path: &Path) -> Result<String, KeyError> {
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

fn read_public(path: &Path) -> Result<String, KeyError> {
    let f = File::open(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_bounded(f, path)
}

/// A size with an optional binary suffix: `4096`, `64K`, `10M`, `2G`, `1T` (`KiB`.. too).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// What one authorized sender may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPolicy {
    pub key: PublicKey,
    /// A name for logs and summaries.
    pub name: String,
    /// Where its files go, relative to the receiver's out-dir (no `..`, not absolute);
    /// `None`: the out-dir itself.
    pub dir: Option<PathBuf>,
    /// Largest file it may send.
    pub max_file: Option<u64>,
    /// Most bytes (sum of file sizes) in one session.
    pub max_session: Option<u64>,
}

/// The receiver's list of senders it answers; everyone else gets silence.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedSenders {
    entries: Vec<SenderPolicy>,
}

impl AuthorizedSenders {
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let mut entries: Vec<SenderPolicy> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |reason: String| KeyError::Malformed {
                origin: origin.to_owned(),
                line,
                reason,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let key = words.next().unwrap_or_default();
            let key = PublicKey::from_base64(key).map_err(|e| bad(e.to_string()))?;
            let name = words
                .next()
                .ok_or_else(|| bad("expected `PUBKEY NAME [options]`: the name is missing".into()))?
                .to_owned();
            let mut p = SenderPolicy {
                key,
                name,
                dir: None,
                max_file: None,
                max_session: None,
            };
            for w in words {
                let (k, v) = w
                    .split_once('=')
                    .ok_or_else(|| bad(format!("`{w}`: expected KEY=VALUE")))?;
                let size = |v: &str| {
                    parse_size(v)
                        .ok_or_else(|| bad(format!("`{w}`: not a size (e.g. 4096, 64K, 10G)")))
                };
                match k {
                    "dir" => p.dir = Some(relative_dir(v).map_err(bad)?),
                    "max-file" => p.max_file = Some(size(v)?),
                    "max-session" => p.max_session = Some(size(v)?),
                    _ => {
                        return Err(bad(format!(
                            "unknown option `{k}` (known: dir, max-file, max-session)"
                        )))
                    }
                }
            }
            if entries.iter().any(|e| e.key == p.key) {
                return Err(bad(format!("key {} is listed twice", p.key)));
            }
            entries.push(p);
        }
        Ok(AuthorizedSenders { entries })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        AuthorizedSenders::parse(&read_public(path)?, &path.display().to_string())
    }

    pub fn get(&self, key: &PublicKey) -> Option<&SenderPolicy> {
        self.entries.iter().find(|e| &e.key == key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SenderPolicy> {
        self.entries.iter()
    }
}

/// A sub-directory of the out-dir: the rule of manifest names
/// ([`crate::proto::sink::sanitize_name`]: relative, plain names, no `..` or `.`), the one
/// rule the receiver's file sink applies again when it confines a sender.
fn relative_dir(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("dir= is empty".into());
    }
    crate::proto::sink::sanitize_name(v)
        .map(PathBuf::from)
        .ok_or_else(|| format!("dir={v}: must be a relative path of plain names (no `..`, `.`, empty or absolute parts)"))
}

/// Which addresses a known-receivers entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrPattern {
    Any,
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl AddrPattern {
    fn matches(&self, a: SocketAddr) -> bool {
        match *self {
            AddrPattern::Any => true,
            AddrPattern::Ip(ip) => ip == a.ip(),
            AddrPattern::Socket(s) => s == a,
        }
    }
    /// More specific patterns win.
    fn rank(&self) -> u8 {
        match self {
            AddrPattern::Socket(_) => 2,
            AddrPattern::Ip(_) => 1,
            AddrPattern::Any => 0,
        }
    }
}

/// The sender's list of receivers it knows: address -> public key.
#[derive(Debug, Clone, Default)]
pub struct KnownReceivers {
    entries: Vec<(AddrPattern, PublicKey)>,
}

impl KnownReceivers {
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |reason: String| KeyError::Malformed {
                origin: origin.to_owned(),
                line,
                reason,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let w: Vec<&str> = content.split_whitespace().collect();
            if w.len() != 2 {
                return Err(bad(
                    "expected `ADDRESS PUBKEY` (ADDRESS: IP, IP:PORT or *)".into()
                ));
            }
            let pat = if w[0] == "*" {
                AddrPattern::Any
            } else if let Ok(s) = w[0].parse::<SocketAddr>() {
                AddrPattern::Socket(s)
            } else if let Ok(ip) = w[0].parse::<IpAddr>() {
                AddrPattern::Ip(ip)
            } else {
                return Err(bad(format!("`{}`: not an IP, IP:PORT or *", w[0])));
            };
            let key = PublicKey::from_base64(w[1]).map_err(|e| bad(e.to_string()))?;
            entries.push((pat, key));
        }
        Ok(KnownReceivers { entries })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        KnownReceivers::parse(&read_public(path)?, &path.display().to_string())
    }

    /// The key of the receiver at `addr`: the most specific matching entry.
    pub fn get(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.entries
            .iter()
            .filter(|(p, _)| p.matches(addr))
            .max_by_key(|(p, _)| p.rank())
            .map(|(_, k)| *k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_round_trip_and_mode_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let id = Identity::generate().unwrap();
        id.save_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.secret(), id.secret());
        assert!(matches!(id.save_new(&path), Err(KeyError::Exists { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::TooOpen { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("too open"));
    }

    #[test]
    fn public_key_is_the_x25519_base_point_product() {
        // RFC 7748 section 6.1 test vector (Alice).
        let sk = decode_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let pk = decode_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(Identity::from_secret(sk).public().0, pk);
    }

    fn decode_hex(s: &str) -> [u8; 32] {
        crate::util::parse_hex32(s).unwrap()
    }

    #[test]
    fn bad_keys_are_named() {
        assert!(PublicKey::from_base64("not base64!").is_err());
        assert!(PublicKey::from_base64(&B64.encode([1u8; 31])).is_err());
        let k = PublicKey([7; 32]);
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert!(Identity::parse("", "x").is_err());
        assert!(Identity::parse("a b", "x").is_err());
    }

    #[test]
    fn authorized_senders_parse_and_refuse() {
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        let text = format!(
            "# comment\n{a} alice dir=alice max-file=10M max-session=1G\n\n{b} bob # trailing\n"
        );
        let s = AuthorizedSenders::parse(&text, "f").unwrap();
        assert_eq!(s.len(), 2);
        let pa = s.get(&a).unwrap();
        assert_eq!(pa.name, "alice");
        assert_eq!(pa.dir.as_deref(), Some(Path::new("alice")));
        assert_eq!(pa.max_file, Some(10 << 20));
        assert_eq!(pa.max_session, Some(1 << 30));
        assert_eq!(s.get(&b).unwrap().dir, None);
        assert!(s.get(&PublicKey([3; 32])).is_none());
        for bad in [
            format!("{a}"),
            format!("{a} x dir=../up"),
            format!("{a} x dir=/abs"),
            format!("{a} x max-file=lots"),
            format!("{a} x color=red"),
            format!("{a} x\n{a} y"),
            "zzz name".to_string(),
        ] {
            let e = AuthorizedSenders::parse(&bad, "f").unwrap_err();
            assert!(matches!(e, KeyError::Malformed { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn known_receivers_pick_the_most_specific() {
        let any = PublicKey([1; 32]);
        let ip = PublicKey([2; 32]);
        let sock = PublicKey([3; 32]);
        let text = format!("* {any}\n10.0.0.2 {ip}\n10.0.0.2:7000 {sock}\n");
        let k = KnownReceivers::parse(&text, "f").unwrap();
        assert_eq!(k.get("10.0.0.2:7000".parse().unwrap()), Some(sock));
        assert_eq!(k.get("10.0.0.2:7001".parse().unwrap()), Some(ip));
        assert_eq!(k.get("10.0.0.3:7000".parse().unwrap()), Some(any));
        assert!(KnownReceivers::parse("10.0.0.2", "f").is_err());
        assert!(KnownReceivers::parse(&format!("host.example {any}"), "f").is_err());
        assert_eq!(
            KnownReceivers::default().get("10.0.0.2:1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }
}
