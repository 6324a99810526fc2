//! The reason codes an Abort frame carries ([`super::payload::Abort::code`]): one enum,
//! written once, read by the protocol ([`crate::proto::Reason`]) both ways.

/// Why a session was aborted, as a wire code. What the Abort's `file`, `a`, `b` and `id`
/// fields mean depends on the code (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReasonCode {
    /// `id`: the receiver's snapshot id; `a`: the first 8 bytes of the sender's.
    SnapshotMismatch = 1,
    /// `file`, `a`: its size, `b`: the limit.
    FileTooLarge = 2,
    /// `a`: the session's bytes, `b`: the limit.
    SessionTooLarge = 3,
    /// `a`: the file count, `b`: the limit.
    TooManyFiles = 4,
    /// `a`: bytes needed, `b`: bytes available.
    NoSpace = 5,
    /// `file`.
    BadName = 6,
    /// `file`, `a`: the other file.
    DuplicateName = 7,
    /// `file`.
    HashMismatch = 8,
    /// `a`: the idle timeout in ms.
    Timeout = 9,
    Cancelled = 10,
    Protocol = 11,
    Io = 12,
    /// `file`, `a`: its packed length, `b`: the limit.
    PackedTooLarge = 13,
    /// `file`: its final name exists on the receiver, which runs without `--overwrite`.
    FileExists = 14,
    /// `file`, `a`: the entry (a file or a link) that one of its parent directories would be.
    PathConflict = 15,
}

/// A code this build does not know (a newer peer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0}")]
pub struct UnknownReason(pub u16);

impl ReasonCode {
    /// Every code, in code order.
    pub const ALL: [ReasonCode; 15] = [
        ReasonCode::SnapshotMismatch,
        ReasonCode::FileTooLarge,
        ReasonCode::SessionTooLarge,
        ReasonCode::TooManyFiles,
        ReasonCode::NoSpace,
        ReasonCode::BadName,
        ReasonCode::DuplicateName,
        ReasonCode::HashMismatch,
        ReasonCode::Timeout,
        ReasonCode::Cancelled,
        ReasonCode::Protocol,
        ReasonCode::Io,
        ReasonCode::PackedTooLarge,
        ReasonCode::FileExists,
        ReasonCode::PathConflict,
    ];

    /// The wire value.
    #[inline]
    pub const fn code(self) -> u16 {
        self as u16
    }
}

impl TryFrom<u16> for ReasonCode {
    type Error = UnknownReason;
    fn try_from(c: u16) -> Result<Self, UnknownReason> {
        // Codes are dense from 1.
        (c as usize)
            .checked_sub(1)
            .and_then(|i| ReasonCode::ALL.get(i).copied())
            .ok_or(UnknownReason(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_refused() {
        for (i, r) in ReasonCode::ALL.into_iter().enumerate() {
            assert_eq!(r.code() as usize, i + 1, "{r:?}");
            assert_eq!(ReasonCode::try_from(r.code()), Ok(r));
        }
        for c in [0u16, 16, 200, u16::MAX] {
            assert_eq!(ReasonCode::try_from(c), Err(UnknownReason(c)));
        }
    }
}
