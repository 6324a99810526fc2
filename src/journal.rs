//! The resume journal beside a receiver's resumable temporary file (docs/ARCHITECTURE.md,
//! docs/security.md).
//!
//! A session that breaks keeps each unfinished file as `.NAME.pfs-part-H` (H: 8 hex digits of
//! the BLAKE3 of the file's relative name) and a journal `.NAME.pfs-jrnl-H` beside it, in the
//! same confined directory. The journal says which file it is (relative name, size, the
//! sender's identity) and how long a prefix of it is durable: those bytes were written,
//! `msync`ed and `fdatasync`ed before the journal recorded them. It is written atomically
//! (a `.new` file, fdatasync, rename).
//!
//! The journal is untrusted input (another process may have written it, the disk may have
//! lied): it is read with a bound ([`MAX_LEN`]), parsed strictly, checked by its own BLAKE3
//! trailer, against the manifest (name, size), the sender and the temporary file's length.
//! Even a journal that passes is never trusted for the data: the receiver offers the BLAKE3
//! of the prefix as it reads it now, the sender compares it with its own file, and the whole
//! file's BLAKE3 decides at the end.

/// A journal is never longer than this; a longer file is not a journal.
pub const MAX_LEN: usize = 8 + 8 + 8 + 2 + 2 + 512 + 256 + 32;
/// Longest sender identity recorded.
pub const MAX_OWNER: usize = 256;
const MAGIC: &[u8; 8] = b"PFSJRNL1";

/// The name marks of resumable temporary files and their journals.
pub const PART_MARK: &str = ".pfs-part-";
pub const JOURNAL_MARK: &str = ".pfs-jrnl-";

/// What a journal records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// The file's relative name below the (confined) output root.
    pub name: String,
    pub size: u64,
    /// Bytes `[0, prefix)` are durable.
    pub prefix: u64,
    /// The sender's identity (its public key), empty without one.
    pub owner: String,
}

/// Why bytes are not a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("too short or too long")]
    Length,
    #[error("not a PacketFS journal")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("the prefix lies beyond the file")]
    Prefix,
    #[error("the name or the sender identity is not valid")]
    Name,
}

