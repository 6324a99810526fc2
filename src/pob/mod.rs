//! pob (in progress)
