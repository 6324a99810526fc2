//! systemd's notification protocol (`Type=notify`): datagrams of `KEY=VALUE` lines to the
//! unix socket named by `NOTIFY_SOCKET` (a path, or an abstract address written `@name`).
//! No dependency: a few lines over [`std::os::unix::net::UnixDatagram`].

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager; every method is a no-op without `NOTIFY_SOCKET`.
pub struct Notifier {
    sock: Option<(UnixDatagram, String)>,
    /// Half of `WATCHDOG_USEC`, when the manager asked for keep-alives.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` when set).
    pub fn from_env() -> io::Result<Self> {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p == std::process::id())
            })
            .map(|us| Duration::from_micros(us / 2));
        let sock = match path {
            Some(p) => {
                // Never block the service on a manager that reads slowly (a unix datagram
                // queue holds few messages): a status line that does not fit is dropped.
                let s = UnixDatagram::unbound()?;
                s.set_nonblocking(true)?;
                Some((s, p))
            }
            None => None,
        };
        Ok(Notifier { sock, watchdog })
    }

    pub fn is_active(&self) -> bool {
        self.sock.is_some()
    }

    /// Send `state` (newline-separated `KEY=VALUE` lines). A full queue at the manager's
    /// end is an error (`WouldBlock`), never a wait.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some((sock, path)) = &self.sock else {
            return Ok(());
        };
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_address() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier {
            sock: Some((UnixDatagram::unbound().unwrap(), p.display().to_string())),
            watchdog: None,
        };
        n.notify("READY=1\nSTATUS=x").unwrap();
        let mut b = [0u8; 64];
        let k = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..k], b"READY=1\nSTATUS=x");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("pfs-notify-test-{}", std::process::id());
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx2 = UnixDatagram::bind_addr(&a).unwrap();
        let n2 = Notifier {
            sock: Some((UnixDatagram::unbound().unwrap(), format!("@{name}"))),
            watchdog: None,
        };
        n2.notify("WATCHDOG=1").unwrap();
        let k = rx2.recv(&mut b).unwrap();
        assert_eq!(&b[..k], b"WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier {
            sock: None,
            watchdog: None,
        };
        assert!(!n.is_active());
        n.notify("READY=1").unwrap();
    }
}
