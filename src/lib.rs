//! PacketFS: move files as blueprints into a snapshot both hosts already hold.
//!
//! The layers, from the bytes of a file to the wire and back (see docs/ARCHITECTURE.md):
//!
//! | module        | concern                                                                  |
//! |---------------|--------------------------------------------------------------------------|
//! | [`pob`]       | the POB snapshot: recipe, deterministic banks, manifest, mmap loading     |
//! | [`index`]     | k-gram indexes over the snapshot, stored beside it and memory-mapped      |
//! | [`plan`]      | the planner: matches under id/xor/add, cost model, ELF section hints      |
//! | [`blueprint`] | segments, the `.pbb` codec, and the apply kernels that rebuild a file     |
//! | [`wire`]      | frame formats: zero-copy views with checked constructors                  |
//! | [`tree`]      | the sender's inputs: files and directory trees walked into manifest entries |
//! | [`prepare`]   | codec work before the wire: packing, lowering, the streaming producer     |
//! | [`proto`]     | the transfer state machine: no clock, no sockets, no files                |
//! | [`secure`]    | identities, key files, handshake and per-frame AEAD of authenticated sessions |
//! | [`fsink`]     | the receiver's output directory: mmap, write-back, fsync, rename          |
//! | [`xsk`]       | AF_XDP sockets, UMEM and rings                                            |
//! | [`steer`]     | the aya loader for the XDP steering program                               |
//! | [`driver`]    | the session core joining [`proto`] with AF_XDP or UDP; the clock reader   |
//! | [`host`]      | structured checks of what the host offers (`pfs doctor`, auto-picks)      |
//! | [`shm`]       | the shared-memory descriptor ring and its benchmark                       |
//! | [`metrics`]   | JSON-lines metrics log                                                    |
//! | [`notify`]    | systemd notifications (READY, STATUS, WATCHDOG, STOPPING)                 |
//! | [`prom`]      | Prometheus text exposition, the /metrics server thread, a parser          |
//! | [`config`]    | the appliance file `config/pfs.toml`: parse, validate, flags override it  |
//! | [`bigbuf`]    | large byte buffers on transparent huge pages (the sender's stream bytes)  |
//! | [`input`]     | the codec commands' input files: mapped when large, read when small       |
//!
//! Everything here is a library; the `pfs` binary (`src/cli`) is the only place that prints
//! for humans.
//!
//! Unsafe code is denied here and allowed only where memory must be mapped or the kernel
//! spoken to, each block with a `// Safety:` comment: whole modules [`xsk`], [`steer`],
//! [`shm`], [`fsink`], [`bigbuf`] (one `madvise`), [`input`] (an input file's map and its SIGBUS
//! handler) and `driver/xdp/workers.rs`; single functions in `driver/xdp/io.rs` (the fork that releases a command's sockets after it exits), [`pob`] and
//! [`index`] (memory maps), [`blueprint`] (the non-temporal store kernels in `apply.rs`), [`plan`] (a cycle counter), [`host`] (its probes), [`proto`] (the receiver's hashing
//! thread reading final spans in place: `proto/hashpipe.rs`, its hand-off in `assembly.rs`,
//! and `MemSink::span_mut`, which hands out only the range written) and the binary
//! (signals).
#![deny(unsafe_code)]

pub mod bigbuf;
pub mod blueprint;
pub mod config;
pub mod driver;
pub mod flusher;
pub mod fsink;
pub mod host;
pub mod index;
pub mod input;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod pob;
pub mod prepare;
pub mod prom;
pub mod proto;
pub mod secure;
pub mod shm;
pub mod steer;
pub mod tree;
pub mod util;
pub mod wire;
pub mod xsk;
