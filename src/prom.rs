//! Operator metrics in the Prometheus text format (version 0.0.4), hand-written: the
//! exposition of a receiver service's [`LiveSnapshot`], a tiny HTTP/1.1 server thread
//! (`GET /metrics`; anything else 404) and a parser of the format (tests and scripts read
//! the endpoint back with it).

use crate::driver::service::{Live, LiveSnapshot, XdpLive, XdpQueueLive};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The exposition of `s` (HELP and TYPE lines, one sample per line).
pub fn render(s: &LiveSnapshot) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            if labels.is_empty() {
                o.push_str(&format!("{name} {v}\n"));
            } else {
                o.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    };
    metric(
        "pfs_sessions_active",
        "gauge",
        "Sessions running now.",
        &[("", s.sessions_active)],
    );
    metric(
        "pfs_sessions_total",
        "counter",
        "Sessions opened since the start.",
        &[("", s.sessions_total)],
    );
    metric(
        "pfs_sessions_ended_total",
        "counter",
        "Sessions ended, by outcome.",
        &[
            ("outcome=\"ok\"", s.sessions_ok),
            ("outcome=\"failed\"", s.sessions_failed),
        ],
    );
    metric(
        "pfs_files_received_total",
        "counter",
        "Files received and verified (BLAKE3).",
        &[("", s.files)],
    );
    metric(
        "pfs_file_bytes_received_total",
        "counter",
        "Bytes of files received and verified.",
        &[("", s.file_bytes)],
    );
    metric(
        "pfs_wire_bytes_received_total",
        "counter",
        "Bytes on the link received: datagrams plus Ethernet/IPv4/UDP headers.",
        &[("", s.wire_bytes_received)],
    );
    metric(
        "pfs_frames_received_total",
        "counter",
        "Datagrams received.",
        &[("", s.frames_received)],
    );
    metric(
        "pfs_frames_sent_total",
        "counter",
        "Datagrams sent (accepts, acknowledgements, NACKs, done, handshakes).",
        &[("", s.frames_sent)],
    );
    metric(
        "pfs_retransmissions_requested_total",
        "counter",
        "NACKs sent (retransmissions asked for), of ended sessions.",
        &[("", s.nacks)],
    );
    metric(
        "pfs_duplicate_frames_total",
        "counter",
        "Data frames that arrived twice, of ended sessions.",
        &[("", s.duplicate_frames)],
    );
    metric(
        "pfs_refused_total",
        "counter",
        "Handshakes and frames refused, by reason.",
        &[
            ("reason=\"unknown_sender\"", s.refused_unknown_sender),
            ("reason=\"mac1\"", s.refused_mac1),
            ("reason=\"rate_limited\"", s.refused_rate_limited),
            ("reason=\"bad_init\"", s.refused_bad_init),
            ("reason=\"replayed_init\"", s.refused_replayed_init),
            ("reason=\"tag_failure\"", s.tag_failures),
            ("reason=\"replay\"", s.replays),
            ("reason=\"over_max_sessions\"", s.refused_over_max_sessions),
            ("reason=\"closing\"", s.refused_closing),
        ],
    );
    metric(
        "pfs_dropped_total",
        "counter",
        "Datagrams dropped before any session, by reason.",
        &[
            ("reason=\"unknown_session\"", s.dropped_unknown_session),
            ("reason=\"malformed\"", s.dropped_malformed),
            ("reason=\"other\"", s.dropped_other),
        ],
    );
    if let Some(x) = &s.xdp {
        render_xdp(&mut o, x);
    }
    o
}

