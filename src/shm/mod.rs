//! The shared-memory descriptor ring and its benchmark (`pfs bench shm`).
//!
//! A producer publishes frames of span descriptors into single-producer/single-consumer rings
//! in shared memory; one consumer per core (one process each by default) applies the
//! descriptor's byte transform to a span of a shared blob through the same apply kernels the
//! receiver uses ([`crate::blueprint::apply`]). The benchmark measures the consumers' aggregate
//! throughput against a single-core tight loop over the same work, the same loop on every
//! core (the ceiling), and memcpy, then proves the work was done by checking the whole blob
//! against a closed-form expectation.
//!
//! | module        | concern                                                               |
//! |---------------|-----------------------------------------------------------------------|
//! | [`region`]    | nameless shared memory (memfd, hugetlb when possible) and its mapping |
//! | [`ring`]      | the lock-free SPSC ring: cached cursors, whole-frame publish/consume  |
//! | [`desc`]      | the `#[repr(C)]` span descriptor and its absolute/relative encoding   |
//! | [`spans`]     | the deterministic span streams (shards, permutations) and blob fill   |
//! | [`config`]    | the benchmark's knobs and their validation (before any allocation)    |
//! | [`verify`]    | the proof of work: the whole blob against the closed-form expectation |
//! | [`proc`]      | forked consumer processes, their reaping, and SIGINT/SIGTERM          |
//! | [`bench`]     | the benchmark itself: phases, producer and consumer loops, the report |
//!
//! This module may use unsafe code (mapping memory, forking, raw ring slots; the crate root
//! lists the other places that may); every block says why it is sound in a `// Safety:`
//! comment.
#![allow(unsafe_code)]

pub mod bench;
pub mod config;
pub mod desc;
pub mod proc;
pub mod region;
pub mod ring;
pub mod spans;
pub mod verify;

pub use bench::{run, ShmReport};
pub use config::{HugePages, Mode, ShmConfig, ShmConfigError};
pub use desc::Desc;
pub use ring::{Consumer, Producer, RingRef};
