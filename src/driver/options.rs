//! The transfer options a user picks, spelled once: each derives clap's `ValueEnum` (the
//! `pfs send`/`pfs recv` flags) and serde (the `pfs.toml` keys, the metrics JSON), and the
//! drivers use the same types. The other option types live with what they choose:
//! [`crate::proto::PackPolicy`] (`--pack`), [`crate::pob::HugePolicy`] (`--hugepages`),
//! [`crate::steer::XdpMode`] (`--xdp-mode`).

use serde::{Deserialize, Serialize};

/// Which transport moves the frames (`--transport`, `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// AF_XDP when this host can run it (root or the capabilities, the XDP program built
    /// in, an interface named), else the kernel UDP socket, saying why.
    #[default]
    Auto,
    /// AF_XDP sockets behind the XDP steering program (needs root or CAP_NET_ADMIN/BPF).
    Xdp,
    /// Kernel UDP sockets: the same protocol for hosts without XDP or privileges.
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Xdp => "xdp",
            Transport::Udp => "udp",
        }
    }
}

/// How a session is spread over queues and ports (`--mode`, `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// One UDP port per queue's flow (`port + k`), so NIC RSS spreads the flows.
    Ports,
    /// Round-robin over an explicit queue list (`--queues`).
    Queues,
    /// One session round-robin over every queue of the interface.
    Scatter,
}

/// Who drives the AF_XDP sockets of a session (`--xdp-threads`, `xdp-threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Threads {
    /// Workers when every queue's worker gets a core of its own besides the session thread's
    /// (or `cpus` names the workers' cores), else the session thread alone. Measured on the
    /// 2-core machine of this project with 2 queues: the session thread alone moved 2.46-2.92
    /// Gbit/s of raw data, the workers 1.80-2.57 (three busy threads on two cores).
    Auto,
    /// One pinned worker thread per queue owns its socket; the session thread runs the
    /// state machine and exchanges UMEM frames with the workers through lock-free queues.
    Workers,
    /// The session thread owns every socket and does everything (no other thread).
    Session,
}

impl Threads {
    /// Resolve `Auto` for `queues` sockets with `cores` usable cores (`explicit_cpus`: the
    /// caller named the workers' cores). Returns the choice and, for `Auto`, why.
    pub fn resolve(
        self,
        queues: usize,
        cores: usize,
        explicit_cpus: bool,
    ) -> (Threads, Option<String>) {
        match self {
            Threads::Auto if explicit_cpus => (
                Threads::Workers,
                Some("auto: workers on the cores --cpus names".into()),
            ),
            Threads::Auto if queues >= 2 && cores > queues => (
                Threads::Workers,
                Some(format!("auto: {queues} queues, {cores} cores: a core per worker and one for the session")),
            ),
            Threads::Auto => (
                Threads::Session,
                Some(format!(
                    "auto: {queues} queue(s) on {cores} core(s): workers would share cores with the session thread (--xdp-threads workers forces them)"
                )),
            ),
            t => (t, None),
        }
    }
}

/// How an AF_XDP sender takes the receiver's answers: Accept, Acks, Nacks, Close
/// (`--xdp-answers`, `xdp-answers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Answers {
    /// Kernel UDP, or the steering program where no UDP socket can be bound on this host
    /// (said in the log) or a test impairment needs the program.
    #[default]
    Auto,
    /// Kernel UDP sockets on ports the kernel picks, which the sender's frames then leave
    /// from (senders on one host never share one): the sending interface gets no XDP
    /// program, so the send starts without the program's attach and ends without its
    /// detach (each waits out an RCU grace period in the kernel: 8-15 ms here). With
    /// workers, a thread of its own reads the answers. Needs a host whose firewall lets the
    /// receiver's UDP in.
    Kernel,
    /// The steering program on the sending interface, the answers on the AF_XDP sockets'
    /// rx rings (past a host firewall that would drop the answers).
    Xdp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn auto_threads_give_each_worker_a_core_besides_the_session_thread() {
        let r = |q, c, e| Threads::Auto.resolve(q, c, e).0;
        assert_eq!(r(2, 2, false), Threads::Session);
        assert_eq!(r(2, 3, false), Threads::Workers);
        assert_eq!(r(4, 8, false), Threads::Workers);
        assert_eq!(r(1, 8, false), Threads::Session);
        assert_eq!(r(2, 2, true), Threads::Workers);
        assert_eq!(
            Threads::Workers.resolve(2, 2, false),
            (Threads::Workers, None)
        );
        assert_eq!(
            Threads::Session.resolve(4, 8, true),
            (Threads::Session, None)
        );
        assert!(Threads::Auto
            .resolve(2, 2, false)
            .1
            .unwrap()
            .contains("2 core"));
    }

    /// The flag spelling and the config spelling are the same words.
    #[test]
    fn flag_and_key_spellings_agree() {
        fn check<T: ValueEnum + Serialize>() {
            for v in T::value_variants() {
                let flag = v.to_possible_value().unwrap().get_name().to_string();
                let key = serde_json::to_value(v).unwrap();
                assert_eq!(key.as_str(), Some(flag.as_str()));
            }
        }
        check::<Transport>();
        check::<Spread>();
        check::<Threads>();
        check::<crate::proto::PackPolicy>();
        check::<crate::pob::HugePolicy>();
        check::<crate::steer::XdpMode>();
        assert_eq!(Transport::Xdp.name(), "xdp");
    }
}