/// The AF_XDP layer: the steering program's counters by interface (it counts per CPU, not
/// per queue) and each socket's counters by interface and queue.
fn render_xdp(o: &mut String, x: &XdpLive) {
    let iface = x.iface.replace('\\', "\\\\").replace('"', "\\\"");
    let head = |o: &mut String, name: &str, help: &str| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    };
    head(
        o,
        "pfs_xdp_steer_frames_total",
        "Frames the XDP steering program saw on the interface, by what it did.",
    );
    for c in crate::steer::Counter::ALL {
        o.push_str(&format!(
            "pfs_xdp_steer_frames_total{{action=\"{}\",iface=\"{iface}\"}} {}\n",
            c.name(),
            x.steer.get(c)
        ));
    }
    head(
        o,
        "pfs_xdp_bad_frames_total",
        "Frames that reached an AF_XDP socket but were not Ethernet/IPv4/UDP with valid checksums.",
    );
    o.push_str(&format!(
        "pfs_xdp_bad_frames_total{{iface=\"{iface}\"}} {}\n",
        x.bad_frames
    ));
    type Get = fn(&XdpQueueLive) -> u64;
    let per_queue: [(&str, &str, Get); 8] = [
        (
            "rx_frames",
            "Frames the queue's AF_XDP socket received.",
            |q| q.rx_frames,
        ),
        ("tx_frames", "Frames the queue's AF_XDP socket sent.", |q| {
            q.tx_frames
        }),
        (
            "rx_dropped",
            "XDP_STATISTICS: frames dropped for reasons other than a full rx ring.",
            |q| q.rx_dropped,
        ),
        (
            "rx_ring_full",
            "XDP_STATISTICS: frames dropped because the rx ring was full.",
            |q| q.rx_ring_full,
        ),
        (
            "fill_ring_empty",
            "XDP_STATISTICS: times the kernel found the fill ring empty.",
            |q| q.fill_ring_empty,
        ),
        (
            "tx_ring_empty",
            "XDP_STATISTICS: times the kernel found the tx ring empty.",
            |q| q.tx_ring_empty,
        ),
        (
            "rx_invalid_descs",
            "XDP_STATISTICS: invalid descriptors on the fill ring.",
            |q| q.rx_invalid_descs,
        ),
        (
            "tx_invalid_descs",
            "XDP_STATISTICS: invalid descriptors on the tx ring.",
            |q| q.tx_invalid_descs,
        ),
    ];
    for (what, help, get) in per_queue {
        let name = format!("pfs_xdp_{what}_total");
        head(o, &name, help);
        for q in &x.queues {
            o.push_str(&format!(
                "{name}{{iface=\"{iface}\",queue=\"{}\"}} {}\n",
                q.queue,
                get(q)
            ));
        }
    }
}

/// Parse the text format into `name{labels}` -> value (labels as written, sorted by the
/// writer). Comments and blank lines are skipped; a malformed sample line is an error that
/// names the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = match line.find('}') {
            Some(close) if line.find('{').is_some_and(|o| o < close) => {
                (&line[..=close], line[close + 1..].trim())
            }
            _ => match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => return Err(format!("line {}: no value: {line:?}", n + 1)),
            },
        };
        let name = key.split('{').next().unwrap_or("");
        let name_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !name_ok {
            return Err(format!("line {}: bad metric name: {line:?}", n + 1));
        }
        let v = rest.split_whitespace().next().unwrap_or("");
        let v: f64 = v
            .parse()
            .map_err(|_| format!("line {}: bad value {v:?}", n + 1))?;
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

/// Serve `GET /metrics` on `addr` from a thread of its own (for the process's lifetime).
/// Returns the bound address.
pub fn serve(addr: SocketAddr, live: Arc<Live>) -> io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("pfs-metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else { continue };
                let _ = answer(c, &live);
            }
        })?;
    Ok(bound)
}

/// One request, one answer, then close (HTTP/1.1 with `Connection: close`).
fn answer(mut c: TcpStream, live: &Live) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    // Read the request head (bounded: 8 KiB).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(&live.snapshot()),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try GET /metrics\n".to_string(),
            )
        };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.flush()
}