impl Journal {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.prefix.to_le_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        b.extend_from_slice(&(self.owner.len() as u16).to_le_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(self.owner.as_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Parse untrusted bytes.
    pub fn parse(b: &[u8]) -> Result<Journal, JournalError> {
        const FIXED: usize = 8 + 8 + 8 + 2 + 2;
        if b.len() < FIXED + 32 || b.len() > MAX_LEN {
            return Err(JournalError::Length);
        }
        if &b[..8] != MAGIC {
            return Err(JournalError::Magic);
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(JournalError::Checksum);
        }
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u16at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let (size, prefix) = (u64at(8), u64at(16));
        let (nl, ol) = (u16at(24) as usize, u16at(26) as usize);
        if FIXED + nl + ol != body.len() {
            return Err(JournalError::Length);
        }
        if prefix > size {
            return Err(JournalError::Prefix);
        }
        let name = std::str::from_utf8(&b[FIXED..FIXED + nl]).map_err(|_| JournalError::Name)?;
        let owner =
            std::str::from_utf8(&b[FIXED + nl..FIXED + nl + ol]).map_err(|_| JournalError::Name)?;
        if ol > MAX_OWNER || crate::proto::sink::sanitize_name(name).as_deref() != Some(name) {
            return Err(JournalError::Name);
        }
        Ok(Journal {
            name: name.to_owned(),
            size,
            prefix,
            owner: owner.to_owned(),
        })
    }
}

/// The 8 hex digits naming the resumable files of relative name `name`.
pub fn name_tag(name: &str) -> String {
    let h = blake3::hash(name.as_bytes());
    h.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `(part, journal)` file names for `fname` (the last component) of relative name `name`:
/// `.FNAME.pfs-part-H` and `.FNAME.pfs-jrnl-H`, FNAME cut to 200 bytes (under the 255-byte
/// limit of file names; the tag tells cut names apart).
pub fn names(fname: &str, name: &str) -> (std::ffi::OsString, std::ffi::OsString) {
    use std::os::unix::ffi::OsStrExt;
    let b = fname.as_bytes();
    let cut = &b[..b.len().min(200)];
    let tag = name_tag(name);
    let mk = |mark: &str| {
        let mut v = Vec::with_capacity(cut.len() + 24);
        v.push(b'.');
        v.extend_from_slice(cut);
        v.extend_from_slice(mark.as_bytes());
        v.extend_from_slice(tag.as_bytes());
        std::ffi::OsStr::from_bytes(&v).to_owned()
    };
    (mk(PART_MARK), mk(JOURNAL_MARK))
}

/// For a directory entry name: the journal name if it is a part file's, and whether it is a
/// journal (`Some((journal, false))` for a part file, `Some((name, true))` for a journal).
pub fn classify(entry: &[u8]) -> Option<(Vec<u8>, bool)> {
    if entry.first() != Some(&b'.') {
        return None;
    }
    let find = |mark: &str| {
        let m = mark.as_bytes();
        let at = entry.windows(m.len()).rposition(|w| w == m)?;
        let tag = &entry[at + m.len()..];
        (tag.len() == 8 && tag.iter().all(u8::is_ascii_hexdigit)).then_some(at)
    };
    if let Some(at) = find(PART_MARK) {
        let mut j = entry[..at].to_vec();
        j.extend_from_slice(JOURNAL_MARK.as_bytes());
        j.extend_from_slice(&entry[at + PART_MARK.len()..]);
        return Some((j, false));
    }
    find(JOURNAL_MARK).map(|_| (entry.to_vec(), true))
}

/// The part file name of journal name `journal` (as [`classify`] found it).
pub fn part_of(journal: &[u8]) -> Vec<u8> {
    let m = JOURNAL_MARK.as_bytes();
    match journal.windows(m.len()).rposition(|w| w == m) {
        Some(at) => {
            let mut p = journal[..at].to_vec();
            p.extend_from_slice(PART_MARK.as_bytes());
            p.extend_from_slice(&journal[at + m.len()..]);
            p
        }
        None => journal.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j() -> Journal {
        Journal {
            name: "dir/file.bin".into(),
            size: 1 << 30,
            prefix: 12345,
            owner: "abc=".into(),
        }
    }

    #[test]
    fn a_journal_round_trips() {
        let b = j().to_bytes();
        assert!(b.len() <= MAX_LEN);
        assert_eq!(Journal::parse(&b), Ok(j()));
    }

    #[test]
    fn a_journal_that_lies_or_is_garbage_is_refused() {
        let b = j().to_bytes();
        assert_eq!(Journal::parse(&b[..10]), Err(JournalError::Length));
        assert_eq!(Journal::parse(&[0u8; 100]), Err(JournalError::Magic));
        assert_eq!(
            Journal::parse(&vec![7u8; MAX_LEN + 1]),
            Err(JournalError::Length)
        );
        // One byte changed anywhere: the trailer does not match.
        for i in 8..b.len() {
            let mut x = b.clone();
            x[i] ^= 1;
            assert!(Journal::parse(&x).is_err(), "byte {i}");
        }
        // A well-formed journal whose prefix lies beyond the file.
        let lie = Journal {
            prefix: (1 << 30) + 1,
            ..j()
        };
        assert_eq!(Journal::parse(&lie.to_bytes()), Err(JournalError::Prefix));
        // Names that escape or are not plain.
        for name in ["../x", "/etc/passwd", "a//b", ""] {
            let bad = Journal {
                name: name.into(),
                ..j()
            };
            assert_eq!(
                Journal::parse(&bad.to_bytes()),
                Err(JournalError::Name),
                "{name}"
            );
        }
    }

    #[test]
    fn part_and_journal_names_are_told_apart() {
        let (p, jn) = names("file.bin", "dir/file.bin");
        use std::os::unix::ffi::OsStrExt;
        let (jj, is_j) = classify(p.as_bytes()).unwrap();
        assert!(!is_j);
        assert_eq!(jj, jn.as_bytes());
        assert_eq!(
            classify(jn.as_bytes()),
            Some((jn.as_bytes().to_vec(), true))
        );
        assert_eq!(part_of(jn.as_bytes()), p.as_bytes());
        assert_eq!(classify(b"file.bin"), None);
        assert_eq!(classify(b".x.pfs-part-zz"), None);
        let (long, _) = names(&"y".repeat(255), &"y".repeat(255));
        assert!(long.len() <= 255);
        assert_ne!(names("a", "a").0, names("a", "d/a").0);
    }
}
