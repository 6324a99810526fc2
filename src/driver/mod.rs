//! Drivers: the [`crate::proto`] state machines over real datagram I/O. This is the only
//! place that reads the clock.
//!
//! - [`session`]: the session core. The one drive loop, its clock rule, the summaries, the
//!   driver error and `run_sender` / `run_receiver`, generic over [`session::FramePath`].
//! - [`service`]: `pfs recv` as a service: many sessions at once over one socket (UDP) or
//!   one set of AF_XDP sockets, in a [`crate::proto::table::Table`], with stop/grace, reload
//!   and live counters; generic over [`service::ServiceIo`].
//! - [`udp`]: the kernel UDP socket as a frame path (`--transport udp`).
//! - [`xdp`]: AF_XDP sockets behind the XDP steering program (`--transport xdp`), with two
//!   frame paths: the session thread owning every socket, or one worker thread per queue.
//! - [`options`]: the transfer options a user picks (transport, spread, thread model), one
//!   type each for the flags, the config file and the drivers.
//!
//! A frame path moves PacketFS datagrams (header + payload) between an endpoint and the
//! wire without an intermediate copy where it can: AF_XDP builds each datagram with
//! `poll_transmit` straight into a UMEM frame behind the Ethernet/IPv4/UDP header room
//! ([`crate::wire::stack::emit_headers`] fills it in) and hands each received frame's
//! datagram to `handle_datagram` in place (the receiver applies each piece from there into
//! the output file's memory map).

pub mod options;
pub mod service;
pub mod service_io;
pub mod session;
pub mod udp;
pub mod xdp;

pub use session::{drive, DriveOptions, DriverError, FramePath, Marks, Stop};