/// A plain HTTP GET of `path` at `addr` (tests, scripts): the status code and body.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    let code = s
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = s.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn xdp_counters_render_per_queue_and_parse_back() {
        let mut s = LiveSnapshot::default();
        assert!(!render(&s).contains("pfs_xdp_"), "no AF_XDP lines over UDP");
        s.xdp = Some(XdpLive {
            iface: "veth0".into(),
            steer: crate::steer::Counters {
                steered: 40,
                passed: 3,
                ..Default::default()
            },
            queues: vec![
                XdpQueueLive {
                    queue: 0,
                    rx_frames: 10,
                    tx_frames: 2,
                    fill_ring_empty: 5,
                    ..Default::default()
                },
                XdpQueueLive {
                    queue: 1,
                    rx_frames: 30,
                    rx_ring_full: 7,
                    tx_invalid_descs: 1,
                    ..Default::default()
                },
            ],
            bad_frames: 4,
        });
        let m = parse(&render(&s)).unwrap();
        let q = |n: &str, q: u32| m[&format!("pfs_xdp_{n}_total{{iface=\"veth0\",queue=\"{q}\"}}")];
        assert_eq!(q("rx_frames", 0), 10.0);
        assert_eq!(q("rx_frames", 1), 30.0);
        assert_eq!(q("tx_frames", 0), 2.0);
        assert_eq!(q("fill_ring_empty", 0), 5.0);
        assert_eq!(q("rx_ring_full", 1), 7.0);
        assert_eq!(q("tx_invalid_descs", 1), 1.0);
        assert_eq!(q("rx_dropped", 1), 0.0);
        assert_eq!(
            m["pfs_xdp_steer_frames_total{action=\"steered\",iface=\"veth0\"}"],
            40.0
        );
        assert_eq!(
            m["pfs_xdp_steer_frames_total{action=\"passed\",iface=\"veth0\"}"],
            3.0
        );
        assert_eq!(m["pfs_xdp_bad_frames_total{iface=\"veth0\"}"], 4.0);
    }

    #[test]
    fn render_then_parse_gives_every_counter_back() {
        let s = LiveSnapshot {
            sessions_active: 2,
            sessions_total: 7,
            sessions_ok: 4,
            sessions_failed: 1,
            file_bytes: 123_456,
            refused_over_max_sessions: 3,
            refused_unknown_sender: 5,
            ..Default::default()
        };
        let m = parse(&render(&s)).unwrap();
        assert_eq!(m["pfs_sessions_active"], 2.0);
        assert_eq!(m["pfs_sessions_total"], 7.0);
        assert_eq!(m["pfs_sessions_ended_total{outcome=\"ok\"}"], 4.0);
        assert_eq!(m["pfs_sessions_ended_total{outcome=\"failed\"}"], 1.0);
        assert_eq!(m["pfs_file_bytes_received_total"], 123_456.0);
        assert_eq!(m["pfs_refused_total{reason=\"over_max_sessions\"}"], 3.0);
        assert_eq!(m["pfs_refused_total{reason=\"unknown_sender\"}"], 5.0);
        assert_eq!(m["pfs_refused_total{reason=\"mac1\"}"], 0.0);
    }

    #[test]
    fn parse_names_the_bad_line() {
        let e = parse("# HELP x y\nok 1\nbad{a=\"b\"} notanumber\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(parse("9bad 1\n").is_err());
        assert!(parse("lonely\n").is_err());
        let m = parse("a{b=\"c d\"} 2 1700000000\n").unwrap();
        assert_eq!(m["a{b=\"c d\"}"], 2.0);
    }

    #[test]
    fn the_server_answers_metrics_and_404() {
        let live = Arc::new(Live::default());
        live.sessions_total.store(9, Ordering::Relaxed);
        let a = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&live)).unwrap();
        let (code, body) = get(a, "/metrics").unwrap();
        assert_eq!(code, 200);
        assert_eq!(parse(&body).unwrap()["pfs_sessions_total"], 9.0);
        let (code, _) = get(a, "/other").unwrap();
        assert_eq!(code, 404);
    }
}
