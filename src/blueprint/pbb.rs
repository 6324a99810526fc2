//! The `.pbb` packed blueprint format (filled in below).

/// Errors reading or validating a `.pbb`.
#[derive(Debug, thiserror::Error)]
pub enum PbbError {
    #[error("invalid blueprint: {0}")]
    Invalid(String),
}
